"""The deployment files say what docs/DEPLOY.md says they do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "agft-agent.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_runs_unprivileged_with_one_capability() -> None:
    s = unit_settings()
    assert s["User"] == ["agft"]
    assert s["AmbientCapabilities"] == ["CAP_SYS_ADMIN"]
    assert s["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "DevicePolicy": "closed",
        "RestartPreventExitStatus": "2",  # a config error: a restart cannot fix it
    }.items():
        assert s[key] == [value], key
    assert s["RestartSec"] and s["ReadOnlyPaths"]
    assert s["LoadCredential"] == ["agft-token:/etc/agft/token"]  # what config.py reads
    assert "/dev/nvidiactl rw" in s["DeviceAllow"]
    assert "--config /etc/agft/agent.toml" in s["ExecStart"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The real ExecStart binary is not installed here: verify the same unit on /bin/true.
    unit = tmp_path / "agft-agent.service"
    unit.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(), flags=re.M))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def yaml_docs(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml")
    return list(yaml.safe_load_all(path.read_text()))


def test_the_daemonset_has_one_capability_and_no_host_access(tmp_path: Path) -> None:
    config_map, daemonset = yaml_docs(ROOT / "deploy" / "kubernetes" / "agent-daemonset.yaml")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["hostNetwork"] is False
    (agent,) = spec["containers"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert agent["resources"]["limits"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["AGFT_AGENT_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["token"]["secret"]["secretName"]
    # The ConfigMap's TOML loads with the agent's loader.
    from node_agent.config import load_config

    toml = tmp_path / "agent.toml"
    toml.write_text(config_map["data"]["agent.toml"])
    config = load_config(toml, environ={"AGFT_AGENT_NODE_ID": "n"})
    assert config.token_file == "/run/secrets/agft/token"


def test_compose_publishes_on_loopback_and_writes_the_password_once() -> None:
    (compose,) = yaml_docs(ROOT / "docker-compose.yml")
    for name, service in compose["services"].items():
        if name == "node-tokens":  # one-shot: makes the agents' tokens, then exits
            assert "restart" not in service
            continue
        assert service["restart"] == "unless-stopped", name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    text = (ROOT / "docker-compose.yml").read_text()
    assert text.count("${POSTGRES_PASSWORD:-") == 1
    assert "agft:agft@" not in text
    assert "dns:///agft-server:50051" in compose["services"]["agent-sim-0"]["command"]
    # Each simulated agent authenticates with the token the one-shot service made for it.
    for n in (0, 1):
        agent = compose["services"][f"agent-sim-{n}"]
        token_file = agent["environment"]["AGFT_AGENT_TOKEN_FILE"]
        assert token_file == f"/data/sim-node-{n}.token"
        assert "sim-node-$$n" in compose["services"]["node-tokens"]["command"][0]
        assert agent["depends_on"]["node-tokens"]["condition"] == "service_completed_successfully"


def test_the_agent_image_runs_the_agent_from_its_own_files_only(tmp_path: Path) -> None:
    dockerfile = (ROOT / "deploy" / "agent.Dockerfile").read_text()
    assert "--all-extras" not in dockerfile and "--extra" not in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M)
    # Copy what the image copies, and run `agft agent` from there with every server-side
    # module blocked: the image needs nothing else.
    for src in re.findall(r"^COPY (?!--from)(\S+) \S+$", dockerfile, re.M):
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, tmp_path / src)
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in {"server", "sim", "bench", "migrations", "fastapi", "sqlalchemy",
                           "numpy", "uvicorn", "alembic", "jinja2"}:
                    raise ImportError(name + " is not in the agent image")
        sys.meta_path.insert(0, Block())
        import node_agent.check, node_agent.gpu.nvml, agft_cli.agent_cmd
        from agft_cli.main import main
        assert node_agent.check.__file__.startswith(sys.argv[1]), node_agent.check.__file__
        raise SystemExit(main(["agent", "--help"]))
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}:{tmp_path / 'protos'}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "--check" in result.stdout


def test_the_server_image_has_bench_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY bench bench" in dockerfile
    assert re.search(r"^USER agft", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".tools", ".git", "*.db", "docs/bench", ".mypy_cache"):
        assert entry in ignored, entry


def test_compose_has_a_profile_of_two_replicas_behind_one_address() -> None:
    (compose,) = yaml_docs(ROOT / "docker-compose.yml")
    services = compose["services"]
    a, b = services["server"], services["server-b"]
    assert b["profiles"] == ["replicas"] and "profiles" not in a  # the default runs one
    # One database, a name each (leases name their holder), one address for the agents.
    assert a["environment"]["AGFT_DATABASE_URL"] == b["environment"]["AGFT_DATABASE_URL"]
    assert {a["environment"]["AGFT_REPLICA_ID"], b["environment"]["AGFT_REPLICA_ID"]} == {
        "server-a",
        "server-b",
    }
    for server in (a, b):
        assert server["networks"]["default"]["aliases"] == ["agft-server"]
        assert server["command"] == ["server"]
    assert a["ports"] != b["ports"]
