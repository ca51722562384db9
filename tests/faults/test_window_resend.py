"""Numbered windows: the server says which are stored, and one sent again is taken once.

The protocol half of crash safety, over a real stream: `Stored` follows the commit of a
window's rows, a reconnect's `Welcome` says how far the database holds this boot's
windows, a window sent again is neither stored nor decided twice, and one marked
replayed is stored as measured without a decision or a command.
"""

from __future__ import annotations

from sqlalchemy import select

from agft.v1 import agent_pb2 as pb
from server.fleet.decider import RECOVERED_REASON, REPLAYED_REASON
from server.store.models import ClockCommand
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import RunningServer, running_server
from tests.helpers.simnode import eventually

BOOT = 7_000_001


def _hello(boot: int = BOOT) -> pb.Hello:
    h = hello("resend-node")
    h.boot_id = boot
    return h


def _numbered(seq: int, *, replayed: bool = False) -> pb.Telemetry:
    return pb.Telemetry(windows=[window(start=1000.0 + seq)], window_seq=seq, replayed=replayed)


async def _connect(srv: RunningServer, token: str, boot: int = BOOT) -> tuple[RawStream, int]:
    stream = RawStream(srv.grpc_address, token)
    stream.send(hello=_hello(boot))
    welcome = (await stream.read_kind("welcome")).welcome
    return stream, welcome.stored_through_seq


async def _stored_through(stream: RawStream, seq: int) -> None:
    while True:
        stored = (await stream.read_kind("stored")).stored
        assert stored.boot_id == BOOT
        if stored.through_seq >= seq:
            return


async def test_stored_follows_the_commit_and_a_window_sent_again_is_taken_once(
    database_url: str,
) -> None:
    async with running_server(database_url, policy="agft") as srv:
        token = srv.node_token("resend-node")
        stream, through = await _connect(srv, token)
        try:
            assert through == 0  # a new boot: nothing of it is stored
            for seq in (1, 2, 3):
                stream.send(telemetry=_numbered(seq))
            await _stored_through(stream, 3)
            # Stored comes after the commit: the rows are there when it arrives.
            assert len(await srv.decisions()) == 3
        finally:
            await stream.close()

        # The stream dropped; the agent reconnects and sends 3 again (it had not heard
        # Stored for it, say) and then 4, which this server has not seen.
        stream, through = await _connect(srv, token)
        try:
            assert through == 3
            stream.send(telemetry=_numbered(3, replayed=True))
            stream.send(telemetry=_numbered(4, replayed=True))
            await _stored_through(stream, 4)
            commands = [m for m in await stream.drain() if m.WhichOneof("body") != "stored"]
        finally:
            await stream.close()
        items = await srv.wait_for_decisions(4)
        assert len(items) == 4, "window 3 was stored twice"
        starts = sorted(i["window_start"] for i in items)
        assert len(set(starts)) == 4
        replayed = next(i for i in items if i["window_start"].startswith("1970-01-01T00:16:44"))
        assert replayed["reason"] == REPLAYED_REASON
        assert replayed["clock_chosen_mhz"] is None and replayed["command_id"] is None
        assert replayed["energy_j"] == 300.0  # recorded as measured
        assert commands == [], "a replayed window caused a command"
        fleet = srv.app.state.fleet
        assert fleet.windows_skipped == 1


async def test_a_disconnected_node_leaves_nothing_behind_for_stored(database_url: str) -> None:
    async with running_server(database_url) as srv:
        fleet = srv.app.state.fleet
        stream, _ = await _connect(srv, srv.node_token("resend-node"))
        try:
            stream.send(telemetry=_numbered(1))
            await _stored_through(stream, 1)
            assert list(fleet._node_ids.values()) == ["resend-node"]
        finally:
            await stream.close()
        await eventually(lambda: not fleet.sessions, 10, "the stream to end")
        assert fleet._node_ids == {}


async def test_a_new_boot_starts_its_numbering_afresh(database_url: str) -> None:
    async with running_server(database_url) as srv:
        token = srv.node_token("resend-node")
        stream, _ = await _connect(srv, token)
        try:
            stream.send(telemetry=_numbered(1))
            stream.send(telemetry=_numbered(2))
            await _stored_through(stream, 2)
        finally:
            await stream.close()
        # The agent restarted: its windows are numbered from 1 again, under a new boot id,
        # and none of them is mistaken for one already stored.
        stream, through = await _connect(srv, token, boot=BOOT + 1)
        try:
            assert through == 0
            stream.send(telemetry=pb.Telemetry(windows=[window(start=2000.0)], window_seq=1))
            stored = (await stream.read_kind("stored")).stored
            assert (stored.boot_id, stored.through_seq) == (BOOT + 1, 1)
        finally:
            await stream.close()
        assert len(await srv.wait_for_decisions(3)) == 3


async def test_a_restarted_server_reads_what_is_stored_from_the_database(
    database_url: str,
) -> None:
    async with running_server(database_url) as srv:
        token = srv.node_token("resend-node")
        stream, _ = await _connect(srv, token)
        try:
            for seq in (1, 2):
                stream.send(telemetry=_numbered(seq))
            await _stored_through(stream, 2)
        finally:
            await stream.close()
    # A new server process knows nothing in memory: the database says how far it holds.
    async with running_server(database_url) as srv:
        stream, through = await _connect(srv, token)
        try:
            assert through == 2
            stream.send(telemetry=_numbered(2, replayed=True))  # not heard Stored, say
            stream.send(telemetry=_numbered(3, replayed=True))
            await _stored_through(stream, 3)
        finally:
            await stream.close()
        assert len(await srv.wait_for_decisions(3)) == 3


async def test_a_replayed_window_brings_back_the_acks_a_dead_replica_never_wrote(
    database_url: str,
) -> None:
    async with running_server(database_url, policy="static", static_clock_mhz=1200) as srv:
        token = srv.node_token("resend-node")
        stream, _ = await _connect(srv, token)
        try:
            stream.send(telemetry=_numbered(1))
            command = (await stream.read_kind("set_clocks")).set_clocks
            applied = pb.AppliedClocks(
                gpu_index=0,
                sm_clock_mhz=1200,
                locked_min_sm_clock_mhz=command.min_sm_clock_mhz,
                locked_max_sm_clock_mhz=command.max_sm_clock_mhz,
            )
            kept = pb.CommandAck(
                command_id=command.command_id, instance="vllm-0", ok=True, applied=[applied]
            )
            stream.send(ack=kept)
            await _stored_through(stream, 1)
        finally:
            await stream.close()
        # Reconnected after "a crash": window 2 comes replayed, carrying the ack of a
        # command whose row the dead replica never wrote, and again the one it did write.
        lost = pb.CommandAck(
            command_id="c0ffee" * 4,
            instance="vllm-0",
            ok=True,
            applied=[applied],
            applied_at_s=1002.5,
        )
        stream, _ = await _connect(srv, token)
        try:
            replayed = _numbered(2, replayed=True)
            replayed.acks.extend([lost, kept])
            stream.send(telemetry=replayed)
            await _stored_through(stream, 2)
        finally:
            await stream.close()
        with srv.app.state.session_factory() as db:
            rows = {c.id: c for c in db.scalars(select(ClockCommand))}
    assert len(rows) >= 2
    recovered = rows["c0ffee" * 4]
    assert recovered.reason == RECOVERED_REASON and recovered.kind == "set"
    assert recovered.max_sm_clock_mhz == command.max_sm_clock_mhz
    assert recovered.acked_at is not None and recovered.ack_ok is True
    original = rows[command.command_id]
    assert original.reason != RECOVERED_REASON  # the row it wrote stays as it was
    assert original.acked_at is not None
