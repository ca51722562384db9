"""`agft loadtest` end to end on a small fleet: a real server process, agents in other
processes over loopback gRPC, and a count that finds nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadtest.run import _histogram_quantile
from tests.helpers.databases import postgres_admin_url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_small_fleet_loses_nothing(tmp_path: Path, backend: str) -> None:
    url = postgres_admin_url() if backend == "postgresql" else ""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "agft_cli.main", "loadtest", "--nodes", "3",
         "--gpus-per-node", "2", "--duration", "6", "--database-url", url,
         "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["instances"] == 6 and result["connected_nodes"] == 3
    assert result["windows_sent"] >= 6 * 4
    assert result["lost_windows"] == result["lost_decisions"] == result["lost_acks"] == 0
    assert result["duplicate_windows"] == 0 and result["agent_unstored_windows"] == 0
    # An admin's reads were timed meanwhile, and answered.
    assert result["api_instances_p99_ms"] is not None and result["api_failures"] == 0
    assert result["api_decisions_p99_ms"] is not None
    assert result["agent_errors"] == 0 and result["agent_failures"] == []
    assert result["decision_p99_ms"] is not None
    assert result["decision_p99_ms"] <= result["decision_max_ms"]
    assert result["server_rss_mb"] > 0 and result["db_rows_per_s"] > 0
    assert (out / "curve.png").stat().st_size > 0
    assert "| 6 |" in (out / "results.md").read_text()


def test_bad_arguments_are_one_line() -> None:
    for args, expected in (
        (["--nodes", "x"], "--nodes takes counts"),
        (["--kill-after", "10"], "needs 2 or more"),
        (["--servers", "2", "--kill-after", "59", "--duration", "60"], "inside the windows"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "agft_cli.main", "loadtest", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_killed_replica_moves_its_nodes_and_loses_no_window(tmp_path: Path) -> None:
    url = postgres_admin_url()
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "agft_cli.main", "loadtest", "--nodes", "4",
         "--gpus-per-node", "2", "--duration", "16", "--servers", "2", "--kill-after", "5",
         "--database-url", url, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["servers"] == 2 and result["nodes_moved"] == 2  # half were on replica 0
    assert result["failover_s"] is not None and result["failover_s"] <= 10.0
    # Its steps come in order: welcomed by the survivor, a fresh window sent, stored.
    assert 0 < result["failover_welcomed_s"] <= result["failover_fresh_sent_s"]
    assert result["failover_fresh_sent_s"] <= result["failover_s"]
    assert result["lost_windows"] == result["duplicate_windows"] == 0
    assert result["agent_unstored_windows"] == 0 and result["agent_failures"] == []
    assert result["windows_resent"] > 0  # what the killed replica held came back
    assert "failover: replica 0 killed" in (out / "results.md").read_text()


def test_the_histogram_quantile_interpolates_inside_its_bucket() -> None:
    buckets = [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert _histogram_quantile(buckets, 0.5) == pytest.approx(0.01)
    assert _histogram_quantile(buckets, 0.75) == pytest.approx(0.055)
    assert _histogram_quantile([], 0.5) is None
