"""`agft demo` as a user runs it: one command, decisions visible over the REST API."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.helpers.simnode import free_port


def test_demo_serves_decisions(tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agft_cli.main",
            "demo",
            "--nodes",
            "1",
            "--duration",
            "30",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--database-url",
            f"sqlite:///{tmp_path / 'demo.db'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 25
        token = None
        while token is None and time.monotonic() < deadline:
            time.sleep(0.2)
            # The demo prints a working admin login: a line holding just the token.
            token = next((ln.strip() for ln in lines if ln.strip().startswith("agft_api_")), None)
        assert token is not None, f"the demo printed no login: {lines}"
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/v1/instances", timeout=2).status_code == 401
        decisions: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(decisions) < 3:
            time.sleep(0.5)
            try:
                instances = httpx.get(f"{base}/api/v1/instances", headers=auth, timeout=2).json()
                if instances:
                    url = f"{base}/api/v1/instances/{instances[0]['id']}/decisions"
                    decisions = httpx.get(url, headers=auth, timeout=2).json()["items"]
            except httpx.HTTPError:
                continue
        assert len(decisions) >= 3, "the demo made no decisions"
        assert decisions[0]["energy_j"] is not None
        # Without a login the dashboard sends the browser to the login page.
        page = httpx.get(base + "/", timeout=2)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert httpx.get(base + "/login", timeout=2).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        reader.join(timeout=5)
    out = "".join(lines)
    assert f"http://127.0.0.1:{port}/" in out
    assert f"http://127.0.0.1:{port}/login" in out
    assert proc.returncode == 0, out
