"""Agent configuration: which server, which node, which serving instances on which GPUs.

Three layers, each overriding the one before: one TOML file (`agft agent --config FILE`,
every key in deploy/agent.example.toml), environment variables `AGFT_AGENT_<KEY>` (one
per top-level key, e.g. AGFT_AGENT_NODE_ID), and the command line (`--server`,
`--node-id`, `--instance`). Everything is validated at start; each problem is one
ConfigError line that names the key and where it came from, e.g.

    /etc/agft/agent.toml: instances[1].gpu_indices: expected a list of integers, got "0,1"

The node token is a secret: it is never read from the config file, only from
AGFT_AGENT_TOKEN or, better, from `token_file` (readable by the agent's user only). Under
systemd, a credential named `agft-token` (LoadCredential=agft-token:PATH) is the token
file when none is configured.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agft.engines import ENGINE_NAMES
from agft.labels import MAX_LABELS, label_problem
from node_agent.serving.front_door import COUNT_NAMES, DEFAULT_POLL_S, IN_FLIGHT, FrontDoorSpec


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
    # What SLO policies select pools by (pool, region, ...), sent to the server in Hello.
    labels: tuple[tuple[str, str], ...] = ()
    # Where prompts show before the engine schedules them (the fast loop's input); None:
    # nowhere, and the instance's clock moves once a window only.
    front_door: FrontDoorSpec | None = None


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
    # How long an outage the agent rides out without losing a window: the windows the
    # server has not said are stored are kept (up to this much of them) and sent again.
    resend_buffer_s: float = 900.0
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
    # Plaintext to a server off loopback, tokens in clear: only for a network you trust
    # wholly (a private container network, a lab). Off by default.
    allow_plaintext: bool = False

    @property
    def servers(self) -> tuple[str, ...]:
        """The server addresses to try, in order: replicas sharing one database, given
        as a comma-separated list (or one address, load-balanced or not)."""
        return tuple(a.strip() for a in self.server.split(",") if a.strip())

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


# ---- the schema -------------------------------------------------------------------------

ENV_PREFIX = "AGFT_AGENT_"
TOKEN_ENV = "AGFT_AGENT_TOKEN"
# systemd's LoadCredential=agft-token:/etc/agft/token puts the token here, readable by
# the unit's user only; it is the token file when none is configured.
SYSTEMD_CREDENTIAL = "agft-token"

# Top-level keys of the file (and AGFT_AGENT_<KEY> variables), by kind.
DURATION_KEYS = (
    "window_s",
    "scrape_timeout_s",
    "backoff_initial_s",
    "backoff_max_s",
    "lease_check_s",
    "max_lease_s",
    "min_window_s",
    "max_window_s",
    "resend_buffer_s",
)
TEXT_KEYS = ("server", "node_id")
OPTIONAL_TEXT_KEYS = (
    "token_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_server_name",
)
BOOL_KEYS = ("allow_plaintext",)
TOP_LEVEL_KEYS = (*TEXT_KEYS, *DURATION_KEYS, *OPTIONAL_TEXT_KEYS, *BOOL_KEYS)
INSTANCE_KEYS = (
    "name",
    "metrics_url",
    "gpu_indices",
    "engine",
    "model_name",
    "match_labels",
    "labels",
    "front_door",
)
FRONT_DOOR_KEYS = ("load_url", "router_url", "metric", "counts", "match_labels", "poll_s")
# The fast loop reads every few tens of ms; outside this it is either a busy loop or too
# slow to catch a prompt before its first token.
MIN_POLL_S, MAX_POLL_S = 0.005, 1.0
REQUIRED_INSTANCE_KEYS = ("name", "metrics_url", "gpu_indices")
# What --instance SPEC calls a key -> the file's name for it, for a hint on a mix-up.
_SPEC_NAMES = {"url": "metrics_url", "gpus": "gpu_indices", "model": "model_name"}
_SPEC_KEYS = ("name", "url", "gpus", "engine", "model")
# gRPC target schemes passed through unchecked (dns:///host:port, unix:/path, ...).
_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def _show(value: object) -> str:
    """A value as the file spells it, short enough for one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table " + json.dumps(value, default=str)
    else:
        try:
            text = json.dumps(value, default=str, allow_nan=False)
        except ValueError:  # nan / inf
            text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _hint(key: str, known: Sequence[str]) -> str:
    if key in _SPEC_NAMES and _SPEC_NAMES[key] in known:
        return f" (did you mean {_SPEC_NAMES[key]}?)"
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---- where a value came from, for the error line -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where one top-level value came from: the file, a variable, a flag, or the default."""

    kind: str  # "file" | "env" | "flag" | "default"
    name: str  # the path, the variable or the flag

    def at(self, key: str) -> str:
        if self.kind == "file":
            return f"{self.name}: {key}"
        if self.kind == "default":
            return f"{key} (default)"
        return self.name  # AGFT_AGENT_WINDOW_S / --server already names the key


class _Instances:
    """Error prefixes for one instance: `FILE: instances[1].name` or `--instance SPEC: name`."""

    def __init__(self, prefix: str, joiner: str) -> None:
        self.prefix = prefix
        self.joiner = joiner

    def at(self, key: str | None = None) -> str:
        return self.prefix if key is None else f"{self.prefix}{self.joiner}{key}"


# ---- parsing one value -------------------------------------------------------------------


def _duration(value: object, where: str) -> float:
    if not _is_number(value):
        raise ConfigError(f"{where}: expected a number of seconds, got {_show(value)}")
    seconds = float(value)  # type: ignore[arg-type]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{where}: must be a positive number of seconds, got {_show(value)}")
    return seconds


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    if not value.strip():
        raise ConfigError(f"{where}: must not be empty")
    if value != value.strip():
        raise ConfigError(f"{where}: has leading or trailing spaces: {_show(value)}")
    return value


def _server(value: str, where: str) -> str:
    if any(c.isspace() for c in value):
        raise ConfigError(f"{where}: a gRPC address has no spaces, got {_show(value)}")
    if value.startswith(_TARGET_SCHEMES):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{where}: expected host:port (e.g. agft.example.com:50051), got {_show(value)}"
        )
    return value


def _env_value(var: str, key: str, text: str) -> object:
    """A variable's text as the type its key takes (the file's type checks then apply)."""
    if key in DURATION_KEYS:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{var}: expected a number of seconds, got {_show(text)}") from None
    if key in BOOL_KEYS:
        if text.strip().lower() in ("true", "1", "yes"):
            return True
        if text.strip().lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{var}: expected true or false, got {_show(text)}")
    return text


# ---- instances ----------------------------------------------------------------------------


def _instance_from_table(raw: object, where: _Instances) -> InstanceConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where.at()}: expected a table ([[instances]]), got {_show(raw)}")
    for key in raw:
        if key not in INSTANCE_KEYS:
            raise ConfigError(
                f"{where.at(key)}: unknown key{_hint(key, INSTANCE_KEYS)}; "
                f"an instance has {', '.join(INSTANCE_KEYS)}"
            )
    for key in REQUIRED_INSTANCE_KEYS:
        if key not in raw:
            raise ConfigError(
                f"{where.at(key)}: missing (an instance needs {', '.join(REQUIRED_INSTANCE_KEYS)})"
            )
    gpus = raw["gpu_indices"]
    if not isinstance(gpus, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) for g in gpus
    ):
        raise ConfigError(
            f"{where.at('gpu_indices')}: expected a list of integers, got {_show(gpus)}"
        )
    match_labels = _label_table(raw, "match_labels", where)
    labels = _label_table(raw, "labels", where)
    for key in ("name", "metrics_url", "engine", "model_name"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where.at(key)}: expected a string, got {_show(raw[key])}")
    front_door = raw.get("front_door")
    return InstanceConfig(
        name=raw["name"],
        metrics_url=raw["metrics_url"],
        gpu_indices=tuple(gpus),
        engine=raw.get("engine", "vllm"),
        model_name=raw.get("model_name", ""),
        match_labels=tuple(sorted(match_labels.items())),
        labels=tuple(sorted(labels.items())),
        front_door=None if front_door is None else _front_door(front_door, where),
    )


def _front_door(raw: object, where: _Instances) -> FrontDoorSpec:
    """`front_door = { load_url = ... }` or `{ router_url = ..., metric = ..., counts = ...}`."""
    at = "front_door"
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{where.at(at)}: expected a table, e.g. {{ load_url = "http://127.0.0.1:8000/load" }}'
            f", got {_show(raw)}"
        )
    for key in raw:
        if key not in FRONT_DOOR_KEYS:
            raise ConfigError(
                f"{where.at(at + '.' + key)}: unknown key{_hint(key, FRONT_DOOR_KEYS)}; "
                f"a front door has {', '.join(FRONT_DOOR_KEYS)}"
            )
    for key in ("load_url", "router_url", "metric", "counts"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(
                f"{where.at(at + '.' + key)}: expected a string, got {_show(raw[key])}"
            )
    poll_s = DEFAULT_POLL_S
    if "poll_s" in raw:
        poll_s = _duration(raw["poll_s"], where.at(at + ".poll_s"))
        if not MIN_POLL_S <= poll_s <= MAX_POLL_S:
            raise ConfigError(
                f"{where.at(at + '.poll_s')}: must lie in [{MIN_POLL_S:g}, {MAX_POLL_S:g}] s, "
                f"got {_show(raw['poll_s'])}"
            )
    labels_at = at + ".match_labels"
    match = _label_table({labels_at: raw.get("match_labels", {})}, labels_at, where)
    if ("load_url" in raw) == ("router_url" in raw):
        raise ConfigError(
            f"{where.at(at)}: give load_url (vLLM's GET /load) or router_url (a router's "
            "/metrics with metric and counts), one of them"
        )
    if "load_url" in raw:
        for key in ("metric", "counts", "match_labels"):
            if key in raw:
                raise ConfigError(
                    f"{where.at(at + '.' + key)}: only for router_url; GET /load has one count"
                )
        url = raw["load_url"]
        _check_url(url, where.at(at + ".load_url"))
        return FrontDoorSpec(IN_FLIGHT, url, poll_s=poll_s)
    url = raw["router_url"]
    _check_url(url, where.at(at + ".router_url"))
    metric = raw.get("metric", "")
    if not metric:
        raise ConfigError(
            f"{where.at(at + '.metric')}: missing; the router's gauge, e.g. "
            '"dynamo_frontend_queued_requests"'
        )
    counts = raw.get("counts")
    if counts not in COUNT_NAMES:
        raise ConfigError(
            f"{where.at(at + '.counts')}: expected {' or '.join(map(repr, COUNT_NAMES))} (what "
            f"the gauge counts: requests until their first token, or until done), got "
            f"{_show(counts)}"
        )
    return FrontDoorSpec(COUNT_NAMES[counts], url, metric, dict(sorted(match.items())), poll_s)


def _check_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: expected an http:// or https:// URL with a host, got {_show(url)}"
        )
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as err:
        raise ConfigError(f"{where}: {err}: {_show(url)}") from None


def _label_table(raw: dict[str, object], key: str, where: _Instances) -> dict[str, str]:
    labels = raw.get(key, {})
    if not isinstance(labels, dict):
        raise ConfigError(
            f'{where.at(key)}: expected a table of label = "value", got {_show(labels)}'
        )
    for label, value in labels.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"{where.at(key + '.' + label)}: expected a string, got {_show(value)}"
            )
    return labels


def _check_instance(inst: InstanceConfig, where: _Instances) -> None:
    _text(inst.name, where.at("name"))
    _check_url(inst.metrics_url, where.at("metrics_url"))
    if not inst.gpu_indices:
        raise ConfigError(
            f"{where.at('gpu_indices')}: is empty; an instance runs on at least one GPU"
        )
    for index in inst.gpu_indices:
        if index < 0:
            raise ConfigError(f"{where.at('gpu_indices')}: GPU indices are 0 or more, got {index}")
    if len(set(inst.gpu_indices)) != len(inst.gpu_indices):
        raise ConfigError(f"{where.at('gpu_indices')}: lists a GPU twice: {list(inst.gpu_indices)}")
    if inst.engine not in ENGINE_NAMES:
        raise ConfigError(
            f"{where.at('engine')}: unknown engine {_show(inst.engine)}; "
            f"known: {', '.join(ENGINE_NAMES)}"
        )
    for label, _value in inst.match_labels:
        if not label:
            raise ConfigError(f"{where.at('match_labels')}: a label name must not be empty")
    if len(inst.labels) > MAX_LABELS:
        raise ConfigError(f"{where.at('labels')}: at most {MAX_LABELS} labels")
    for label, value in inst.labels:
        problem = label_problem(label, value)
        if problem:
            raise ConfigError(f"{where.at('labels.' + label)}: {problem}")


def parse_instance_spec(spec: str) -> InstanceConfig:
    """`name=vllm-0,url=http://127.0.0.1:8001/metrics,gpus=0+1,engine=vllm,model=...`"""
    where = f"--instance {spec!r}"
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"{where}: {part!r} is not key=value (keys: {', '.join(_SPEC_KEYS)})")
        if key not in _SPEC_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; keys: {', '.join(_SPEC_KEYS)}")
        if key in fields:
            raise ConfigError(f"{where}: {key}= given twice")
        fields[key] = value.strip()
    missing = [k for k in ("name", "url", "gpus") if k not in fields]
    if missing:
        raise ConfigError(
            f"{where}: missing {', '.join(k + '=' for k in missing)} (need name=, url=, gpus=)"
        )
    try:
        gpus = tuple(int(g) for g in fields["gpus"].split("+"))
    except ValueError:
        raise ConfigError(
            f"{where}: gpus= takes GPU indices joined by '+', e.g. gpus=0+1, got {fields['gpus']!r}"
        ) from None
    inst = InstanceConfig(
        name=fields["name"],
        metrics_url=fields["url"],
        gpu_indices=gpus,
        engine=fields.get("engine", "vllm"),
        model_name=fields.get("model", ""),
    )
    _check_instance(inst, _Instances(where, ": "))
    return inst


# ---- the whole configuration -----------------------------------------------------------


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's TOML as a dict; a JSON file, an unreadable file or bad TOML is one line."""
    if path.suffix.lower() == ".json":
        raise ConfigError(
            f"{path}: the agent's config file is TOML now, not JSON; "
            "see deploy/agent.example.toml for every key"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        hint = (
            " (this looks like JSON: the config is TOML now)"
            if text.lstrip().startswith("{")
            else ""
        )
        raise ConfigError(f"{path}: not valid TOML: {err}{hint}") from None


def load_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    instance_specs: Sequence[str] = (),
    **flags: str | None,
) -> AgentConfig:
    """The agent's configuration: the TOML file, then AGFT_AGENT_* variables, then flags.

    `flags` are top-level keys given on the command line (server=, node_id=); None means
    not given. `instance_specs` are --instance SPECs, added to the file's instances.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    origins: dict[str, _Origin] = {}
    instances: list[tuple[InstanceConfig, _Instances]] = []

    # 1. the file
    if path is not None:
        path = Path(path)
        raw = read_config_file(path)
        file_origin = _Origin("file", str(path))
        for key, value in raw.items():
            if key == "token":
                raise ConfigError(
                    f"{path}: token: the node token is a secret and is not read from the "
                    f"config file; put it in a file readable only by the agent's user and "
                    f"set token_file (or set {TOKEN_ENV})"
                )
            if key == "instances":
                continue
            if key not in TOP_LEVEL_KEYS:
                raise ConfigError(
                    f"{path}: {key}: unknown key{_hint(key, (*TOP_LEVEL_KEYS, 'instances'))}; "
                    f"see deploy/agent.example.toml for every key"
                )
            values[key] = value
            origins[key] = file_origin
        tables = raw.get("instances", [])
        if not isinstance(tables, list):
            raise ConfigError(
                f"{path}: instances: expected an array of tables ([[instances]]), "
                f"got {_show(tables)}"
            )
        for i, table in enumerate(tables):
            at = _Instances(f"{path}: instances[{i}]", ".")
            instances.append((_instance_from_table(table, at), at))

    # 2. the environment
    token: str | None = None
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        text = env[var].strip()
        if var == TOKEN_ENV:
            token = text or None
            continue
        key = var[len(ENV_PREFIX) :].lower()
        if key not in TOP_LEVEL_KEYS:
            known = [ENV_PREFIX + k.upper() for k in TOP_LEVEL_KEYS] + [TOKEN_ENV]
            why = (
                "instances come from the config file or --instance"
                if key == "instances"
                else f"not a setting of the agent{_hint(var, known)}"
            )
            raise ConfigError(f"{var}: {why}")
        if not text:
            continue  # an empty variable counts as unset
        values[key] = _env_value(var, key, text)
        origins[key] = _Origin("env", var)

    # 3. the command line
    for key, value in flags.items():
        if key not in TOP_LEVEL_KEYS:
            raise TypeError(f"load_config: unknown flag {key!r}")
        if value is not None:
            values[key] = value
            origins[key] = _Origin("flag", "--" + key.replace("_", "-"))
    for spec in instance_specs:
        instances.append((parse_instance_spec(spec), _Instances(f"--instance {spec!r}", ": ")))

    # Types and ranges of every top-level value, wherever it came from.
    defaults = AgentConfig(node_id="-")
    for key in TOP_LEVEL_KEYS:
        origins.setdefault(key, _Origin("default", key))
        if key not in values:
            continue
        loc = origins[key].at(key)
        value = values[key]
        if key in DURATION_KEYS:
            values[key] = _duration(value, loc)
        elif key in BOOL_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"{loc}: expected true or false, got {_show(value)}")
        else:
            values[key] = _text(value, loc)
    if "server" in values:
        for address in str(values["server"]).split(","):
            _server(address.strip(), origins["server"].at("server"))

    def get(key: str) -> Any:
        return values[key] if key in values else getattr(defaults, key)

    def where(key: str) -> str:
        return origins[key].at(key)

    for low, high in (("min_window_s", "max_window_s"), ("backoff_initial_s", "backoff_max_s")):
        if get(low) > get(high):
            raise ConfigError(f"{where(low)}: {get(low):g} s is above {high} ({get(high):g} s)")
    if not get("min_window_s") <= get("window_s") <= get("max_window_s"):
        raise ConfigError(
            f"{where('window_s')}: {get('window_s'):g} s is outside "
            f"[min_window_s, max_window_s] = [{get('min_window_s'):g}, {get('max_window_s'):g}] s"
        )
    if get("lease_check_s") >= get("max_lease_s"):
        raise ConfigError(
            f"{where('lease_check_s')}: {get('lease_check_s'):g} s must be below max_lease_s "
            f"({get('max_lease_s'):g} s), or a lease could outlive itself by a whole check"
        )
    if (get("tls_cert_file") is None) != (get("tls_key_file") is None):
        given = "tls_cert_file" if get("tls_cert_file") is not None else "tls_key_file"
        raise ConfigError(
            f"{where(given)}: tls_cert_file and tls_key_file go together "
            "(mutual TLS needs the client certificate and its key)"
        )
    if token is not None and get("token_file") is not None:
        raise ConfigError(
            f"{TOKEN_ENV} and {where('token_file')} are both set; give the token one way only"
        )
    if token is None and get("token_file") is None:
        # Under systemd, LoadCredential=agft-token:PATH is the token file.
        creds = env.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / SYSTEMD_CREDENTIAL).is_file():
            values["token_file"] = str(Path(creds) / SYSTEMD_CREDENTIAL)

    # Instances: each valid on its own, names unique, a GPU in one instance only (a GPU
    # has one clock: two instances' leases on it would undo each other).
    names: dict[str, str] = {}
    owners: dict[int, tuple[str, str]] = {}
    for inst, at in instances:
        _check_instance(inst, at)
        if inst.name in names:
            raise ConfigError(
                f"{at.at('name')}: {_show(inst.name)} is already the name of {names[inst.name]}"
            )
        names[inst.name] = at.at()
        for index in inst.gpu_indices:
            if index in owners:
                owner, owner_at = owners[index]
                raise ConfigError(
                    f"{at.at('gpu_indices')}: GPU {index} already belongs to {_show(owner)} "
                    f"({owner_at}); a GPU has one clock, so it serves one instance"
                )
            owners[index] = (inst.name, at.at())

    kwargs = {k: v for k, v in values.items() if k in TOP_LEVEL_KEYS}
    return AgentConfig(instances=tuple(i for i, _ in instances), token=token, **kwargs)  # type: ignore[arg-type]


def with_instances(config: AgentConfig, instances: Sequence[InstanceConfig]) -> AgentConfig:
    """The same settings with other instances (a simulated node brings its own)."""
    return dataclasses.replace(config, instances=tuple(instances))
