"""last_seen_at follows telemetry (batched), not only the last Hello."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, running_agent


async def test_last_seen_follows_telemetry(database_url: str) -> None:
    async with (
        running_server(database_url, window_s=0.2, state_save_interval_s=0.5) as srv,
        running_agent(srv, instances=1) as _ra,
        srv.client("viewer") as client,
    ):
        await eventually(lambda: srv.app.state.fleet.live, 20, "a live instance")
        await asyncio.sleep(2.0)

        async def moved() -> bool:
            node = (await client.get("/api/v1/nodes")).json()[0]
            inst = (await client.get("/api/v1/instances")).json()[0]
            first = _time(node["first_seen_at"])
            return bool(
                _time(node["last_seen_at"]) - first > timedelta(seconds=1.5)
                and _time(inst["last_seen_at"]) - first > timedelta(seconds=1.5)
            )

        await eventually(moved, 10, "last_seen_at to follow telemetry")
        inst = (await client.get("/api/v1/instances")).json()[0]
        # The live view is fresher still: the last window, to the window.
        assert _time(inst["live"]["last_window_at"]) >= _time(inst["last_seen_at"])


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
