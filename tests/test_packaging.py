"""The agent must run on a GPU node without the server's dependencies; every command has --help."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SERVER_ONLY = [
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "pydantic_settings",
    "jinja2",
    "starlette",
    "numpy",
    "matplotlib",
    "server",
    "sim",
]


def _run_without_server_deps(code: str) -> subprocess.CompletedProcess[str]:
    blocker = textwrap.dedent(f"""
        import sys
        BLOCKED = {SERVER_ONLY!r}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed on a GPU node")
                return None
        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run(
        [sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=60
    )


def test_agent_imports_without_server_dependencies() -> None:
    result = _run_without_server_deps(
        "import node_agent.agent, node_agent.gpu.nvml, agft_cli.agent_cmd\n"
        "from agft_cli.main import main\n"
        "raise SystemExit(main(['agent', '--help']))\n"
    )
    assert result.returncode == 0, result.stderr
    assert "--server" in result.stdout


def test_blocker_really_blocks() -> None:
    result = _run_without_server_deps("import server.app\n")
    assert result.returncode != 0 and "not installed on a GPU node" in result.stderr


@pytest.mark.parametrize(
    "command", [[], ["server"], ["agent"], ["demo"], ["migrate"], ["sim"], ["sim", "sweep"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agft_cli.main", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: agft" in result.stdout


def test_storage_does_not_depend_on_the_wire_contract() -> None:
    # server/store keeps typed rows (server/store/inventory.py); the protobuf contract is
    # the fleet layer's to translate (server/fleet/inventory.py).
    code = textwrap.dedent("""
        import pkgutil, importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.startswith(("agft.v1", "google.protobuf", "grpc")):
                    raise ImportError(f"{name}: storage must not need the wire contract")
                return None
        sys.meta_path.insert(0, Block())
        import server.store
        for m in pkgutil.iter_modules(server.store.__path__):
            importlib.import_module(f"server.store.{m.name}")
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
