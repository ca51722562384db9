"""Agent configuration: which server, which node, which serving instances on which GPUs."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agft.engines import ENGINE_NAMES


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    name: str
    metrics_url: str
    gpu_indices: tuple[int, ...]
    engine: str = "vllm"
    model_name: str = ""
    # Only /metrics samples carrying all these labels belong to this instance, so one
    # endpoint serving several engines or models can feed several instances.
    match_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    server: str = "127.0.0.1:50051"
    node_id: str = field(default_factory=socket.gethostname)
    instances: tuple[InstanceConfig, ...] = ()
    window_s: float = 1.0  # until the server's Welcome says otherwise
    scrape_timeout_s: float = 0.5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    lease_check_s: float = 0.1
    # What the agent accepts from whatever answers as the server (anything outside is
    # refused with a reason in the ack): a lease longer than this, or a window outside
    # [min_window_s, max_window_s], could pin a low clock or make the agent spin.
    max_lease_s: float = 60.0
    min_window_s: float = 0.1
    max_window_s: float = 60.0
    # Authentication to the server: the per-node token (`agft node-token create NODE`),
    # given inline (env AGFT_AGENT_TOKEN) or, better, as a file readable by the agent only.
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    # TLS on the stream: the CA that signed the server's certificate; a client
    # certificate and key for mutual TLS (optional); the name the server's certificate
    # must carry when it differs from the host in `server`.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise ConfigError(f"instance names must be unique: {names}")
        for inst in self.instances:
            if not inst.gpu_indices:
                raise ConfigError(f"instance {inst.name!r} has no GPUs")
            if inst.engine not in ENGINE_NAMES:
                raise ConfigError(
                    f"instance {inst.name!r}: unknown engine {inst.engine!r}; "
                    f"known: {list(ENGINE_NAMES)}"
                )


def parse_instance_spec(spec: str) -> InstanceConfig:
    """`name=vllm-0,url=http://127.0.0.1:8001/metrics,gpus=0+1,engine=vllm,model=...`"""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"bad instance spec part {part!r} in {spec!r}")
        fields[key.strip()] = value.strip()
    try:
        gpus = tuple(int(g) for g in fields["gpus"].split("+"))
        return InstanceConfig(
            name=fields["name"],
            metrics_url=fields["url"],
            gpu_indices=gpus,
            engine=fields.get("engine", "vllm"),
            model_name=fields.get("model", ""),
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(f"bad instance spec {spec!r}: need name=, url=, gpus= ({err})") from None


def load_config(path: Path, **overrides: Any) -> AgentConfig:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read agent config {path}: {err}") from None
    instances = tuple(
        InstanceConfig(
            name=i["name"],
            metrics_url=i["metrics_url"],
            gpu_indices=tuple(i["gpu_indices"]),
            engine=i.get("engine", "vllm"),
            model_name=i.get("model_name", ""),
        )
        for i in raw.pop("instances", [])
    )
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return AgentConfig(instances=instances, **raw)
