"""An admin's change reaches the agent within a window, over real gRPC on the simulator:
modes release, pin and restore the lock; a new SLO policy retargets the controller, the
decision rows name it, and what the controller learnt survives the change."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers.running import RunningServer, running_server
from tests.helpers.simnode import RunningAgent, eventually, running_agent

FIXED_MHZ = 1410
LOWEST_MHZ = 345
WINDOW_S = 0.2


async def _instance(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    found = [i for i in (await client.get("/api/v1/instances")).json() if i["name"] == name]
    assert found, name
    one: dict[str, Any] = found[0]
    return one


def _lock(ra: RunningAgent, gpu: int) -> tuple[int, int] | None:
    lock: tuple[int, int] | None = ra.node.backend.locked_sm_clocks_mhz(gpu)
    return lock


async def _newest_decision(srv: RunningServer, instance_id: int) -> dict[str, Any]:
    await srv.app.state.writer.flush()
    async with srv.client("viewer") as client:
        page = await client.get(f"/api/v1/instances/{instance_id}/decisions", params={"limit": 1})
        items: list[dict[str, Any]] = page.json()["items"]
        return items[0]


async def test_modes_and_policies_reach_the_gpu_within_a_window(database_url: str) -> None:
    async with (
        running_server(
            database_url, window_s=WINDOW_S, lease_s=3.0, static_clock_mhz=FIXED_MHZ
        ) as srv,
        running_agent(srv) as ra,
        srv.client("admin") as admin,
    ):
        await eventually(lambda: _lock(ra, 0) == (LOWEST_MHZ, FIXED_MHZ), 20, "the static lock")
        inst = await _instance(admin, "vllm-0")
        url = f"/api/v1/instances/{inst['id']}/mode"
        # Within one window (plus the command's round trip), never "eventually".
        within = 2 * WINDOW_S + 0.5

        observed = await admin.put(url, json={"mode": "observe", "note": "checking savings"})
        assert observed.status_code == 200, observed.text
        assert observed.json()["control"] == "observe"
        assert "checking savings" in observed.json()["control_reason"]
        await eventually(lambda: _lock(ra, 0) is None, within, "observe releases the lock")
        # The other instance keeps its own (but for its own calibration windows).
        await eventually(lambda: _lock(ra, 1) == (LOWEST_MHZ, FIXED_MHZ), 2, "vllm-1's lock")

        async def decided_in(mode: str) -> bool:
            return bool((await _newest_decision(srv, inst["id"]))["mode"] == mode)

        await eventually(lambda: decided_in("observe"), 5, "a decision in observe")
        row = await _newest_decision(srv, inst["id"])
        assert row["clock_chosen_mhz"] == FIXED_MHZ  # what it would do, recorded
        assert row["reason"].startswith("observe; would:")
        assert row["clock_in_force_mhz"] is None
        await eventually(lambda: _lock(ra, 0) is None, 1.0, "observe keeps clocks at default")

        gpus = (await admin.get("/api/v1/nodes")).json()[0]["gpus"]
        pinned_mhz = [c for c in gpus[0]["supported_sm_clocks_mhz"] if c < FIXED_MHZ][-5]
        refused = await admin.put(url, json={"mode": "pinned", "pinned_sm_clock_mhz": 1411})
        assert refused.status_code == 422 and "1411 MHz is not a clock" in refused.text
        pinned = await admin.put(url, json={"mode": "pinned", "pinned_sm_clock_mhz": pinned_mhz})
        assert pinned.json()["control"] == "pinned", pinned.text
        await eventually(
            lambda: _lock(ra, 0) == (LOWEST_MHZ, pinned_mhz), within, "the pinned clock"
        )
        await eventually(lambda: decided_in("pinned"), 5, "a decision in pinned")

        assert (await admin.put(url, json={"mode": "off"})).status_code == 200
        await eventually(lambda: _lock(ra, 0) is None, within, "off releases the lock")
        await eventually(lambda: decided_in("off"), 5, "a decision in off")
        assert (await _newest_decision(srv, inst["id"]))["clock_chosen_mhz"] is None

        assert (await admin.put(url, json={"mode": "auto"})).status_code == 200
        await eventually(
            lambda: _lock(ra, 0) == (LOWEST_MHZ, FIXED_MHZ), within, "auto locks again"
        )

        # An instance policy with its own controller and clock takes over within a window.
        policy = await admin.post(
            "/api/v1/slo-policies",
            json={
                "name": "vllm-0 static",
                "scope": "instance",
                "instance_id": inst["id"],
                "ttft_s": 0.3,
                "tpot_s": 0.03,
                "controller": "static",
                "controller_tunables": {"clock_mhz": pinned_mhz},
            },
        )
        assert policy.status_code == 201, policy.text
        await eventually(
            lambda: _lock(ra, 0) == (LOWEST_MHZ, pinned_mhz), within, "the policy's clock"
        )

        async def under_policy() -> bool:
            row = await _newest_decision(srv, inst["id"])
            wanted: int = policy.json()["id"]
            return bool(row["slo_policy_id"] == wanted)

        await eventually(under_policy, 5, "a decision naming the policy")
        audit = (
            await admin.get("/api/v1/audit", params={"target": f"instance {inst['id']}"})
        ).json()
        modes = [e["after"]["mode"] for e in reversed(audit["items"])]
        assert modes == ["observe", "pinned", "off", "auto"]
        listed = await _instance(admin, "vllm-0")
        assert listed["live"]["slo_policy_id"] == policy.json()["id"]
        assert listed["live"]["controller"] == "static"


async def test_learning_survives_an_slo_change(database_url: str) -> None:
    async with (
        running_server(database_url, window_s=WINDOW_S, policy="agft") as srv,
        running_agent(srv, instances=1) as _ra,
        srv.client("admin") as admin,
    ):
        fleet = srv.app.state.fleet

        def runtime() -> Any:
            return next(iter(fleet.live.values()))[1]

        await eventually(lambda: fleet.live and runtime().decisions >= 15, 30, "15 decisions")
        before = runtime().policy
        made = await admin.post(
            "/api/v1/slo-policies",
            json={"name": "tight", "scope": "fleet", "ttft_s": 0.2, "tpot_s": 0.03},
        )
        assert made.status_code == 201
        after = runtime().policy
        assert after is not before and after.slo.ttft_s == 0.2 and after.name == "agft"
        learnt, kept = before.state(), after.state()
        assert kept["windows"] >= learnt["windows"] >= 15
        assert kept["power"] == learnt["power"] or kept["windows"] > learnt["windows"]
        # A switch to another controller and back resumes agft's saved learning.
        await admin.patch(f"/api/v1/slo-policies/{made.json()['id']}", json={"controller": "rule"})
        assert runtime().policy.name == "rule"
        await srv.app.state.writer.flush()
        await admin.patch(f"/api/v1/slo-policies/{made.json()['id']}", json={"controller": "agft"})
        resumed = runtime().policy
        assert resumed.name == "agft" and resumed.state()["windows"] >= learnt["windows"]
