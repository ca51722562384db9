"""Schemathesis against the live OpenAPI spec, as an admin and as a viewer: no request it
can make, however malformed, gets a 5xx. Bounded examples and a fixed seed keep it short
and reproducible."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, running_agent

EXAMPLES = 15


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is a dev dependency (make install)")
    return found


@pytest.mark.parametrize("role", ["admin", "viewer"])
async def test_no_request_gets_a_server_error(database_url: str, role: str, tmp_path: Path) -> None:
    command = _schemathesis()
    async with (
        running_server(database_url, window_s=0.2) as srv,
        running_agent(srv, instances=2) as _ra,
    ):
        await eventually(lambda: len(srv.app.state.fleet.live) == 2, 20, "two live instances")
        token = srv.api_token(role)
        run = await asyncio.to_thread(
            subprocess.run,
            [
                command,
                "run",
                f"{srv.http_url}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                "1",
                "--workers",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert srv.app.state.writer.status().ok
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
