"""A replica that loses a node's lease stops deciding for it, and a Hello waits a lease
out rather than bouncing the agent."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import update

from agft.v1 import agent_pb2 as pb
from server.store.models import Instance, NodeLease
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import running_server


async def test_a_replica_whose_lease_was_taken_closes_the_stream(database_url: str) -> None:
    async with running_server(database_url, node_lease_s=1.0) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            assert (await stream.read_kind("welcome")).WhichOneof("body") == "welcome"
            # Another replica holds the node now (as if this one had been too slow).
            with srv.app.state.session_factory.begin() as db:
                db.execute(
                    update(NodeLease).values(
                        replica_id="replica-elsewhere",
                        expires_at=datetime.now(UTC) + timedelta(seconds=60),
                    )
                )
            ended = time.monotonic()
            with pytest.raises(AssertionError, match="server closed the stream"):
                for _ in range(50):  # read until the server ends the stream
                    stream.send(telemetry=pb.Telemetry(windows=[window()]))
                    await stream.read_kind("reset_clocks", wait_s=2.0)
                    await asyncio.sleep(0.1)
            assert time.monotonic() - ended < 3.0  # within a renewal period or two
            assert srv.app.state.fleet.sessions == {}
        finally:
            await stream.close()


async def test_a_hello_to_a_node_held_elsewhere_is_refused_once_the_lease_is_renewed(
    database_url: str,
) -> None:
    async with running_server(database_url, node_lease_s=1.0) as srv:
        token = srv.node_token("raw-node")
        with srv.app.state.session_factory.begin() as db:
            now = datetime.now(UTC)
            db.add(
                NodeLease(
                    node_id="raw-node",
                    replica_id="replica-elsewhere",
                    acquired_at=now,
                    expires_at=now + timedelta(seconds=60),
                )
            )
        stream = RawStream(srv.grpc_address, token)
        try:
            stream.send(hello=hello())
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read(wait_s=10)
            # It waited a lease (and a second) for the holder to let go, then said who has it.
            assert 1.0 <= time.monotonic() - started < 5.0
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "replica-elsewhere" in str(refused.value.details())
        finally:
            await stream.close()


async def test_a_mode_set_through_another_replica_reaches_the_controlling_one(
    database_url: str,
) -> None:
    async with running_server(database_url, policy="static", static_clock_mhz=1200) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            await stream.read_kind("welcome")
            stream.send(telemetry=pb.Telemetry(windows=[window()]))
            await stream.read_kind("set_clocks")
            # Replica B's API stored the change; this replica controls the instance.
            with srv.app.state.session_factory.begin() as db:
                db.execute(update(Instance).values(mode="off"))
            fleet = srv.app.state.fleet
            assert await fleet.reload_modes() == 1
            (runtime,) = (r for _, r in fleet.live.values())
            assert runtime.mode == "off"
            # Released at once, as a change through this replica's own API would be.
            assert (await stream.read_kind("reset_clocks")).reset_clocks.reason.startswith(
                "mode off"
            )
            assert await fleet.reload_modes() == 0  # applied once
        finally:
            await stream.close()
