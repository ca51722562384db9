"""The admin dashboard in a real browser (Debian's chromium driven by Playwright).

Every page is also saved as a screenshot into test-artifacts/screenshots/ (or the folder
AGFT_SCREENSHOTS names), so a person can look at what the tests saw.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from agft.v1 import agent_pb2 as pb
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import RunningServer, running_server
from tests.helpers.simnode import RunningAgent, eventually, running_agent

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
SHOTS = Path(
    os.environ.get("AGFT_SCREENSHOTS")
    or Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
)
FIXED_MHZ = 1410
LOWEST_MHZ = 345
pytestmark = pytest.mark.browser


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        if os.environ.get("AGFT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed but AGFT_REQUIRE_BROWSER=1")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield b
        finally:
            await b.close()


async def shot(page: Page, name: str) -> None:
    # Playwright makes the folder itself.
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def login(browser: Browser, srv: RunningServer, role: str, width: int = 1366) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": 900})
    await page.goto(srv.http_url + "/")
    # Closed by default: the dashboard asks for a login first.
    await page.wait_for_url("**/login?next=*")
    await page.fill("#token", srv.api_token(role))
    await page.click("button[type=submit]")
    await page.wait_for_url(srv.http_url + "/")
    assert f"({role})" in await page.locator("header").inner_text()
    return page


async def test_fleet_page_lists_nodes_and_links_to_decisions(
    sqlite_url: str, browser: Browser
) -> None:
    async with running_server(sqlite_url, static_clock_mhz=FIXED_MHZ) as srv:
        page = await login(browser, srv, "viewer")
        empty = page.locator("#empty-state")
        assert "No agent has connected yet" in await empty.inner_text()
        assert "agft node-token create" in await empty.inner_text()
        await shot(page, "fleet-empty")
        stream = RawStream(srv.grpc_address, srv.node_token("browser-node"))
        try:
            stream.send(hello=hello("browser-node", instances=2))
            await stream.read_kind("welcome")
            for start in (2000.0, 2001.0):
                windows = [window("vllm-0", start), window("vllm-1", start)]
                stream.send(telemetry=pb.Telemetry(windows=windows))
                await stream.read_kind("commands")  # both instances' locks, one message
            await srv.app.state.writer.flush()

            await page.reload()
            nodes = page.locator("#nodes tbody tr")
            assert await nodes.count() == 1
            assert "browser-node" in await nodes.first.inner_text()
            assert "connected" in await nodes.first.inner_text()
            assert await page.locator("#instances tbody tr").count() == 2

            await page.get_by_role("link", name="vllm-0").click()
            await page.wait_for_url("**/instances/*")
            row = page.locator("#decisions tbody tr").first
            text = await row.inner_text()
            assert "1410 MHz" in text  # chosen by the static policy
            assert "300 W" in text  # 300 J over the 1 s window
            charts = page.locator("[data-instance-charts]")
            await eventually(
                lambda: charts.get_attribute("data-points"), 10, "the charts' first data"
            )
            assert await charts.get_attribute("data-points") == "2"  # one point per decision
            assert await page.locator("[data-chart=clock] canvas").count() == 1
            assert "Only an admin can change the mode" in await page.inner_text("#control")

            await page.get_by_role("button", name="Log out").click()
            await page.wait_for_url("**/login")
            await page.goto(srv.http_url + "/")
            await page.wait_for_url("**/login?next=*")
        finally:
            await stream.close()


async def test_login_page_refuses_a_wrong_token_clearly(sqlite_url: str, browser: Browser) -> None:
    async with running_server(sqlite_url) as srv:
        page = await browser.new_page()
        await page.goto(srv.http_url + "/login")
        await shot(page, "login")
        await page.fill("#token", "agft_api_0123456789ab_not-the-secret-at-all-no")
        await page.click("button[type=submit]")
        alert = page.get_by_role("alert")
        assert "unknown API token" in await alert.inner_text()
        await shot(page, "login-refused")


def _lock(ra: RunningAgent, gpu: int) -> tuple[int, int] | None:
    lock: tuple[int, int] | None = ra.node.backend.locked_sm_clocks_mhz(gpu)
    return lock


async def test_admin_steers_a_live_fleet(sqlite_url: str, browser: Browser) -> None:
    async with (
        running_server(sqlite_url, window_s=0.25, static_clock_mhz=FIXED_MHZ) as srv,
        running_agent(srv) as ra,
    ):
        await eventually(lambda: _lock(ra, 0) == (LOWEST_MHZ, FIXED_MHZ), 20, "the first lock")
        page = await login(browser, srv, "admin")
        # Live: the page changes under us without reloading itself.
        await page.evaluate("window.agftLoaded = 1")
        first = await page.locator("#instances").inner_text()

        async def changed() -> bool:
            return bool(await page.locator("#instances").inner_text() != first)

        await eventually(changed, 15, "a live update of the fleet table")
        assert await page.evaluate("window.agftLoaded") == 1  # no reload happened
        await shot(page, "fleet")

        # A pool policy made in the SLO editor reaches the GPU within a window or two.
        await page.get_by_role("link", name="SLO policies").click()
        await page.wait_for_url("**/slo")
        await shot(page, "slo-empty")
        form = page.locator("form[data-method=POST]")
        await form.locator("[name=name]").fill("chat pool")
        await form.locator("[name=scope]").select_option("pool")
        await form.locator("[name=selector]").fill("pool=chat")
        await form.locator("[name=ttft_s]").fill("0.3")
        await form.locator("[name=controller]").select_option("static")
        await form.locator("[name=controller_tunables]").fill("clock_mhz=1200")
        await form.locator("[name=ttft_s]").fill("-1")
        await form.get_by_role("button", name="Create").click()
        await expect(form.locator(".errors")).to_contain_text("ttft_s")  # a clear refusal
        await form.locator("[name=ttft_s]").fill("0.3")
        await form.get_by_role("button", name="Create").click()
        await page.wait_for_selector("#policies")
        assert "chat pool" in await page.locator("#policies").inner_text()
        assert "pool pool=chat" in await page.locator("#policies").inner_text()
        await eventually(lambda: _lock(ra, 0) == (LOWEST_MHZ, 1200), 3, "the policy's clock")
        # The batch pool keeps the server default (but for its calibration windows).
        await eventually(lambda: _lock(ra, 1) == (LOWEST_MHZ, FIXED_MHZ), 2, "vllm-1's lock")
        await shot(page, "slo")

        # Observe from the instance page releases the lock.
        await page.goto(srv.http_url + "/")
        await page.locator("#instances a", has_text="vllm-0").click()
        await page.wait_for_url("**/instances/*")
        assert "chat pool" in await page.inner_text("#slo")
        await page.select_option("#control select[name=mode]", "observe")
        await page.fill("#control input[name=note]", "comparing")
        await page.get_by_role("button", name="Apply").click()
        await eventually(lambda: _lock(ra, 0) is None, 3, "observe releases the lock")
        await expect(page.locator("#control-reason")).to_contain_text("set to observe")
        await page.wait_for_selector("[data-points]")
        await shot(page, "instance")

        await page.goto(srv.http_url + "/audit")
        audit = await page.locator("#audit").inner_text()
        assert "instance.mode" in audit and "slo_policy.create" in audit
        assert "comparing" in audit
        await shot(page, "audit")
        await page.goto(srv.http_url + "/energy")
        assert "How the saving is known" in await page.inner_text("main")
        await shot(page, "energy")
        narrow = await login(browser, srv, "viewer", width=420)
        await shot(narrow, "fleet-narrow")


async def test_a_viewer_cannot_edit(sqlite_url: str, browser: Browser) -> None:
    async with running_server(sqlite_url) as srv:
        async with srv.client("admin") as admin:
            made = await admin.post(
                "/api/v1/slo-policies",
                json={"name": "fleet", "scope": "fleet", "ttft_s": 0.4, "tpot_s": 0.04},
            )
            assert made.status_code == 201
        page = await login(browser, srv, "viewer")
        await page.goto(srv.http_url + "/slo")
        assert await page.locator("form[data-api]").count() == 0
        assert await page.locator("button[data-api]").count() == 0
        assert "Only an admin can change policies" in await page.inner_text("main")
        # Even a hand-made request from the viewer's session is refused, and changes nothing.
        status = await page.evaluate(
            """async () => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const answer = await fetch('/api/v1/slo-policies/1',
                    {method: 'DELETE', headers: {'x-csrf-token': csrf}});
                return answer.status;
            }"""
        )
        assert status == 403
        await page.reload()
        assert "fleet" in await page.locator("#policies").inner_text()
        missing = await page.goto(srv.http_url + "/instances/4242")
        assert missing is not None and missing.status == 404
        assert "There is no instance 4242" in await page.inner_text("main")
        await shot(page, "instance-not-found")
