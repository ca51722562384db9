"""The admin dashboard in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from agft.v1 import agent_pb2 as pb
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
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


async def test_fleet_page_lists_nodes_and_links_to_decisions(
    sqlite_url: str, browser: Browser
) -> None:
    async with running_server(sqlite_url, static_clock_mhz=1410) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("browser-node"))
        try:
            stream.send(hello=hello("browser-node", instances=2))
            await stream.read_kind("welcome")
            for start in (2000.0, 2001.0):
                windows = [window("vllm-0", start), window("vllm-1", start)]
                stream.send(telemetry=pb.Telemetry(windows=windows))
                await stream.read_kind("set_clocks")
            await srv.app.state.writer.flush()

            page = await browser.new_page()
            await page.goto(srv.http_url + "/")
            # Closed by default: the dashboard asks for a login first.
            await page.wait_for_url("**/login?next=*")
            await page.fill("#token", srv.api_token("viewer"))
            await page.click("button[type=submit]")
            await page.wait_for_url(srv.http_url + "/")
            assert "Fleet" in await page.title()
            assert "(viewer)" in await page.locator("header").inner_text()
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
            assert "300.0" in text  # energy of the window
            points = await page.locator("#clock-chart polyline.clock").get_attribute("points")
            assert points is not None and len(points.split()) == 2  # one point per decision

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
        await page.fill("#token", "agft_api_0123456789ab_not-the-secret-at-all-no")
        await page.click("button[type=submit]")
        alert = page.get_by_role("alert")
        assert "unknown API token" in await alert.inner_text()
        folder = os.environ.get("AGFT_SCREENSHOTS")
        if folder:
            await page.screenshot(path=os.path.join(folder, "login-refused.png"), full_page=True)
