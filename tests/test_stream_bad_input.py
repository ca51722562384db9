"""Bad agent input gets a clear error, the stream survives, nothing accepted is lost."""

from __future__ import annotations

import math

from sqlalchemy import select

from agft.v1 import agent_pb2 as pb
from server.store.models import ClockCommand
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import running_server


async def test_bad_messages_get_errors_and_the_stream_survives(database_url: str) -> None:
    async with running_server(database_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            assert (await stream.read()).WhichOneof("body") == "welcome"

            stream.send(telemetry=pb.Telemetry(windows=[window(start=1000.0)]))
            first = await stream.read()
            assert first.WhichOneof("body") == "reset_clocks"  # static policy: default clocks
            await srv.wait_for_decisions(1)

            seq = stream.send(telemetry=pb.Telemetry(windows=[window(instance="vllm-9")]))
            err = (await stream.read_kind("error")).error
            assert (err.seq, err.code) == (seq, "unknown_instance")
            assert "vllm-9" in err.message

            seq = stream.send(telemetry=pb.Telemetry(windows=[window(energy_j=math.nan)]))
            err = (await stream.read_kind("error")).error
            assert (err.seq, err.code) == (seq, "invalid_value")
            assert "energy_j" in err.message and "finite" in err.message

            seq = stream.send(telemetry=pb.Telemetry(windows=[window(energy_j=-5.0)]))
            err = (await stream.read_kind("error")).error
            assert err.code == "invalid_value" and "negative" in err.message

            bad_hist = pb.Histogram(
                upper_bounds=[0.1, 0.05], bucket_counts=[1, 1, 0], sum=0.1, count=2
            )
            stream.send(telemetry=pb.Telemetry(windows=[window(ttft_s=bad_hist)]))
            err = (await stream.read_kind("error")).error
            assert "ascending" in err.message

            stream.send_bytes(b"\xff\xff\xff\x07garbage")
            err = (await stream.read_kind("error")).error
            assert err.code == "malformed" and "parse" in err.message

            stream.send()  # an envelope with no body
            assert (await stream.read_kind("error")).error.code == "malformed"

            seq = stream.send(ack=pb.CommandAck(command_id="nope", ok=True))
            err = (await stream.read_kind("error")).error
            assert (err.seq, err.code) == (seq, "unknown_command")

            # One message with a good and a bad window: the good one is still decided.
            stream.send(
                telemetry=pb.Telemetry(windows=[window(start=1001.0), window(instance="ghost")])
            )
            assert (await stream.read_kind("error")).error.code == "unknown_instance"
            items = await srv.wait_for_decisions(2)
            oldest = items[-1]["window_start"]
            assert isinstance(oldest, str) and oldest.startswith("1970-01-01T00:16:40")  # 1000 s
            assert len(items) == 2  # nothing accepted was lost, nothing bad was stored
        finally:
            await stream.close()


async def test_first_message_must_be_hello(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(telemetry=pb.Telemetry(windows=[window()]))
            try:
                await stream.read()
            except Exception as err:  # grpc.aio.AioRpcError
                assert "Hello" in str(err)
            else:
                raise AssertionError("server accepted telemetry before Hello")
        finally:
            await stream.close()


async def test_invalid_hello_is_refused_clearly(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        bad = hello()
        bad.instances[0].gpu_indices[:] = [7]
        try:
            stream.send(hello=bad)
            try:
                await stream.read()
            except Exception as err:
                assert "unknown GPUs [7]" in str(err)
            else:
                raise AssertionError("server accepted an instance on a GPU it does not have")
        finally:
            await stream.close()


async def test_a_nodes_commands_come_in_one_message_and_their_acks_in_one(sqlite_url: str) -> None:
    async with running_server(sqlite_url, static_clock_mhz=1200) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello(instances=3))
            await stream.read_kind("welcome")
            windows = [window(instance=f"vllm-{i}") for i in range(3)]
            stream.send(telemetry=pb.Telemetry(windows=windows))
            batch = (await stream.read_kind("commands")).commands
            commands = [c.set_clocks for c in batch.commands]
            assert sorted(c.instance for c in commands) == ["vllm-0", "vllm-1", "vllm-2"]
            assert {c.max_sm_clock_mhz for c in commands} == {1200}
            stream.send(
                acks=pb.Acks(
                    acks=[
                        pb.CommandAck(command_id=c.command_id, instance=c.instance, ok=True)
                        for c in commands
                    ]
                )
            )
            seq = stream.send(acks=pb.Acks(acks=[pb.CommandAck(command_id="nope", ok=True)]))
            err = (await stream.read_kind("error")).error
            assert (err.seq, err.code) == (seq, "unknown_command")
            # Read in order: the three acks were taken before that error; each landed on
            # its own command, as if sent alone.
            await srv.app.state.writer.flush()
            with srv.app.state.session_factory() as db:
                acked = db.scalars(
                    select(ClockCommand.id).where(ClockCommand.acked_at.is_not(None))
                ).all()
            assert sorted(acked) == sorted(c.command_id for c in commands)
        finally:
            await stream.close()
