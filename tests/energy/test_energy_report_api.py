"""GET /api/v1/energy over a live simulated fleet: used and saved energy per instance,
pool and fleet, with cost and CO2, as JSON and as CSV, and the estimate's band."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, running_agent


async def test_energy_report_per_instance_pool_and_fleet(database_url: str) -> None:
    async with (
        running_server(database_url, window_s=0.2, static_clock_mhz=1200) as srv,
        running_agent(srv) as _ra,
    ):
        fleet = srv.app.state.fleet

        def estimating() -> bool:
            runtimes = [r for _s, r in fleet.live.values()]
            return len(runtimes) == 2 and all(
                r.estimator.ready and r.estimator.errors.tests >= 3 for r in runtimes
            )

        await eventually(estimating, 60, "calibrated energy models")
        for _ in range(10):  # a few estimated windows after the last calibration
            await srv.app.state.writer.flush()
        await eventually(lambda: all(t.energy_saved_j > 0 for t in fleet.totals.values()), 10)
        await srv.app.state.writer.flush()
        async with srv.client("viewer") as client:
            report = (await client.get("/api/v1/energy")).json()
            assert report["group_by"] == "instance" and len(report["rows"]) == 2
            assert "estimated" in report["method"] and report["currency"] == "USD"
            for row in report["rows"]:
                assert row["windows_estimated"] > 0 and row["energy_j"] > 0
                assert row["default_energy_j"] > row["energy_j"]  # 1200 MHz saves
                assert 0 < row["saved_pct"] < 60
                assert row["saved_kwh"] == pytest.approx(row["saved_j"] / 3.6e6)
                price, grid = report["price_per_kwh"], report["co2_g_per_kwh"]
                assert row["cost_saved"] == pytest.approx(row["saved_kwh"] * price)
                assert row["co2_saved_kg"] == pytest.approx(row["saved_kwh"] * grid / 1000)
                assert row["saved_band_pct"] is not None and row["saved_band_pct"] >= 0
                assert 0 < row["modelled_share_pct"] <= 100
            total = report["total"]
            assert total["instances"] == 2
            assert total["saved_j"] == pytest.approx(sum(r["saved_j"] for r in report["rows"]))

            pools = (await client.get("/api/v1/energy", params={"group_by": "pool"})).json()
            assert [r["group"] for r in pools["rows"]] == ["pool=batch", "pool=chat"]
            whole = (await client.get("/api/v1/energy", params={"group_by": "fleet"})).json()
            assert len(whole["rows"]) == 1
            # Later windows may have landed between the two reports: at least as much.
            assert whole["rows"][0]["saved_j"] >= total["saved_j"] * 0.999
            pricey = (await client.get("/api/v1/energy", params={"price_per_kwh": 1.0})).json()
            assert pricey["total"]["cost"] == pytest.approx(pricey["total"]["energy_kwh"])

            csv_answer = await client.get("/api/v1/energy", params={"format": "csv"})
            assert csv_answer.headers["content-type"].startswith("text/csv")
            assert "attachment" in csv_answer.headers["content-disposition"]
            lines = [ln for ln in csv_answer.text.splitlines() if not ln.startswith("#")]
            table = list(csv.DictReader(io.StringIO("\n".join(lines))))
            assert [r["group"] for r in table][-1] == "fleet" and len(table) == 3
            assert float(table[-1]["saved_kwh"]) > 0

            future = datetime.now(UTC) + timedelta(days=1)
            empty = await client.get(
                "/api/v1/energy",
                params={"since": future.isoformat(), "until": (future + timedelta(1)).isoformat()},
            )
            assert empty.status_code == 200 and empty.json()["rows"] == []
            for bad in (
                {"since": future.isoformat(), "until": datetime.now(UTC).isoformat()},
                {"group_by": "region"},
                {"pool_label": "not a label"},
                {"price_per_kwh": -1},
                {"since": "yesterday"},
                {"format": "xml"},
            ):
                assert (await client.get("/api/v1/energy", params=bad)).status_code == 422, bad
