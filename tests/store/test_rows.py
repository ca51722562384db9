"""The typed rows the fleet hands the writer name real columns, and cover the ones the
database cannot fill itself."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table

from server.store.models import ClockCommand, Decision, Node, PolicyState
from server.store.rows import (
    AckRow,
    AppliedClock,
    CommandRow,
    DecisionRow,
    PolicyStateRow,
    RecoveredAck,
    StoredMark,
)

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _columns(model: type[Any]) -> set[str]:
    return {c.name for c in cast(Table, model.__table__).columns}


def _required(model: type[Any]) -> set[str]:
    """Columns with no default that may not be NULL: a row must set them."""
    table = cast(Table, model.__table__)
    return {
        c.name
        for c in table.columns
        if not c.nullable
        and c.default is None
        and c.server_default is None
        and c.autoincrement is not True
    }


def _decision() -> DecisionRow:
    fields: dict[str, Any] = {f.name: None for f in dataclasses.fields(DecisionRow)}
    fields.update(
        instance_id=1,
        decided_at=NOW,
        window_start=NOW,
        window_end=NOW,
        policy="agft",
        mode="auto",
        features={"x": 1.0},
        reason="r",
    )
    return DecisionRow(**fields)


def test_every_row_names_only_columns_of_its_table_and_all_it_must() -> None:
    command = CommandRow("c1", 1, "set", "r", NOW, 345, 1500, None, 5.0, NOW)
    ack = AckRow("c1", True, None, (AppliedClock(0, 1500, 345, 1500),), NOW)
    cases: list[tuple[dict[str, Any], type[Any]]] = [
        (command.values(), ClockCommand),
        (ack.values(), ClockCommand),
        (RecoveredAck(command, ack).values(), ClockCommand),
        (_decision().values(), Decision),
        (PolicyStateRow(1, "agft", {"version": 5}, 10, NOW).values(), PolicyState),
        (StoredMark(7, 3, 99).values(), Node),
    ]
    for values, model in cases:
        assert set(values) <= _columns(model), (model, set(values) - _columns(model))
    # Rows that insert must set every column the database cannot fill.
    for values, model in cases[:1] + cases[2:5]:
        missing = _required(model) - set(values)
        assert not missing, (model, missing)
    # A decision row sets every column but its generated id: nothing left to a default
    # the fleet did not choose.
    assert set(_decision().values()) == _columns(Decision) - {"id"}


def test_an_ack_is_stamped_with_the_servers_time_and_its_gpus_as_json() -> None:
    ack = AckRow("c1", False, "refused", (AppliedClock(0, None, None, None),))
    assert ack.acked_at is None
    stamped = ack.at(NOW)
    assert stamped.acked_at == NOW and ack.acked_at is None  # rows are immutable
    assert stamped.values()["applied"] == [
        {
            "gpu_index": 0,
            "sm_clock_mhz": None,
            "locked_min_sm_clock_mhz": None,
            "locked_max_sm_clock_mhz": None,
        }
    ]


def test_a_recovered_ack_is_its_command_with_the_ack_on_it() -> None:
    command = CommandRow("c9", 4, "reset", "stored from the agent's ack", NOW)
    ack = AckRow("c9", True, None, (), NOW)
    values = RecoveredAck(command, ack).values()
    assert values["kind"] == "reset" and values["ack_ok"] is True and values["acked_at"] == NOW
    assert values["id"] == "c9" and values["instance_id"] == 4
