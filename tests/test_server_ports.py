"""A second server on a port already in use fails at once with one clear line, before it
binds anything: it must never share a port and split the agents with the first."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.simnode import free_port


@pytest.fixture
def held_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.mark.parametrize("command", ["server", "demo"])
@pytest.mark.parametrize("which", ["--port", "--grpc-port"])
def test_a_port_in_use_is_one_line_and_exit_2(
    tmp_path: Path, held_port: int, command: str, which: str
) -> None:
    ports = {"--port": free_port(), "--grpc-port": free_port(), which: held_port}
    args = [sys.executable, "-m", "agft_cli.main", command]
    for flag, port in ports.items():
        args += [flag, str(port)]
    args += ["--database-url", f"sqlite:///{tmp_path / 'agft.db'}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    what = "HTTP" if which == "--port" else "agents (gRPC)"
    assert lines == [
        f"agft {command}: cannot listen for {what} on 127.0.0.1:{held_port}: "
        "in use (another AGFT server?)"
    ]
    assert "Traceback" not in done.stdout + done.stderr
