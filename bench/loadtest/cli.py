"""`agft loadtest`: how many serving instances one server process decides for, and at what
latency, with every decision persisted.

    agft loadtest --nodes 16,48,96 --duration 60 \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres --out docs/bench/loadtest

--nodes takes one count or several (one run each, smallest first: the curve). DIR gets
results.json (one entry per run, the last one also at the top level), results.md (a
table) and curve.png (instances against decision p99, server CPU and RSS).

Replica failover: --servers 2 --kill-after 20 runs two replicas on the one database and
SIGKILLs the first 20 s in; its nodes move to the other. failover_s is the time from the
kill to the last moved node's first window decided and stored again; every window the
agents made must still be stored exactly once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadtest.run import LoadSpec, run

COLUMNS = (
    ("instances", "instances"),
    ("policy", "policy"),
    ("commands_received", "commands"),
    ("windows_per_s", "windows/s"),
    ("decision_p50_ms", "decision p50 (ms)"),
    ("decision_p99_ms", "decision p99 (ms)"),
    ("decision_max_ms", "decision max (ms)"),
    ("ack_rtt_p99_ms", "agent round trip p99 (ms)"),
    ("lost_windows", "lost windows"),
    ("lost_decisions", "lost decisions"),
    ("lost_acks", "lost acks"),
    ("duplicate_windows", "windows stored twice"),
    ("api_instances_p99_ms", "GET instances p99 (ms)"),
    ("api_decisions_p99_ms", "GET decisions p99 (ms)"),
    ("server_cpu_pct", "server CPU (%)"),
    ("server_rss_mb", "server peak RSS (MB)"),
    ("db_rows_per_s", "DB rows/s"),
    ("drain_s", "writer drain after (s)"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agft loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", default="16", help="nodes, or a comma-separated list (a curve)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="instances per node (default 8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of windows per run")
    p.add_argument(
        "--servers", type=int, default=1, help="server replicas on the one database (default 1)"
    )
    p.add_argument(
        "--kill-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL the first replica this far into the windows (needs --servers 2 or more)",
    )
    p.add_argument("--agent-processes", type=int, default=2, help="processes running the agents")
    p.add_argument(
        "--database-url",
        default=os.environ.get("AGFT_TEST_POSTGRES_URL", ""),
        help="PostgreSQL server to make a fresh database on (default $AGFT_TEST_POSTGRES_URL; "
        "empty: a SQLite file in DIR)",
    )
    p.add_argument(
        "--policy",
        default="agft",
        help="the server's controller: agft (default; holds locks only after minutes of "
        "learning) or static (with --static-clock-mhz: a lease renewal and an ack per window)",
    )
    p.add_argument("--static-clock-mhz", type=int, default=None)
    p.add_argument(
        "--no-api-probe",
        action="store_true",
        help="do not time an admin's API reads during the run (they cost server CPU too)",
    )
    p.add_argument("--out", type=Path, default=Path("loadtest-results"), help="output DIR")
    return p


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(label for _, label in COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for r in results:
        cells = ["-" if r.get(key) is None else str(r[key]) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _failover_line(r: dict[str, Any]) -> str:
    return (
        f"failover: replica 0 killed {r['killed_after_s']:g} s in; {r['nodes_moved']} nodes "
        f"moved, every one decided again within {r['failover_s']} s; "
        f"{r['lost_windows']} windows lost, {r['duplicate_windows']} stored twice, "
        f"{r['windows_resent']} sent again (the last node welcomed by the next replica "
        f"{r.get('failover_welcomed_s')} s after the kill, its first fresh window sent "
        f"{r.get('failover_fresh_sent_s')} s after)"
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["instances"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in (
        (axes[0], "decision_p99_ms", "decision p99 (ms)"),
        (axes[1], "server_cpu_pct", "server CPU (% of a core)"),
        (axes[2], "server_rss_mb", "server peak RSS (MB)"),
    ):
        ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in results], "o-")
        ax.set_xlabel("instances (1 window/s each)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("agft loadtest: one server process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a request line per poll otherwise
    try:
        counts = sorted({int(n) for n in args.nodes.split(",") if n.strip()})
    except ValueError:
        print(
            f"agft loadtest: --nodes takes counts like 125 or 16,64,125, got {args.nodes!r}",
            file=sys.stderr,
        )
        return 2
    if not counts or counts[0] < 1 or args.gpus_per_node < 1 or args.duration < 5:
        print(
            "agft loadtest: --nodes and --gpus-per-node must be 1 or more, --duration 5 s or more",
            file=sys.stderr,
        )
        return 2
    if args.servers < 1 or (args.kill_after is not None and args.servers < 2):
        print(
            "agft loadtest: --servers must be 1 or more, and --kill-after needs 2 or more "
            "(the killed replica's nodes need somewhere to go)",
            file=sys.stderr,
        )
        return 2
    if args.kill_after is not None and not 2 <= args.kill_after <= args.duration - 2:
        print(
            "agft loadtest: --kill-after must fall inside the windows, "
            f"2 to {args.duration - 2:g} s",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for nodes in counts:
        spec = LoadSpec(
            nodes=nodes,
            gpus_per_node=args.gpus_per_node,
            duration_s=args.duration,
            agent_processes=args.agent_processes,
            database_url=args.database_url,
            policy=args.policy,
            static_clock_mhz=args.static_clock_mhz,
            servers=args.servers,
            kill_after_s=args.kill_after,
            api_probe=not args.no_api_probe,
        )
        result = run(spec, args.out)
        results.append(result)
        print(table([result]), end="", file=sys.stderr)
        if "failover_s" in result:
            print(_failover_line(result), file=sys.stderr)
        (args.out / "results.json").write_text(
            json.dumps({**result, "runs": results}, indent=2) + "\n", encoding="utf-8"
        )
    text = table(results) + "".join(
        "\n" + _failover_line(r) + "\n" for r in results if "failover_s" in r
    )
    (args.out / "results.md").write_text(text, encoding="utf-8")
    plot(results, args.out / "curve.png")
    print(table(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
