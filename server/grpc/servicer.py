"""The AgentLink stream: a thin shell over FleetService.

Requests are parsed by our own deserializer so a malformed message becomes a clear
Error on the stream instead of killing it (the generated handler would abort the RPC).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agft.commands import commands_of
from agft.v1 import agent_pb2 as pb
from server.auth.store import AuthError, TokenInfo, verify
from server.auth.tokens import bearer
from server.fleet.ownership import NodeRefusedError
from server.fleet.runtime import AgentSession
from server.fleet.service import INTERNAL_ERROR, FleetService
from server.fleet.validation import InvalidMessageError

log = logging.getLogger(__name__)

SERVICE = "agft.v1.AgentLink"


class Malformed:
    """Stands in for a request that could not be parsed."""

    def __init__(self, error: str) -> None:
        self.error = error


def _deserialize(data: bytes) -> pb.AgentMessage | Malformed:
    msg = pb.AgentMessage()
    try:
        msg.ParseFromString(data)
    except DecodeError as err:
        return Malformed(f"cannot parse AgentMessage: {err}")
    return msg


class AgentLinkServicer:
    def __init__(self, fleet: FleetService) -> None:
        self._fleet = fleet
        self._background: set[asyncio.Task[None]] = set()

    async def connect(
        self, requests: AsyncIterator[pb.AgentMessage | Malformed], context: Any
    ) -> AsyncIterator[pb.ServerMessage]:
        # Closed by default: no valid node token, no stream (nothing is read before this).
        try:
            token = await asyncio.to_thread(
                verify, self._fleet.factory, bearer(context.invocation_metadata()), "node"
            )
        except AuthError as err:
            log.warning("refused agent stream from %s: %s", context.peer(), err)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
            return
        session = await self._handshake(requests, context, token)
        if session is None:
            return
        reader = asyncio.create_task(self._read(requests, session))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                self._sent(session, message)
                yield message
        finally:
            reader.cancel()
            await self._fleet.disconnect(session)

    def _sent(self, session: AgentSession, message: pb.ServerMessage) -> None:
        commands = commands_of(message)
        if not commands:
            return
        now = time.perf_counter()
        for command in commands:
            born = session.born.pop(command.command_id, None)
            if born is not None:
                self._fleet.command_latency.observe(now - born)

    async def _handshake(
        self, requests: AsyncIterator[pb.AgentMessage | Malformed], context: Any, token: TokenInfo
    ) -> AgentSession | None:
        async for first in requests:
            if isinstance(first, Malformed) or first.WhichOneof("body") != "hello":
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, "the first message must be a Hello"
                )
                return None
            try:
                return await self._fleet.hello(first.hello, token, str(context.peer()))
            except NodeRefusedError as err:
                log.warning("refused Hello from %s: %s", context.peer(), err.message)
                await context.abort(getattr(grpc.StatusCode, err.code), err.message)
                return None
            except InvalidMessageError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{err.code}: {err.message}")
                return None
            except Exception:
                # The database's words (SQL, constraint names) stay in our log.
                log.exception("registering node %r failed", first.hello.node_id[:80])
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
                return None
        return None

    async def _read(
        self, requests: AsyncIterator[pb.AgentMessage | Malformed], session: AgentSession
    ) -> None:
        try:
            async for msg in requests:
                session.touch()
                self._dispatch(session, msg, time.perf_counter())
                # A database behind: stop reading, so the agent's sends wait (HTTP/2 flow
                # control) rather than the server queueing without bound.
                await self._fleet.writer_room()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream from %s failed", session.node_id)
        finally:
            session.close()

    def _dispatch(
        self, session: AgentSession, msg: pb.AgentMessage | Malformed, read_at: float
    ) -> None:
        if isinstance(msg, Malformed):
            session.send(FleetService.error(0, "malformed", msg.error))
            return
        kind = msg.WhichOneof("body")
        try:
            if kind == "telemetry":
                self._fleet.telemetry(session, msg.seq, msg.telemetry, read_at)
            elif kind == "ack":
                self._fleet.ack(session, msg.seq, msg.ack)
            elif kind == "acks":
                self._fleet.acks(session, msg.seq, msg.acks.acks)
            elif kind == "control_status":
                task = asyncio.create_task(
                    self._fleet.control_status(session, msg.seq, msg.control_status)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif kind == "hello":
                session.send(FleetService.error(msg.seq, "protocol", "Hello was already received"))
            else:
                session.send(FleetService.error(msg.seq, "malformed", "message has no body"))
        except Exception:  # one bad message must not end the stream
            log.exception("handling message %d from %s", msg.seq, session.node_id)
            session.send(FleetService.error(msg.seq, "internal", INTERNAL_ERROR))


def add_to_server(servicer: AgentLinkServicer, server: grpc.aio.Server) -> None:
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.connect,
        request_deserializer=_deserialize,
        response_serializer=pb.ServerMessage.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Connect": handler}),)
    )
