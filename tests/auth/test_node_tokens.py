"""Node tokens: every agent stream authenticates, and a node speaks only for itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from agft.v1 import agent_pb2 as pb
from agft_cli.main import main
from server.auth import tokens
from server.auth.store import create_node_token, revoke
from server.store.models import Token
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import RunningServer, running_server

NOW = 1_780_000_000.0


async def _refused(
    srv: RunningServer, token: str | None, node_id: str = "raw-node", *, send_hello: bool = True
) -> grpc.aio.AioRpcError:
    """The status a stream ends with. A token refusal comes before any message is read,
    so those streams send nothing (a Hello racing the refusal fails on the client side)."""
    stream = RawStream(srv.grpc_address, token)
    try:
        if send_hello:
            stream.send(hello=hello(node_id))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        return refused.value
    finally:
        await stream.close()


def test_a_token_is_random_parsable_and_stored_only_as_a_hash(sqlite_url: str) -> None:
    first, second = tokens.new_token("node"), tokens.new_token("node")
    assert first.plaintext != second.plaintext and first.token_id != second.token_id
    presented = tokens.parse(first.plaintext)
    assert (presented.kind, presented.token_id) == ("node", first.token_id)
    assert tokens.matches(presented.secret, first.secret_sha256)
    assert not tokens.matches(tokens.parse(second.plaintext).secret, first.secret_sha256)
    for bad in ("", "Bearer x", "agft_root_0123456789ab_" + "s" * 43, "agft_node_XYZ_" + "s" * 43):
        with pytest.raises(tokens.TokenFormatError):
            tokens.parse(bad)


async def test_no_unknown_or_revoked_token_gets_a_stream(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv:
        missing = await _refused(srv, None, send_hello=False)
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no node token" in (missing.details() or "")

        good = srv.node_token("raw-node")
        forged = good[:-4] + ("aaaa" if not good.endswith("aaaa") else "bbbb")
        wrong_secret = await _refused(srv, forged, send_hello=False)
        assert wrong_secret.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "unknown node token" in (wrong_secret.details() or "")

        garbage = await _refused(srv, "hunter2", send_hello=False)
        assert "not an AGFT token" in (garbage.details() or "")

        revoke(srv.app.state.session_factory, "raw-node")
        revoked = await _refused(srv, good, send_hello=False)
        assert revoked.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (revoked.details() or "")

        with srv.app.state.session_factory() as db:
            rows = db.scalars(select(Token)).all()
        # Only the hash is kept: the secret is nowhere in the table.
        secret = tokens.parse(good).secret
        assert rows and all(secret not in (r.secret_sha256, r.id, r.name) for r in rows)


async def test_a_token_speaks_for_its_own_node_only(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv:
        token_a = srv.node_token("node-a")
        impostor = await _refused(srv, token_a, node_id="node-b")
        assert impostor.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to node 'node-a'" in (impostor.details() or "")

        # Node B's instance cannot be fed from node A's stream: names resolve per node.
        stream_b = RawStream(srv.grpc_address, srv.node_token("node-b"))
        stream_a = RawStream(srv.grpc_address, token_a)
        try:
            stream_b.send(hello=hello("node-b"))
            await stream_b.read_kind("welcome")
            stream_a.send(hello=_renamed(hello("node-a"), "a-"))
            await stream_a.read_kind("welcome")
            stream_a.send(telemetry=pb.Telemetry(windows=[window(instance="vllm-0", start=NOW)]))
            err = (await stream_a.read_kind("error")).error
            assert err.code == "unknown_instance"
        finally:
            await stream_a.close()
            await stream_b.close()


def _renamed(h: pb.Hello, prefix: str) -> pb.Hello:
    for inst in h.instances:
        inst.name = prefix + inst.name
    return h


async def test_a_second_agent_with_a_live_nodes_id_is_refused(sqlite_url: str) -> None:
    async with running_server(sqlite_url, window_s=0.2) as srv:
        token = srv.node_token("raw-node")
        owner = RawStream(srv.grpc_address, token)
        try:
            owner.send(hello=hello())
            await owner.read_kind("welcome")
            owner.send(telemetry=pb.Telemetry(windows=[window(start=NOW)]))
            await owner.read_kind("reset_clocks")

            second = await _refused(srv, srv.node_token("raw-node"))
            assert second.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "already connected" in (second.details() or "")

            # The owner's stream is untouched: its next window is still decided.
            owner.send(telemetry=pb.Telemetry(windows=[window(start=NOW + 1)]))
            owner.send(ack=pb.CommandAck(command_id="nope", ok=True))
            assert (await owner.read_kind("error")).error.code == "unknown_command"
            assert srv.app.state.fleet.sessions["raw-node"] is not None
        finally:
            await owner.close()

        # Once the owner is gone, the node can connect again.
        await asyncio.sleep(0.3)
        again = RawStream(srv.grpc_address, token)
        try:
            again.send(hello=hello())
            assert (await again.read_kind("welcome")).WhichOneof("body") == "welcome"
        finally:
            await again.close()


async def test_revoking_a_token_ends_its_live_stream(sqlite_url: str) -> None:
    async with running_server(sqlite_url, state_save_interval_s=0.2) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            await stream.read_kind("welcome")
            revoke(srv.app.state.session_factory, "raw-node")
            loop = asyncio.get_running_loop()
            started = loop.time()
            ended = False
            while loop.time() - started < 5:
                try:
                    await stream.read(0.5)
                except TimeoutError:
                    continue
                except (grpc.aio.AioRpcError, AssertionError):  # ended, or closed (EOF)
                    ended = True
                    break
            assert ended, "the stream outlived its revoked token"
        finally:
            await stream.close()


def test_node_token_cli_creates_lists_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["node-token", "--database-url", url, "create", "gpu-node-17"]) == 0
    out = capsys.readouterr().out
    plaintext = out.splitlines()[0]
    assert tokens.parse(plaintext).kind == "node"
    assert "shown once" in out

    assert main(["node-token", "--database-url", url, "list"]) == 0
    listing = capsys.readouterr().out
    assert "gpu-node-17" in listing and tokens.parse(plaintext).secret not in listing

    assert main(["node-token", "--database-url", url, "revoke", "gpu-node-17"]) == 0
    assert "revoked token" in capsys.readouterr().out
    assert main(["node-token", "--database-url", url, "revoke", "gpu-node-17"]) == 1
    assert "no live token" in capsys.readouterr().out

    assert main(["node-token", "--database-url", url, "create", "bad\x00id"]) == 2
    assert "printable" in capsys.readouterr().out


def test_create_node_token_refuses_bad_node_ids(sqlite_url: str) -> None:
    from server.store.database import make_engine, make_session_factory
    from server.store.migrate import upgrade_to_head

    upgrade_to_head(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        for bad in ("", "  ", "x" * 256, "a\nb"):
            with pytest.raises(ValueError):
                create_node_token(make_session_factory(engine), bad)
    finally:
        engine.dispose()
