"""How the agent reaches the server: TLS credentials and the node token.

The stream carries the node token in its metadata, so off loopback it must be
encrypted: without a CA file the agent talks to a loopback server only, and says so.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from node_agent.config import AgentConfig, ConfigError


def _host(server: str) -> str:
    host = server.rsplit(":", 1)[0] if server.count(":") == 1 or "]" in server else server
    return host.strip("[]")


def is_loopback(server: str) -> bool:
    host = _host(server)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the {what} {path}: {err.strerror or err}") from None


def node_token(config: AgentConfig) -> str:
    """The node token, read afresh at each connect (so a rotated file is picked up)."""
    if config.token:
        return config.token.strip()
    if config.token_file:
        text = _read(config.token_file, "token file").decode(errors="replace")
        # The first line that is not a comment: `agft node-token create` output works as is.
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        token = lines[0] if lines else ""
        if not token:
            raise ConfigError(f"the token file {config.token_file} is empty")
        return token
    raise ConfigError(
        "no node token: create one on the server with `agft node-token create NODE_ID` and "
        "give it to the agent as token_file (or AGFT_AGENT_TOKEN)"
    )


def auth_metadata(config: AgentConfig) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {node_token(config)}"),)


def open_channel(config: AgentConfig, address: str | None = None) -> grpc.aio.Channel:
    """A TLS channel when a CA is configured; plaintext only to a loopback server.

    address: one of config.servers (default: the first)."""
    address = address or config.servers[0]
    if config.tls_ca_file is None:
        if config.tls_cert_file or config.tls_key_file:
            raise ConfigError("tls_cert_file/tls_key_file need tls_ca_file (the server's CA)")
        if not is_loopback(address) and not config.allow_plaintext:
            raise ConfigError(
                f"server {address} is not on loopback: set tls_ca_file so the stream "
                "(and the node token on it) is encrypted and the server is verified "
                "(allow_plaintext = true only on a network you trust wholly)"
            )
        return grpc.aio.insecure_channel(address)
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise ConfigError("mutual TLS needs both tls_cert_file and tls_key_file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(config.tls_ca_file, "CA file"),
        private_key=_read(config.tls_key_file, "TLS key file") if config.tls_key_file else None,
        certificate_chain=_read(config.tls_cert_file, "TLS certificate file")
        if config.tls_cert_file
        else None,
    )
    options: list[tuple[str, str]] = []
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return grpc.aio.secure_channel(address, credentials, options=options)
