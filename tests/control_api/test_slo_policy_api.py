"""SLO policies over REST: every field checked, one policy per scope, the most specific
scope wins, viewers read only, and a refused request changes nothing."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers.running import RunningServer, running_server
from tests.helpers.simnode import eventually, running_agent

FLEET: dict[str, Any] = {"name": "fleet default", "scope": "fleet", "ttft_s": 0.4, "tpot_s": 0.04}


async def _snapshot(client: httpx.AsyncClient) -> tuple[Any, Any]:
    policies = (await client.get("/api/v1/slo-policies")).json()
    audit = (await client.get("/api/v1/audit")).json()["items"]
    return policies, audit


async def test_create_read_update_delete_with_audit(database_url: str) -> None:
    async with running_server(database_url) as srv, srv.client("admin") as admin:
        made = await admin.post("/api/v1/slo-policies", json=FLEET)
        assert made.status_code == 201, made.text
        policy = made.json()
        assert policy["percentile"] == 90.0 and policy["max_p90_slowdown"] == 0.10
        assert policy["max_attainment_loss_points"] == 1.0 and policy["controller"] == "agft"
        got = await admin.get(f"/api/v1/slo-policies/{policy['id']}")
        assert got.json() == policy

        patched = await admin.patch(
            f"/api/v1/slo-policies/{policy['id']}", json={"ttft_s": 0.3, "max_p90_slowdown": None}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["ttft_s"] == 0.3 and patched.json()["max_p90_slowdown"] is None
        assert patched.json()["tpot_s"] == 0.04  # untouched

        replaced = await admin.put(
            f"/api/v1/slo-policies/{policy['id']}", json={**FLEET, "percentile": 99}
        )
        assert replaced.status_code == 200 and replaced.json()["percentile"] == 99
        assert replaced.json()["max_p90_slowdown"] == 0.10  # PUT replaces: defaults again

        assert (await admin.delete(f"/api/v1/slo-policies/{policy['id']}")).status_code == 204
        assert (await admin.get(f"/api/v1/slo-policies/{policy['id']}")).status_code == 404
        assert (await admin.delete(f"/api/v1/slo-policies/{policy['id']}")).status_code == 404

        audit = (await admin.get("/api/v1/audit")).json()["items"]
        actions = [e["action"] for e in reversed(audit)]
        assert actions == [
            "slo_policy.create",
            "slo_policy.update",
            "slo_policy.update",
            "slo_policy.delete",
        ]
        first_update = audit[2]
        assert first_update["before"]["ttft_s"] == 0.4 and first_update["after"]["ttft_s"] == 0.3
        assert first_update["actor"].startswith("token ") and "test admin" in first_update["actor"]
        assert audit[0]["after"] is None and audit[0]["before"]["name"] == "fleet default"
        one = await admin.get("/api/v1/audit", params={"limit": 1})
        assert len(one.json()["items"]) == 1 and one.json()["next_before_id"] == audit[0]["id"]


async def test_refused_requests_change_nothing(database_url: str) -> None:
    async with running_server(database_url) as srv, srv.client("admin") as admin:
        made = (await admin.post("/api/v1/slo-policies", json=FLEET)).json()
        before = await _snapshot(admin)
        bad: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("post", "/api/v1/slo-policies", {**FLEET, "name": "x", "ttft_s": -1}, 422, "ttft_s"),
            ("post", "/api/v1/slo-policies", {**FLEET, "name": "x", "percentile": 100}, 422, ""),
            ("post", "/api/v1/slo-policies", {**FLEET, "name": "x", "extra": 1}, 422, "extra"),
            (
                "post",
                "/api/v1/slo-policies",
                {**FLEET, "scope": "pool", "name": "p"},
                422,
                "selector",
            ),
            (
                "post",
                "/api/v1/slo-policies",
                {**FLEET, "name": "p", "scope": "pool", "selector": {"bad-label": "x"}},
                422,
                "bad-label",
            ),
            (
                "post",
                "/api/v1/slo-policies",
                {**FLEET, "name": "i", "scope": "instance", "instance_id": 999},
                422,
                "no instance 999",
            ),
            (
                "post",
                "/api/v1/slo-policies",
                {**FLEET, "name": "t", "controller_tunables": {"no_such_knob": 1}},
                422,
                "no_such_knob",
            ),
            (
                "post",
                "/api/v1/slo-policies",
                {**FLEET, "name": "t", "controller": "default", "controller_tunables": {"a": 1}},
                422,
                "default takes no tunables",
            ),
            (
                "post",
                "/api/v1/slo-policies",
                {
                    **FLEET,
                    "name": "t",
                    "controller": "agft-paper",
                    "controller_tunables": {"alpha_min": -1},
                },
                422,
                "must be finite and not negative",
            ),
            (
                "post",
                "/api/v1/slo-policies",
                {**FLEET, "name": "t", "controller": "rule", "controller_tunables": {"a": 1}},
                422,
                "unexpected keyword argument 'a'",
            ),
            ("post", "/api/v1/slo-policies", {**FLEET, "name": "again"}, 409, "already governs"),
            ("post", "/api/v1/slo-policies", {**FLEET}, 409, "already named"),
            ("patch", f"/api/v1/slo-policies/{made['id']}", {"tpot_s": "fast"}, 422, "tpot_s"),
            ("patch", f"/api/v1/slo-policies/{made['id']}", {"scope": "pool"}, 422, "selector"),
            ("patch", "/api/v1/slo-policies/4242", {"tpot_s": 0.1}, 404, "not found"),
            ("put", "/api/v1/slo-policies/4242", FLEET, 404, "not found"),
            ("patch", "/api/v1/slo-policies/99999999999", {"tpot_s": 0.1}, 422, ""),
            ("put", "/api/v1/instances/1/mode", {"mode": "pinned"}, 422, "pinned_sm_clock_mhz"),
            ("put", "/api/v1/instances/1/mode", {"mode": "fast"}, 422, "mode"),
            ("put", "/api/v1/instances/77/mode", {"mode": "off"}, 404, "not found"),
        ]
        for method, url, body, code, text in bad:
            answer = await admin.request(method, url, json=body)
            assert answer.status_code == code, (method, url, body, answer.text)
            assert text in answer.text, (url, body, answer.text)
        not_json = await admin.post(
            "/api/v1/slo-policies", content=b"{", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422
        async with srv.client("viewer") as viewer:
            assert (await viewer.get("/api/v1/slo-policies")).status_code == 200
            refused = await viewer.post("/api/v1/slo-policies", json={**FLEET, "name": "v"})
            assert refused.status_code == 403 and "admin" in refused.text
            assert (await viewer.delete(f"/api/v1/slo-policies/{made['id']}")).status_code == 403
            assert (
                await viewer.put("/api/v1/instances/1/mode", json={"mode": "off"})
            ).status_code == 403
        async with httpx.AsyncClient(base_url=srv.http_url) as anon:
            assert (await anon.post("/api/v1/slo-policies", json=FLEET)).status_code == 401
            assert (await anon.get("/api/v1/audit")).status_code == 401
        assert await _snapshot(admin) == before


async def _instances(srv: RunningServer) -> dict[str, dict[str, Any]]:
    async with srv.client("viewer") as client:
        return {i["name"]: i for i in (await client.get("/api/v1/instances")).json()}


async def test_most_specific_scope_wins(database_url: str) -> None:
    async with running_server(database_url, window_s=0.2) as srv, running_agent(srv) as _ra:
        await eventually(lambda: len(srv.app.state.fleet.live) == 2, 20, "two live instances")
        instances = await _instances(srv)
        chat, batch = instances["vllm-0"], instances["vllm-1"]
        assert chat["labels"]["pool"] == "chat" and batch["labels"]["pool"] == "batch"
        assert chat["labels"]["node"] == "test-node" and chat["labels"]["engine"] == "vllm"
        async with srv.client("admin") as admin:
            default = (await admin.get(f"/api/v1/instances/{chat['id']}/slo")).json()
            assert default["matched_scope"] == "server-default" and default["policy"] is None
            assert default["ttft_s"] == srv.settings.slo_ttft_s

            fleet = (await admin.post("/api/v1/slo-policies", json=FLEET)).json()
            pool = {**FLEET, "name": "chat", "scope": "pool", "selector": {"pool": "chat"}}
            chat_pool = (
                await admin.post("/api/v1/slo-policies", json={**pool, "ttft_s": 0.2})
            ).json()
            narrow = {
                **pool,
                "name": "chat here",
                "selector": {"pool": "chat", "node": "test-node"},
            }
            narrow_pool = (
                await admin.post("/api/v1/slo-policies", json={**narrow, "ttft_s": 0.25})
            ).json()
            mine = {**FLEET, "name": "batch own", "scope": "instance", "instance_id": batch["id"]}
            own = (await admin.post("/api/v1/slo-policies", json={**mine, "ttft_s": 1.5})).json()

            for inst, expected, scope, shadowed in (
                (
                    chat,
                    narrow_pool,
                    "pool node=test-node, pool=chat",
                    [chat_pool["id"], fleet["id"]],
                ),
                (batch, own, f"instance {batch['id']}", [fleet["id"]]),
            ):
                slo = (await admin.get(f"/api/v1/instances/{inst['id']}/slo")).json()
                assert slo["policy"]["id"] == expected["id"], slo
                assert slo["matched_scope"] == scope and slo["shadowed_policy_ids"] == shadowed
                assert slo["ttft_s"] == expected["ttft_s"]
            # The live controllers took the policy at once.
            live = {r.name: r for _s, r in srv.app.state.fleet.live.values()}
            assert live["vllm-0"].spec.id == narrow_pool["id"]
            assert live["vllm-1"].spec.id == own["id"]
            assert live["vllm-1"].policy.slo.ttft_s == 1.5

            await admin.delete(f"/api/v1/slo-policies/{narrow_pool['id']}")
            slo = (await admin.get(f"/api/v1/instances/{chat['id']}/slo")).json()
            assert slo["policy"]["id"] == chat_pool["id"]
            assert live["vllm-0"].spec.id == chat_pool["id"]


async def test_each_controller_takes_its_own_tunables(database_url: str) -> None:
    async with running_server(database_url) as srv, srv.client("admin") as admin:
        for k, (controller, tunables) in enumerate(
            (
                ("agft", {"miss_share_factor": 0.5, "max_slowdown": None}),
                ("agft-paper", {"alpha_min": 0.2}),
                ("rule", {"busy_fraction": 0.7}),
                ("static", {"clock_mhz": 1200}),
                ("default", {}),
            )
        ):
            body = {
                **FLEET,
                "name": f"p{k}",
                "scope": "pool",
                "selector": {"pool": f"p{k}"},
                "controller": controller,
                "controller_tunables": tunables,
            }
            made = await admin.post("/api/v1/slo-policies", json=body)
            assert made.status_code == 201, made.text
            assert made.json()["controller_tunables"] == tunables
        steering = srv.app.state.fleet.steering
        rule = next(s for s in steering.specs if s.controller == "rule")
        assert steering.controller(rule)().busy_fraction == 0.7
        paper = next(s for s in steering.specs if s.controller == "agft-paper")
        assert steering.controller(paper)().tunables.alpha_min == 0.2
