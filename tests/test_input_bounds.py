"""Every field an agent sends has a range: out of it, a clear error naming the field.

The other windows of the same message are still decided, nothing internal (SQL, stack
traces) reaches the agent, and no policy lowers a clock on a window whose load or
energy is unknown.
"""

from __future__ import annotations

import pickle
from typing import Any

import grpc
import pytest

from agft.v1 import agent_pb2 as pb
from server.fleet.validation import InvalidMessageError
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import running_server

NOW = 1_780_000_000.0


async def test_out_of_range_windows_are_refused_and_their_neighbours_decided(
    database_url: str,
) -> None:
    async with running_server(database_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            assert (await stream.read()).WhichOneof("body") == "welcome"

            # A start in the year 33658 once dropped the good window sent beside it.
            seq = stream.send(
                telemetry=pb.Telemetry(windows=[window(start=1e12), window(start=NOW)])
            )
            err = (await stream.read_kind("error")).error
            assert (err.seq, err.code) == (seq, "invalid_value")
            assert "window_start_s" in err.message and "2100" in err.message
            await srv.wait_for_decisions(1)

            # 1e308 tokens over 1-2 ms passed validation and became infinity in a JSON column.
            huge = window(start=NOW + 1, energy_j=0.5)
            huge.serving.generation_tokens = 1e308
            huge.window_end_s = huge.window_start_s + 0.002
            stream.send(telemetry=pb.Telemetry(windows=[huge]))
            err = (await stream.read_kind("error")).error
            assert "serving.generation_tokens" in err.message and "at most" in err.message

            over = window(start=NOW + 2, energy_j=50_000.0)  # 50 kJ in 1 s: 50 kW
            stream.send(telemetry=pb.Telemetry(windows=[over]))
            err = (await stream.read_kind("error")).error
            assert "energy_j" in err.message

            bad_clock = window(start=NOW + 3)
            bad_clock.gpus[0].sm_clock_mhz = 4_000_000_000
            stream.send(telemetry=pb.Telemetry(windows=[bad_clock]))
            err = (await stream.read_kind("error")).error
            assert "sm_clock_mhz" in err.message

            bad_id = window(start=NOW + 4)
            bad_id.command_id = "x" * 65
            stream.send(telemetry=pb.Telemetry(windows=[bad_id]))
            err = (await stream.read_kind("error")).error
            assert "command_id" in err.message and "at most 64" in err.message

            stream.send(telemetry=pb.Telemetry(windows=[window(start=NOW + 5)]))
            items = await srv.wait_for_decisions(2)
            assert len(items) == 2  # the two good windows, nothing else
        finally:
            await stream.close()


async def test_an_ack_with_a_nul_byte_is_stored_and_persistence_goes_on(
    database_url: str,
) -> None:
    async with running_server(database_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            await stream.read_kind("welcome")
            stream.send(telemetry=pb.Telemetry(windows=[window(start=NOW)]))
            command = (await stream.read_kind("reset_clocks")).reset_clocks
            stream.send(
                ack=pb.CommandAck(
                    command_id=command.command_id,
                    instance="vllm-0",
                    ok=False,
                    error="nvml said \x00 no",
                )
            )
            for n in range(1, 4):
                stream.send(telemetry=pb.Telemetry(windows=[window(start=NOW + n)]))
            await srv.wait_for_decisions(4)
            await srv.app.state.writer.flush()
            async with srv.client() as client:
                health = (await client.get("/healthz")).json()
            assert health["status"] == "ok" and health["rows_set_aside"] == 0
        finally:
            await stream.close()
        from sqlalchemy import select

        from server.store.models import ClockCommand

        with srv.app.state.session_factory() as db:
            row = db.scalar(select(ClockCommand).where(ClockCommand.id == command.command_id))
        assert row is not None and row.ack_ok is False
        assert row.ack_error == "nvml said ? no"


@pytest.mark.parametrize(
    ("field", "change", "words"),
    [
        ("node_id", lambda h: setattr(h, "node_id", "n" * 300), "at most 255"),
        ("node_id", lambda h: setattr(h, "node_id", "bad\x00id"), "control characters"),
        (
            "gpus[0].power_limit_mw",
            lambda h: setattr(h.gpus[0], "power_limit_mw", 3_000_000_000),
            "100 kW",
        ),
        (".index=4000000000", lambda h: setattr(h.gpus[0], "index", 4_000_000_000), "at most"),
        (
            "instances[vllm-0].metrics_url",
            lambda h: setattr(h.instances[0], "metrics_url", "http://x/" + "m" * 2000),
            "at most 1024",
        ),
        (
            "gpus[0].supported_sm_clocks_mhz",
            lambda h: h.gpus[0].supported_sm_clocks_mhz.append(4_000_000_000),
            "MHz",
        ),
    ],
)
async def test_a_hello_out_of_range_is_refused_naming_the_field(
    sqlite_url: str, field: str, change: object, words: str
) -> None:
    async with running_server(sqlite_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        bad = hello()
        assert callable(change)
        change(bad)
        try:
            stream.send(hello=bad)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read()
        finally:
            await stream.close()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.value.details() or ""
        assert field in details and words in details
        assert "SQL" not in details and "sqlalchemy" not in details.lower()


def _starved(start: float, case: str) -> pb.InstanceWindow:
    """A window of a loaded instance with one thing unknown."""
    w = window(start=start, num_requests_waiting=0, kv_cache_usage=0.2)
    if case == "energy unknown":
        w.gpus[0].ClearField("energy_j")
        w.gpus[0].ClearField("avg_power_w")
    elif case == "one gauge only":
        w.serving.ClearField("num_requests_waiting")
        w.serving.ClearField("kv_cache_usage")
    elif case == "metrics down":
        w.serving.CopyFrom(pb.ServingWindow(available=False, error="ConnectError"))
    return w


@pytest.mark.parametrize("case", ["energy unknown", "one gauge only", "metrics down"])
@pytest.mark.parametrize(
    ("policy", "extra"),
    [("rule", {}), ("static", {"static_clock_mhz": 1200}), ("agft", {}), ("agft-paper", {})],
)
async def test_no_policy_lowers_a_clock_on_unknown_telemetry(
    sqlite_url: str, policy: str, extra: dict[str, Any], case: str
) -> None:
    async with running_server(sqlite_url, policy=policy, **extra) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            await stream.read_kind("welcome")
            for n in range(12):
                stream.send(telemetry=pb.Telemetry(windows=[_starved(NOW + n, case)]))
            items = await srv.wait_for_decisions(12)
            seen = await stream.drain()
        finally:
            await stream.close()
    kinds = [m.WhichOneof("body") for m in seen]
    assert "set_clocks" not in kinds, kinds
    assert all(item["clock_chosen_mhz"] is None for item in items)
    if policy in ("rule", "static"):  # these would lower at once on complete telemetry
        assert all("unknown" in str(item["reason"]) for item in items)


async def test_the_guard_does_not_stop_a_policy_on_complete_telemetry(sqlite_url: str) -> None:
    """The same static policy does lower its clock once the window is complete."""
    async with running_server(sqlite_url, policy="static", static_clock_mhz=1200) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            await stream.read_kind("welcome")
            stream.send(telemetry=pb.Telemetry(windows=[_starved(NOW, "complete")]))
            command = (await stream.read_kind("set_clocks")).set_clocks
        finally:
            await stream.close()
    assert command.max_sm_clock_mhz == 1200


def test_a_refusal_survives_pickling() -> None:
    # The benchmark's worker processes hand exceptions back by pickling; one that cannot
    # be rebuilt breaks the whole pool and hides the refusal behind BrokenProcessPool.
    err = InvalidMessageError("invalid_value", "command_id: 65 characters, at most 64 allowed")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, InvalidMessageError)
    assert (back.code, back.message, str(back)) == (err.code, err.message, str(err))


def test_bucket_bounds_checked_once_are_shared_and_bad_ones_refused_every_time() -> None:
    from server.fleet import validation

    def hist(bounds: list[float]) -> pb.Histogram:
        counts = [1] * (len(bounds) + 1)
        return pb.Histogram(upper_bounds=bounds, bucket_counts=counts, sum=1.0, count=len(counts))

    first = validation.histogram(hist([0.1, 0.25, 0.5]), "ttft")
    again = validation.histogram(hist([0.1, 0.25, 0.5]), "ttft")
    assert first is not None and again is not None
    assert again.upper_bounds is first.upper_bounds  # one tuple for every window
    for _ in range(2):  # a refusal is not remembered as a success
        with pytest.raises(InvalidMessageError, match="strictly ascending"):
            validation.histogram(hist([0.25, 0.1]), "ttft")
        with pytest.raises(InvalidMessageError, match="strictly ascending"):
            validation.histogram(hist([0.1, float("nan")]), "ttft")
    # Ever-new bounds only clear the memory: it stays bounded, and checks go on.
    for k in range(validation._KNOWN_BOUNDS_MAX * 2):
        assert validation.histogram(hist([1.0 + k, 2.0 + k]), "ttft") is not None
        assert len(validation._KNOWN_BOUNDS) <= validation._KNOWN_BOUNDS_MAX
    with pytest.raises(InvalidMessageError, match="strictly ascending"):
        validation.histogram(hist([0.25, 0.1]), "ttft")
