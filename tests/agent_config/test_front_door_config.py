"""An instance's front door in the agent's TOML: what loads, and one line per mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from node_agent.config import ConfigError, load_config
from node_agent.serving.front_door import IN_FLIGHT, QUEUED, FrontDoorSpec

INSTANCE = """
[[instances]]
name = "vllm-0"
metrics_url = "http://127.0.0.1:8000/metrics"
gpu_indices = [0]
"""


def load(tmp_path: Path, front_door: str) -> FrontDoorSpec | None:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(INSTANCE) + front_door + "\n")
    return load_config(path, environ={}).instances[0].front_door


def test_no_front_door_is_none(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None


def test_get_load_counts_requests_in_flight(tmp_path: Path) -> None:
    door = load(tmp_path, 'front_door = { load_url = "http://127.0.0.1:8000/load" }')
    assert door == FrontDoorSpec(IN_FLIGHT, "http://127.0.0.1:8000/load", poll_s=0.02)


def test_a_router_gauge_with_its_count_labels_and_poll(tmp_path: Path) -> None:
    door = load(
        tmp_path,
        'front_door = { router_url = "http://router:8080/metrics", metric = '
        '"dynamo_frontend_queued_requests", counts = "queued", match_labels = '
        '{ model = "llama" }, poll_s = 0.05 }',
    )
    assert door == FrontDoorSpec(
        QUEUED,
        "http://router:8080/metrics",
        "dynamo_frontend_queued_requests",
        {"model": "llama"},
        0.05,
    )
    wire = door.to_wire()
    assert (wire.counts, wire.url, wire.poll_s) == (QUEUED, door.url, 0.05)


@pytest.mark.parametrize(
    ("front_door", "expected"),
    [
        ('front_door = "http://h/load"', "instances[0].front_door: expected a table"),
        (
            'front_door = { load = "http://h/load" }',
            "instances[0].front_door.load: unknown key (did you mean load_url?)",
        ),
        ("front_door = { poll_s = 0.02 }", "give load_url (vLLM's GET /load) or router_url"),
        (
            'front_door = { load_url = "http://h/load", router_url = "http://r/metrics" }',
            "one of them",
        ),
        (
            'front_door = { load_url = "ftp://h/load" }',
            "instances[0].front_door.load_url: expected an http:// or https:// URL with a host, "
            'got "ftp://h/load"',
        ),
        (
            'front_door = { load_url = "http://h/load", counts = "queued" }',
            "instances[0].front_door.counts: only for router_url",
        ),
        (
            'front_door = { router_url = "http://r/metrics", counts = "queued" }',
            "instances[0].front_door.metric: missing",
        ),
        (
            'front_door = { router_url = "http://r/metrics", metric = "m", counts = "waiting" }',
            "instances[0].front_door.counts: expected 'in_flight' or 'queued'",
        ),
        (
            'front_door = { load_url = "http://h/load", poll_s = 0.001 }',
            "instances[0].front_door.poll_s: must lie in [0.005, 1] s, got 0.001",
        ),
        (
            'front_door = { load_url = "http://h/load", poll_s = "fast" }',
            'instances[0].front_door.poll_s: expected a number of seconds, got "fast"',
        ),
        (
            'front_door = { router_url = "http://r/m", metric = "m", counts = "queued", '
            "match_labels = { model = 3 } }",
            "instances[0].front_door.match_labels.model: expected a string, got 3",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(
    tmp_path: Path, front_door: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, front_door)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
