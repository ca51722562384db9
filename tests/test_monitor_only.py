"""A GPU the agent cannot lock is monitor-only: decided for and recorded, never commanded."""

from __future__ import annotations

import asyncio

from agft.v1 import agent_pb2 as pb
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import RunningServer, running_server

NOW = 1_780_000_000.0
NO_PERMISSION = "no permission to lock clocks: the agent needs CAP_SYS_ADMIN (or root)"


def _kinds(messages: list[pb.ServerMessage]) -> list[str | None]:
    return [m.WhichOneof("body") for m in messages]


async def _instance(srv: RunningServer) -> dict[str, object]:
    async with srv.client() as client:
        return (await client.get("/api/v1/instances")).json()[0]  # type: ignore[no-any-return]


async def test_monitor_only_gpus_get_no_commands_until_controllable(database_url: str) -> None:
    async with running_server(database_url, policy="static", static_clock_mhz=1200) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            blocked = hello()
            blocked.gpus[0].monitor_only_reason = NO_PERMISSION
            stream.send(hello=blocked)
            await stream.read_kind("welcome")
            assert (await _instance(srv))["monitor_only_reason"] == f"GPU 0: {NO_PERMISSION}"
            for n in range(3):
                stream.send(
                    telemetry=pb.Telemetry(
                        windows=[window(start=NOW + n, kv_cache_usage=0.1, num_requests_waiting=0)]
                    )
                )
            assert "set_clocks" not in _kinds(await stream.drain(0.4))

            # The agent regains the capability: control resumes with the next window.
            stream.send(control_status=pb.ControlStatus(gpus=[pb.GpuControl(index=0)]))
            await asyncio.sleep(0.2)
            stream.send(
                telemetry=pb.Telemetry(
                    windows=[window(start=NOW + 3, kv_cache_usage=0.1, num_requests_waiting=0)]
                )
            )
            command = (await stream.read_kind("set_clocks")).set_clocks
            assert command.max_sm_clock_mhz == 1200
            assert (await _instance(srv))["monitor_only_reason"] is None

            # A lock refused mid-run: monitor-only again, and no more commands.
            stream.send(
                control_status=pb.ControlStatus(
                    gpus=[pb.GpuControl(index=0, monitor_only_reason=NO_PERMISSION)]
                )
            )
            await asyncio.sleep(0.2)
            for n in range(4, 7):
                stream.send(
                    telemetry=pb.Telemetry(
                        windows=[window(start=NOW + n, kv_cache_usage=0.1, num_requests_waiting=0)]
                    )
                )
            assert "set_clocks" not in _kinds(await stream.drain(0.4))

            seq = stream.send(control_status=pb.ControlStatus(gpus=[pb.GpuControl(index=9)]))
            err = (await stream.read_kind("error")).error
            assert (err.seq, err.code) == (seq, "unknown_gpu")
        finally:
            await stream.close()
        await srv.app.state.writer.flush()
        async with srv.client() as client:
            inst = (await client.get("/api/v1/instances")).json()[0]
            items = (await client.get(f"/api/v1/instances/{inst['id']}/decisions")).json()["items"]
    reasons = [i["reason"] for i in sorted(items, key=lambda i: i["id"])]
    assert len(reasons) == 7
    assert all(r.startswith("monitor-only") for r in reasons[:3] + reasons[4:])
    assert "would: static" in reasons[0]
    assert not reasons[3].startswith("monitor-only")
