"""The energy estimate's error table: estimated against true saving, from `agft bench` runs.

    python -m bench.estimate_table DIR...   (each DIR an `agft bench --out` folder)

The true saving is against the default run of the same arrivals; the estimated one is
what the server would have reported (server/energy/estimator.py) from the same windows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def rows(dirs: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for folder in dirs:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        settings = data["settings"]
        for name, summary in data["policies"].items():
            if name == "default" or summary.get("estimated_saving_pct") is None:
                continue
            out.append(
                {
                    "trace": Path(settings["trace"]).name.split(".")[0],
                    "load": settings.get("peak_load"),
                    "seed": settings.get("seed"),
                    "policy": name,
                    "true": summary["energy_saving_pct"],
                    "estimated": summary["estimated_saving_pct"],
                    "error": summary["estimate_error_pts"],
                    "band": summary.get("estimate_band_pts"),
                }
            )
    return out


def table(items: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, Any, str], list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        groups[(item["trace"], item["load"], item["policy"])].append(item)
    lines = [
        "| trace | peak load | policy | seeds | true saving % | estimated % | mean error (points)"
        " | largest error | error inside the band |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (trace, load, policy), group in sorted(groups.items(), key=lambda g: str(g[0])):
        n = len(group)
        inside = sum(1 for g in group if g["band"] is not None and abs(g["error"]) <= g["band"])
        worst = max(group, key=lambda g: abs(g["error"]))["error"]
        lines.append(
            f"| {trace} | {load} | {policy} | {n} | {sum(g['true'] for g in group) / n:.2f} | "
            f"{sum(g['estimated'] for g in group) / n:.2f} | "
            f"{sum(g['error'] for g in group) / n:+.2f} | {worst:+.2f} | {inside} of {n} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimate_table", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        print(table(rows(args.dirs)))
    except (OSError, KeyError, ValueError) as err:
        print(f"estimate_table: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
