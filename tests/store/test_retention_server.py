"""The server runs the retention: old decisions go, their minutes stay."""

from __future__ import annotations

from sqlalchemy import func, select

from agft.v1 import agent_pb2 as pb
from server.store.models import Decision, DecisionMinute
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import running_server
from tests.helpers.simnode import eventually


def _counts(factory: object) -> tuple[int, int]:
    with factory() as db:  # type: ignore[operator]
        decisions = db.scalar(select(func.count()).select_from(Decision))
        minutes = db.scalar(select(func.sum(DecisionMinute.windows)))
    return int(decisions or 0), int(minutes or 0)


async def test_a_server_deletes_decisions_older_than_its_retention_and_keeps_the_minutes(
    database_url: str,
) -> None:
    async with running_server(
        database_url, decision_retention_days=30, retention_interval_s=0.2
    ) as srv:
        factory = srv.app.state.session_factory
        stream = RawStream(srv.grpc_address, srv.node_token("old-node"))
        try:
            stream.send(hello=hello("old-node"))
            await stream.read_kind("welcome")
            # Windows of 1970: older than any retention.
            stream.send(telemetry=pb.Telemetry(windows=[window(start=1000.0)]))
            stream.send(telemetry=pb.Telemetry(windows=[window(start=1001.0)]))
            await eventually(lambda: _counts(factory)[1] == 2, timeout_s=10)
            await eventually(lambda: _counts(factory)[0] == 0, timeout_s=10)
        finally:
            await stream.close()
        assert _counts(factory) == (0, 2)
