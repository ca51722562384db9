"""The fleet: agents connect, windows come in, decisions and commands go out.

Everything here runs on the event loop and never blocks: policies are pure and
fast, persistence is enqueued to the batch writer, registration runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from agft.v1 import agent_pb2 as pb
from server.control.observation import HistogramDelta, Observation
from server.control.policy import ClockArms, ClockDecision, Policy
from server.fleet import validation
from server.fleet.runtime import AgentSession, InstanceRuntime
from server.fleet.validation import InvalidMessageError
from server.store.registration import mark_disconnected, register_hello
from server.store.writer import BatchWriter

log = logging.getLogger(__name__)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _q(h: HistogramDelta | None, q: float) -> float | None:
    return h.quantile(q) if h is not None else None


class FleetService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        writer: BatchWriter,
        policy_factory: Callable[[], Policy],
        *,
        window_s: float,
        lease_s: float,
        server_version: str,
    ) -> None:
        self._factory = factory
        self._writer = writer
        self._policy_factory = policy_factory
        self.window_s = window_s
        self.lease_s = lease_s
        self.server_version = server_version
        self.sessions: dict[str, AgentSession] = {}

    # ---- connection lifecycle ------------------------------------------------------
    async def hello(self, hello: pb.Hello) -> AgentSession:
        validation.check_hello(hello)
        registered = await asyncio.to_thread(register_hello, self._factory, hello)
        gpus = {g.index: g for g in hello.gpus}
        instances: dict[str, InstanceRuntime] = {}
        for inst in hello.instances:
            group = [gpus[i] for i in inst.gpu_indices]
            arms = ClockArms.intersect(
                [list(g.supported_sm_clocks_mhz) for g in group],
                default_mhz=min(g.default_sm_clock_mhz for g in group),
            )
            instances[inst.name] = InstanceRuntime(
                instance_id=registered.instance_ids[inst.name],
                name=inst.name,
                gpu_indices=tuple(inst.gpu_indices),
                arms=arms,
                policy=self._policy_factory(),
            )
        session = AgentSession(hello.node_id, registered.node_pk, instances)
        previous = self.sessions.get(hello.node_id)
        if previous is not None:
            # The same node reconnected before its old stream ended: the new one wins.
            previous.close()
        self.sessions[hello.node_id] = session
        session.send(
            pb.ServerMessage(
                welcome=pb.Welcome(
                    node_id=hello.node_id,
                    window_s=self.window_s,
                    lease_s=self.lease_s,
                    server_version=self.server_version,
                )
            )
        )
        log.info("agent %s connected with %d instances", hello.node_id, len(instances))
        return session

    async def disconnect(self, session: AgentSession) -> None:
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
            await asyncio.to_thread(mark_disconnected, self._factory, session.node_pk)
        log.info("agent %s disconnected", session.node_id)

    # ---- telemetry -> decisions -> commands ------------------------------------------
    def telemetry(self, session: AgentSession, seq: int, telemetry: pb.Telemetry) -> None:
        now = datetime.now(UTC)
        for window in telemetry.windows:
            runtime = session.instances.get(window.instance)
            try:
                if runtime is None:
                    raise InvalidMessageError(
                        "unknown_instance",
                        f"instance {window.instance!r} was not announced in Hello; "
                        f"known: {sorted(session.instances)}",
                    )
                obs = validation.observation(window, runtime.gpu_indices)
            except InvalidMessageError as err:
                session.send(self.error(seq, err.code, err.message))
                continue
            self._decide(session, runtime, obs, now)

    def _decide(
        self, session: AgentSession, runtime: InstanceRuntime, obs: Observation, now: datetime
    ) -> None:
        decision = runtime.policy.decide(obs, runtime.arms)
        if (
            decision.sm_clock_mhz is not None
            and decision.sm_clock_mhz not in runtime.arms.supported_mhz
        ):
            # A policy bug must never reach a GPU.
            log.error("policy %s chose unsupported clock %s", runtime.policy.name, decision)
            decision = ClockDecision(
                None, "policy chose an unsupported clock; default", decision.features
            )
        command_id = self._command_for(session, runtime, decision, now)
        runtime.decisions += 1
        serving = obs.serving
        self._writer.add_decision(
            {
                "instance_id": runtime.instance_id,
                "decided_at": now,
                "window_start": _ts(obs.window_start_s),
                "window_end": _ts(obs.window_end_s),
                "policy": runtime.policy.name,
                "features": decision.features,
                "clock_in_force_mhz": obs.clock_in_force_mhz,
                "clock_chosen_mhz": decision.sm_clock_mhz,
                "reason": decision.reason[:255],
                "command_id": command_id,
                "reward": decision.reward,
                "energy_j": obs.energy_j,
                "prompt_tokens": serving.prompt_tokens if serving else None,
                "generation_tokens": serving.generation_tokens if serving else None,
                "ttft_p50_s": _q(serving.ttft_s, 0.5) if serving else None,
                "ttft_p90_s": _q(serving.ttft_s, 0.9) if serving else None,
                "itl_p50_s": _q(serving.inter_token_latency_s, 0.5) if serving else None,
                "itl_p90_s": _q(serving.inter_token_latency_s, 0.9) if serving else None,
            }
        )

    def _command_for(
        self,
        session: AgentSession,
        runtime: InstanceRuntime,
        decision: ClockDecision,
        now: datetime,
    ) -> str | None:
        """Send a command when the clock changes, and renew every lease each window."""
        clock = decision.sm_clock_mhz
        if clock is None and runtime.told_anything and runtime.last_sent_clock_mhz is None:
            return None  # already at default; a reset needs no renewal
        command_id = uuid.uuid4().hex
        row = {
            "id": command_id,
            "instance_id": runtime.instance_id,
            "reason": decision.reason[:255],
            "issued_at": now,
        }
        if clock is None:
            msg = pb.ServerMessage(
                reset_clocks=pb.ResetClocks(
                    command_id=command_id, instance=runtime.name, reason=decision.reason
                )
            )
            row.update(kind="reset")
        else:
            expires = now.timestamp() + self.lease_s
            msg = pb.ServerMessage(
                set_clocks=pb.SetClocks(
                    command_id=command_id,
                    instance=runtime.name,
                    min_sm_clock_mhz=clock,
                    max_sm_clock_mhz=clock,
                    lease_s=self.lease_s,
                    expires_at_s=expires,
                    reason=decision.reason,
                )
            )
            row.update(
                kind="set",
                min_sm_clock_mhz=clock,
                max_sm_clock_mhz=clock,
                lease_s=self.lease_s,
                expires_at=_ts(expires),
            )
        self._writer.add_command(row)
        session.remember_command(command_id, runtime.name)
        session.send(msg)
        runtime.last_sent_clock_mhz = clock
        runtime.told_anything = True
        return command_id

    # ---- acks --------------------------------------------------------------------
    def ack(self, session: AgentSession, seq: int, ack: pb.CommandAck) -> None:
        if session.pending.pop(ack.command_id, None) is None:
            session.send(
                self.error(seq, "unknown_command", f"no command {ack.command_id!r} awaits an ack")
            )
            return
        applied = [
            {
                "gpu_index": a.gpu_index,
                "sm_clock_mhz": a.sm_clock_mhz if a.HasField("sm_clock_mhz") else None,
                "locked_min_sm_clock_mhz": a.locked_min_sm_clock_mhz
                if a.HasField("locked_min_sm_clock_mhz")
                else None,
                "locked_max_sm_clock_mhz": a.locked_max_sm_clock_mhz
                if a.HasField("locked_max_sm_clock_mhz")
                else None,
            }
            for a in ack.applied
        ]
        if not ack.ok:
            log.warning(
                "agent %s failed command %s: %s", session.node_id, ack.command_id, ack.error
            )
        self._writer.add_ack(
            {
                "id": ack.command_id,
                "acked_at": datetime.now(UTC),
                "ack_ok": ack.ok,
                "ack_error": ack.error[:1024] or None,
                "applied": applied,
            }
        )

    @staticmethod
    def error(seq: int, code: str, message: str) -> pb.ServerMessage:
        return pb.ServerMessage(error=pb.Error(seq=seq, code=code, message=message))
