"""Node leases: one replica at a time holds a node; it passes on only when it runs out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from server.store.database import make_engine, make_session_factory
from server.store.migrate import upgrade_to_head
from server.store.node_leases import give_back_nodes, renew_nodes, take_node

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def _factory(url: str) -> sessionmaker[Session]:
    upgrade_to_head(url)
    return make_session_factory(make_engine(url))


def test_a_node_is_held_by_one_replica_until_its_lease_runs_out(database_url: str) -> None:
    factory = _factory(database_url)
    assert take_node(factory, "node-1", "replica-a", 5.0, T0) is None
    assert take_node(factory, "node-1", "replica-a", 5.0, T0 + timedelta(seconds=1)) is None
    held = take_node(factory, "node-1", "replica-b", 5.0, T0 + timedelta(seconds=2))
    assert held is not None
    holder, until = held
    assert holder == "replica-a"
    assert until.replace(tzinfo=UTC) == T0 + timedelta(seconds=6)  # renewed by the retake
    # Renewed again, so still a's past the first lease's end.
    assert renew_nodes(factory, ["node-1"], "replica-a", 5.0, T0 + timedelta(seconds=4)) == {
        "node-1"
    }
    assert take_node(factory, "node-1", "replica-b", 5.0, T0 + timedelta(seconds=7)) is not None
    # a stops renewing (it died): once its lease is over, b takes the node...
    assert take_node(factory, "node-1", "replica-b", 5.0, T0 + timedelta(seconds=9.5)) is None
    # ...and a, come back, holds it no more: its renewal says so.
    assert renew_nodes(factory, ["node-1"], "replica-a", 5.0, T0 + timedelta(seconds=10)) == set()


def test_a_lease_given_back_passes_on_at_once(database_url: str) -> None:
    factory = _factory(database_url)
    assert take_node(factory, "node-1", "replica-a", 60.0, T0) is None
    assert take_node(factory, "node-2", "replica-a", 60.0, T0) is None
    give_back_nodes(factory, ["node-1"], "replica-b")  # not b's to give: nothing changes
    assert take_node(factory, "node-1", "replica-b", 60.0, T0) is not None
    give_back_nodes(factory, ["node-1"], "replica-a")
    assert take_node(factory, "node-1", "replica-b", 60.0, T0) is None
    assert renew_nodes(factory, ["node-1", "node-2"], "replica-a", 60.0, T0) == {"node-2"}
