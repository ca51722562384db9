"""Learning survives a server restart: policy state is saved as JSON and loaded at reconnect."""

from __future__ import annotations

from sqlalchemy import create_engine, select, update

from server.control.agft import STATE_VERSION
from server.store.database import normalise_url
from server.store.models import PolicyState
from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, free_port, running_agent


def _saved(database_url: str) -> list[PolicyState]:
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(PolicyState)).all())  # type: ignore[arg-type]
    finally:
        engine.dispose()


def _windows(srv_app: object) -> int:
    fleet = srv_app.state.fleet  # type: ignore[attr-defined]
    session = next(iter(fleet.sessions.values()))
    runtime = session.instances["vllm-0"]
    return int(runtime.policy.state()["windows"])


async def test_agft_state_is_restored_after_a_server_restart(database_url: str) -> None:
    port = free_port()
    settings = {"window_s": 0.1, "lease_s": 3.0, "policy": "agft"}
    async with running_server(database_url, grpc_port=port, **settings) as srv:
        ra_cm = running_agent(srv, instances=1)
        await ra_cm.__aenter__()
        await eventually(lambda: srv.app.state.fleet.sessions, 10, "agent connected")
        await eventually(lambda: _windows(srv.app) >= 15, 20, "15 windows learned")
        learned = _windows(srv.app)
    try:
        rows = _saved(database_url)
        saved = sorted((r.policy, r.decisions >= learned) for r in rows)
        # The controller's learning and the instance's energy model, side by side.
        assert saved == [("agft", True), ("energy-estimator", True)]
        assert next(r for r in rows if r.policy == "agft").state["version"] == STATE_VERSION
        async with running_server(database_url, grpc_port=port, **settings) as srv2:
            await eventually(lambda: srv2.app.state.fleet.sessions, 10, "agent reconnected")
            # The restored policy continues counting from where it stopped: no new warm-up.
            assert _windows(srv2.app) >= learned
    finally:
        await ra_cm.__aexit__(None, None, None)


async def test_corrupt_saved_state_starts_fresh_instead_of_failing(sqlite_url: str) -> None:
    port = free_port()
    settings = {"window_s": 0.1, "lease_s": 3.0, "policy": "agft"}
    async with (
        running_server(sqlite_url, grpc_port=port, **settings) as srv,
        running_agent(srv, instances=1),
    ):
        await eventually(lambda: srv.app.state.fleet.sessions, 10, "agent connected")
        await eventually(lambda: _windows(srv.app) >= 3, 20, "a few windows")
    engine = create_engine(normalise_url(sqlite_url))
    with engine.begin() as conn:
        conn.execute(update(PolicyState).values(state={"version": 1, "power": "junk"}))
    engine.dispose()
    async with (
        running_server(sqlite_url, grpc_port=port, **settings) as srv,
        running_agent(srv, instances=1) as ra,
    ):
        await eventually(lambda: ra.agent.acks_sent + ra.agent.windows_sent > 3, 20, "loop")
        assert srv.app.state.fleet.sessions
