"""GET /api/v1/instances is serialised off the event loop by hand; it must say exactly what
each instance's own route says, field for field."""

from __future__ import annotations

from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, running_agent


async def test_the_list_says_what_each_instance_says(database_url: str) -> None:
    async with running_server(database_url, window_s=0.2) as srv, srv.client("viewer") as client:
        async with running_agent(srv, instances=2):
            await eventually(lambda: len(srv.app.state.fleet.live) == 2, 20, "two live instances")

            async def live_listed() -> bool:
                listed = (await client.get("/api/v1/instances")).json()
                return len(listed) == 2 and all(i["live"] is not None for i in listed)

            await eventually(live_listed, 10, "both instances listed live")
        # Disconnected: nothing moves between the calls, so they can be compared whole.
        await eventually(lambda: not srv.app.state.fleet.live, 20, "the agent gone")
        listed = await client.get("/api/v1/instances")
        assert listed.status_code == 200
        assert listed.headers["content-type"] == "application/json"
        rows = listed.json()
        assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
        for row in rows:
            single = await client.get(f"/api/v1/instances/{row['id']}")
            assert single.status_code == 200
            assert row == single.json()
            assert row["connected"] is False and row["live"] is None
            assert row["last_seen_at"].endswith("Z")
