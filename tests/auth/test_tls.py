"""TLS on the agent stream, over loopback, with certificates the test makes.

The agent verifies the server against its CA file (and the name on the certificate);
with a client CA configured the server verifies the agent too (mutual TLS).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc
from node_agent.config import AgentConfig, ConfigError
from node_agent.link_security import auth_metadata, is_loopback, open_channel
from tests.auth.certs import ThrowawayCa
from tests.helpers.raw_agent import hello
from tests.helpers.running import running_server


async def _handshake(config: AgentConfig) -> pb.ServerMessage:
    """Hello over the agent's own channel code; the server's first answer."""
    outbox: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
    outbox.put_nowait(pb.AgentMessage(seq=1, hello=hello()))

    async def requests() -> AsyncIterator[pb.AgentMessage]:
        while (msg := await outbox.get()) is not None:
            yield msg

    async with open_channel(config) as channel:
        call = pb_grpc.AgentLinkStub(channel).Connect(requests(), metadata=auth_metadata(config))
        try:
            first = await asyncio.wait_for(call.read(), 5)
        finally:
            outbox.put_nowait(None)
            call.cancel()
    assert first is not grpc.aio.EOF
    return first  # type: ignore[no-any-return]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = ThrowawayCa(tmp_path)
    server = ca.issue("agft-server", server=True, hosts=("127.0.0.1", "localhost"))
    named = ca.issue("control.example", server=True, hosts=("control.example",))
    client = ca.issue("raw-node", server=False)
    other_ca = ThrowawayCa(tmp_path, "Another CA")
    stranger = other_ca.issue("stranger", server=False)
    return {
        "ca": ca.cert,
        "server_cert": server.cert,
        "server_key": server.key,
        "named_cert": named.cert,
        "named_key": named.key,
        "client_cert": client.cert,
        "client_key": client.key,
        "other_ca": other_ca.cert,
        "stranger_cert": stranger.cert,
        "stranger_key": stranger.key,
    }


async def test_the_agent_verifies_the_server_certificate(
    sqlite_url: str, pki: dict[str, Path]
) -> None:
    async with running_server(
        sqlite_url,
        grpc_tls_cert_file=str(pki["server_cert"]),
        grpc_tls_key_file=str(pki["server_key"]),
    ) as srv:
        base = AgentConfig(
            server=srv.grpc_address, node_id="raw-node", token=srv.node_token("raw-node")
        )
        trusted = dataclasses.replace(base, tls_ca_file=str(pki["ca"]))
        assert (await _handshake(trusted)).WhichOneof("body") == "welcome"

        # A server whose certificate another CA signed is not the server.
        wrong_ca = dataclasses.replace(base, tls_ca_file=str(pki["other_ca"]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _handshake(wrong_ca)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # Plaintext to a TLS port gets nowhere either.
        with pytest.raises(grpc.aio.AioRpcError):
            await _handshake(base)


async def test_tls_server_name_checks_the_name_on_the_certificate(
    sqlite_url: str, pki: dict[str, Path]
) -> None:
    async with running_server(
        sqlite_url,
        grpc_tls_cert_file=str(pki["named_cert"]),
        grpc_tls_key_file=str(pki["named_key"]),
    ) as srv:
        base = AgentConfig(
            server=srv.grpc_address,
            node_id="raw-node",
            token=srv.node_token("raw-node"),
            tls_ca_file=str(pki["ca"]),
        )
        # The certificate says control.example, not 127.0.0.1.
        with pytest.raises(grpc.aio.AioRpcError):
            await _handshake(base)
        named = dataclasses.replace(base, tls_server_name="control.example")
        assert (await _handshake(named)).WhichOneof("body") == "welcome"


async def test_mutual_tls_refuses_agents_without_a_trusted_certificate(
    sqlite_url: str, pki: dict[str, Path]
) -> None:
    async with running_server(
        sqlite_url,
        grpc_tls_cert_file=str(pki["server_cert"]),
        grpc_tls_key_file=str(pki["server_key"]),
        grpc_tls_client_ca_file=str(pki["ca"]),
    ) as srv:
        base = AgentConfig(
            server=srv.grpc_address,
            node_id="raw-node",
            token=srv.node_token("raw-node"),
            tls_ca_file=str(pki["ca"]),
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await _handshake(base)  # no client certificate
        stranger = dataclasses.replace(
            base, tls_cert_file=str(pki["stranger_cert"]), tls_key_file=str(pki["stranger_key"])
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await _handshake(stranger)
        member = dataclasses.replace(
            base, tls_cert_file=str(pki["client_cert"]), tls_key_file=str(pki["client_key"])
        )
        assert (await _handshake(member)).WhichOneof("body") == "welcome"


def test_plaintext_is_for_loopback_only(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1:50051") and is_loopback("localhost:1") and is_loopback("[::1]:5")
    assert not is_loopback("control.example:50051") and not is_loopback("10.0.0.5:50051")
    remote = AgentConfig(server="control.example:50051", token="t")
    with pytest.raises(ConfigError, match="tls_ca_file"):
        open_channel(remote)
    with pytest.raises(ConfigError, match="cannot read the CA file"):
        open_channel(dataclasses.replace(remote, tls_ca_file=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="both tls_cert_file and tls_key_file"):
        open_channel(dataclasses.replace(remote, tls_ca_file=str(tmp_path), tls_cert_file="c.pem"))


def test_the_token_comes_from_its_file_and_is_required(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("agft_node_0123456789ab_secret-secret-secret-secret\n")
    config = AgentConfig(token_file=str(token_file))
    assert auth_metadata(config) == (
        ("authorization", "Bearer agft_node_0123456789ab_secret-secret-secret-secret"),
    )
    with pytest.raises(ConfigError, match="agft node-token create"):
        auth_metadata(AgentConfig())
    token_file.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        auth_metadata(config)
