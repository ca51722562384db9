"""The server runs the retention: old decisions go, their minutes stay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import ProgrammingError

from agft.v1 import agent_pb2 as pb
from server.store import partitions
from server.store.database import make_engine, make_session_factory
from server.store.migrate import upgrade_to_head
from server.store.models import Decision, DecisionMinute
from tests.helpers.databases import fresh_postgres
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


@pytest.mark.postgres
async def test_a_server_keeping_everything_still_makes_the_days_ahead_and_files_rows_by_day() -> (
    None
):
    with fresh_postgres() as url:
        upgrade_to_head(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        today = datetime.now(UTC).date()
        try:
            # As if the server had been down since the migration: today and after missing.
            for d in range(partitions.DAYS_AHEAD + 1):
                partitions.drop_day(factory, today + timedelta(days=d))
            async with running_server(url, retention_interval_s=0.2) as srv:
                stream = RawStream(srv.grpc_address, srv.node_token("n"))
                try:
                    stream.send(hello=hello("n"))
                    await stream.read_kind("welcome")
                    # A window of 1970: no day partition, so the default one, then its own.
                    stream.send(telemetry=pb.Telemetry(windows=[window(start=1000.0)]))

                    def filed() -> bool:
                        with factory() as db:
                            made = set(partitions.days(db))
                            n = db.scalar(text("SELECT count(*) FROM decisions_p19700101"))
                        return set(partitions.around(datetime.now(UTC))) <= made and n == 1

                    await eventually(filed_safely(filed), timeout_s=10)
                finally:
                    await stream.close()
            with factory() as db:
                assert db.scalar(text("SELECT count(*) FROM decisions_default")) == 0
        finally:
            engine.dispose()


def filed_safely(check: Callable[[], bool]) -> Callable[[], bool]:
    """The day's table may not exist yet: that is 'not yet', not a failure."""

    def safe() -> bool:
        try:
            return check()
        except ProgrammingError:
            return False

    return safe
