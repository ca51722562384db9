"""The whole loop on real parts: agent -> gRPC -> server -> database -> command -> agent."""

from __future__ import annotations

import asyncio

from sqlalchemy import create_engine, select

from server.store.database import normalise_url
from server.store.models import ClockCommand, Decision
from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, free_port, running_agent

FIXED_MHZ = 1410
LOWEST_MHZ = 345  # H100 SXM's lowest supported SM clock in the simulator profile


def _rows(database_url: str) -> tuple[list[Decision], list[ClockCommand]]:
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            decisions = list(conn.execute(select(Decision)).all())
            commands = list(conn.execute(select(ClockCommand)).all())
        return decisions, commands  # type: ignore[return-value]
    finally:
        engine.dispose()


async def test_agent_with_two_instances_runs_the_loop(database_url: str) -> None:
    async with (
        running_server(database_url, window_s=0.2, lease_s=2.0, static_clock_mhz=FIXED_MHZ) as srv,
        running_agent(srv) as ra,
    ):

        async def enough() -> bool:
            async with srv.client() as client:
                instances = (await client.get("/api/v1/instances")).json()
                if len(instances) != 2:
                    return False
                for inst in instances:
                    page = (await client.get(f"/api/v1/instances/{inst['id']}/decisions")).json()
                    if len(page["items"]) < 6:
                        return False
                return True

        await eventually(enough, 20, "6 decisions per instance")
        # A range lock: the chosen clock under load, the lowest clock allowed when idle
        # (and default clocks during the energy estimate's calibration windows).
        locked = ra.node.backend.locked_sm_clocks_mhz
        for index in range(2):
            await eventually(
                lambda i=index: locked(i) == (LOWEST_MHZ, FIXED_MHZ), 3, "the range lock"
            )
        assert ra.agent.errors_received == []
        await srv.app.state.writer.flush()

        async with srv.client() as client:
            inst = (await client.get("/api/v1/instances")).json()[0]
            page = (await client.get(f"/api/v1/instances/{inst['id']}/decisions?limit=3")).json()
            assert len(page["items"]) == 3
            ids = [d["id"] for d in page["items"]]
            assert ids == sorted(ids, reverse=True)  # newest first
            older = await client.get(
                f"/api/v1/instances/{inst['id']}/decisions",
                params={"limit": 3, "before_id": page["next_before_id"]},
            )
            assert all(d["id"] < min(ids) for d in older.json()["items"])
            # Two windows in every 60 run at default clocks to calibrate the energy
            # estimate; every other one is the static policy's clock.
            recent = (await client.get(f"/api/v1/instances/{inst['id']}/decisions")).json()
            held = [d for d in recent["items"] if d["clock_in_force_mhz"] is not None]
            assert held and all(d["clock_in_force_mhz"] == FIXED_MHZ for d in held)
            for d in recent["items"]:
                at_default = "calibrate the energy estimate" in d["reason"] or (
                    "unknown" in d["reason"]  # the first window, before a /metrics baseline
                )
                assert d["clock_chosen_mhz"] == (None if at_default else FIXED_MHZ), d
                assert d["energy_j"] is not None and d["energy_j"] > 0
            nodes = (await client.get("/api/v1/nodes")).json()
            assert nodes[0]["connected"] is True
            assert len(nodes[0]["gpus"]) == 2

    decisions, commands = _rows(database_url)
    assert len(decisions) >= 12
    assert commands, "the server sent no command"
    unacked = [c for c in commands if c.acked_at is None]
    # At most the command in flight when the agent stopped may lack its ack.
    assert len(unacked) <= 2
    acked = [c for c in commands if c.acked_at is not None]
    assert all(c.ack_ok for c in acked)
    locks = [c for c in acked if c.kind == "set"]
    assert locks
    for c in locks:
        assert c.applied and all(a["locked_max_sm_clock_mhz"] == FIXED_MHZ for a in c.applied)
    # The others release the lock for one window to calibrate the energy estimate.
    for c in acked:
        if c.kind == "reset":
            assert "calibrate the energy estimate" in c.reason
            assert c.applied and all(a["locked_max_sm_clock_mhz"] is None for a in c.applied)


async def test_agent_stop_resets_clocks(sqlite_url: str) -> None:
    async with running_server(
        sqlite_url, window_s=0.2, lease_s=5.0, static_clock_mhz=FIXED_MHZ
    ) as srv:
        async with running_agent(srv) as ra:
            await eventually(
                lambda: ra.node.backend.locked_sm_clocks_mhz(0) is not None, 10, "lock"
            )
        assert ra.node.backend.locked_sm_clocks_mhz(0) is None
        assert ra.node.backend.locked_sm_clocks_mhz(1) is None


async def test_lease_expires_when_the_server_stops_renewing(sqlite_url: str) -> None:
    lease_s = 1.0
    async with (
        running_server(
            sqlite_url, window_s=0.2, lease_s=lease_s, static_clock_mhz=FIXED_MHZ
        ) as srv,
        running_agent(srv) as ra,
    ):
        backend = ra.node.backend
        await eventually(lambda: backend.locked_sm_clocks_mhz(0) is not None, 10, "lock")
        # The controller goes quiet (stuck), while the stream itself stays up.
        srv.app.state.fleet.telemetry = lambda *args, **kwargs: None
        loop = asyncio.get_running_loop()
        silenced_at = loop.time()
        await eventually(lambda: backend.locked_sm_clocks_mhz(0) is None, 5, "lease expiry")
        elapsed = loop.time() - silenced_at
        assert elapsed <= lease_s + 0.5, f"reset took {elapsed:.2f} s for a {lease_s} s lease"
        assert ra.agent.connected.is_set()
        assert backend.sm_clock_mhz(0) == backend.default_sm_clock_mhz(0) or (
            backend.locked_sm_clocks_mhz(0) is None
        )


async def test_lease_expires_when_the_server_goes_away(sqlite_url: str) -> None:
    lease_s = 1.0
    async with running_server(
        sqlite_url, window_s=0.2, lease_s=lease_s, static_clock_mhz=FIXED_MHZ
    ) as srv:
        ra_cm = running_agent(srv)
        ra = await ra_cm.__aenter__()
        try:
            await eventually(
                lambda: ra.node.backend.locked_sm_clocks_mhz(0) is not None, 10, "lock"
            )
        except BaseException:
            await ra_cm.__aexit__(None, None, None)
            raise
    try:
        # Server gone: the lease must still run out on the agent's own clock.
        await eventually(
            lambda: ra.node.backend.locked_sm_clocks_mhz(0) is None, lease_s + 1.0, "reset"
        )
    finally:
        await ra_cm.__aexit__(None, None, None)


async def test_agent_reconnects_after_server_restart(sqlite_url: str) -> None:
    port = free_port()
    settings = {"window_s": 0.2, "lease_s": 3.0, "static_clock_mhz": FIXED_MHZ}
    async with running_server(sqlite_url, grpc_port=port, **settings) as srv:
        ra_cm = running_agent(srv)
        ra = await ra_cm.__aenter__()
        await eventually(lambda: ra.agent.windows_sent >= 4, 10, "first session windows")
    try:
        await eventually(lambda: not ra.agent.connected.is_set(), 5, "disconnect noticed")
        sent_before = ra.agent.acks_sent
        async with running_server(sqlite_url, grpc_port=port, **settings) as srv2:
            await eventually(lambda: ra.agent.sessions_started >= 2, 10, "reconnect")
            await eventually(lambda: ra.agent.acks_sent > sent_before, 10, "commands after restart")
            await eventually(
                lambda: ra.node.backend.locked_sm_clocks_mhz(0) == (LOWEST_MHZ, FIXED_MHZ),
                3,
                "the lock after restart",
            )
            await srv2.app.state.writer.flush()
    finally:
        await ra_cm.__aexit__(None, None, None)
    decisions, _ = _rows(sqlite_url)
    # Same node and instances after the restart: decisions keep landing on the same rows.
    assert len({d.instance_id for d in decisions}) == 2


async def test_the_fast_loop_boosts_inside_the_servers_leases(database_url: str) -> None:
    """Hello reports the router gauge; every lock carries a Reflex to the top clock; the
    agent lifts the ceiling while prompts wait and reports it; decisions record it."""
    async with (
        running_server(database_url, window_s=0.2, lease_s=2.0, static_clock_mhz=FIXED_MHZ) as srv,
        running_agent(srv, instances=1, front_door="router", rate_scale=8.0) as ra,
    ):
        clocks = ra.agent.clocks
        backend = ra.node.backend
        top = max(backend.supported_sm_clocks_mhz(0, backend.default_memory_clock_mhz(0)))
        seen: set[tuple[int, int] | None] = set()

        async def boosted_and_back() -> bool:
            lease = clocks.leases.get("vllm-0")
            if lease is not None:
                assert lease.boost_mhz == top and lease.hold_s > 0
                assert lease.max_mhz == FIXED_MHZ
            seen.add(ra.node.backend.locked_sm_clocks_mhz(0))
            return {(LOWEST_MHZ, top), (LOWEST_MHZ, FIXED_MHZ)} <= seen

        await eventually(boosted_and_back, 30, "a boost to the top clock and back")
        await srv.app.state.writer.flush()

        async def recorded() -> bool:
            decisions, _ = _rows(database_url)
            shares = [d.features.get("boost_share") for d in decisions]
            return any(s is not None and s > 0 for s in shares)

        await eventually(recorded, 10, "a decision recording boost time")
        decisions, _ = _rows(database_url)
        # The server records the command's clock as in force, never the boost.
        assert {d.clock_in_force_mhz for d in decisions} <= {None, FIXED_MHZ}
        assert ra.agent.errors_received == []
