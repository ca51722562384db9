"""The fleet: agents connect, windows come in, decisions and commands go out.

Everything here runs on the event loop and never blocks: policies are pure and
fast, persistence is enqueued to the batch writer, registration runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from agft.v1 import agent_pb2 as pb
from server.auth.store import TokenInfo, revoked_among
from server.control.policy import ClockArms
from server.energy.estimator import ESTIMATOR_STATE
from server.fleet import validation
from server.fleet.decider import (
    command_now,
    decide_window,
    record_window,
    recovered_command_row,
)
from server.fleet.inventory import inventory_of
from server.fleet.ownership import NodeOwnership, NodeRefusedError
from server.fleet.runtime import AgentSession, InstanceRuntime
from server.fleet.stats import CommandLatency, DecideTimes, InstanceTotals
from server.fleet.steering import Steering
from server.fleet.validation import InvalidMessageError
from server.slo.spec import SloSpec
from server.store.instance_modes import modes_of
from server.store.policy_states import load_states
from server.store.registration import (
    mark_disconnected,
    register_node,
    set_monitor_only,
    touch_seen,
)
from server.store.rows import PolicyStateRow, StoredMark
from server.store.writer import BatchWriter

log = logging.getLogger(__name__)

# Acks a window may carry again: far more than one window's commands ever are.
MAX_ACKS_PER_WINDOW = 1024

# What an agent is told when the server itself failed: nothing internal leaks out.
INTERNAL_ERROR = "the server failed to handle this message; the details are in its log"


def _send_commands(session: AgentSession, commands: list[pb.ServerMessage]) -> None:
    """One message for the commands of one Telemetry: a node's 8 instances cost the
    stream 1 message (and 1 Acks back) a window, not 8 each way."""
    if len(commands) == 1:
        session.send(commands[0])
    elif commands:
        batch = pb.Commands()
        for message in commands:
            kind = message.WhichOneof("body")
            if kind == "set_clocks":
                batch.commands.add(set_clocks=message.set_clocks)
            elif kind == "reset_clocks":
                batch.commands.add(reset_clocks=message.reset_clocks)
        session.send(pb.ServerMessage(commands=batch))


class FleetService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        writer: BatchWriter,
        default_spec: SloSpec,
        *,
        window_s: float,
        lease_s: float,
        server_version: str,
        state_save_every: int = 30,
        state_save_interval_s: float = 5.0,
        replica_id: str = "local",
        node_lease_s: float = 5.0,
    ) -> None:
        self.state_save_every = state_save_every
        self.state_save_interval_s = state_save_interval_s
        self._saver: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.ownership = NodeOwnership(factory, replica_id, node_lease_s)
        self._factory = factory
        self._writer = writer
        self.steering = Steering(factory, default_spec)
        self.window_s = window_s
        self.lease_s = lease_s
        self.server_version = server_version
        self.sessions: dict[str, AgentSession] = {}
        # instance id -> its live session and runtime, for the API's changes
        self.live: dict[int, tuple[AgentSession, InstanceRuntime]] = {}
        self.totals: dict[int, InstanceTotals] = {}  # for /metrics, across reconnects
        self.decide_times = DecideTimes()
        self.command_latency = CommandLatency()
        # node id -> (agent boot id, newest window_seq taken in by this process): a
        # window sent again after a reconnect is recognised and not taken twice.
        self.windows_taken: dict[str, tuple[int, int]] = {}
        self.windows_skipped = 0  # sent again, already taken
        self._node_ids: dict[int, str] = {}  # node pk -> node id, for the stored marks
        writer.on_stored = self._windows_stored

    # ---- background work -------------------------------------------------------------
    async def load_control(self) -> None:
        """Read the SLO policies before the first agent connects."""
        await self.steering.reload()

    def start(self) -> None:
        self._saver = asyncio.create_task(self._save_states_periodically(), name="agft-states")
        self._renewer = asyncio.create_task(self._renew_node_leases(), name="agft-node-leases")

    async def stop(self) -> None:
        for task in (self._saver, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._saver = self._renewer = None
        self.save_all_states()

    async def _renew_node_leases(self) -> None:
        """Renew every live node's lease; stop deciding for the nodes this replica lost.

        Never dies quietly: a failed renewal is logged and retried; once none has
        succeeded for a whole lease, another replica may hold our nodes, so every stream
        is closed (its agent reconnects, to whichever replica can take it)."""
        while True:
            await asyncio.sleep(self.ownership.renew_every_s)
            live = list(self.sessions)
            try:
                held = await self.ownership.renew(live)
            except Exception as err:
                log.warning("renewing %d node leases failed: %s", len(live), err)
                if self.ownership.renewal_overdue():
                    log.error("no node lease renewed for a whole lease: closing every stream")
                    for session in list(self.sessions.values()):
                        session.close()
                continue
            for node_id in live:
                lost = self.sessions.get(node_id)
                if node_id not in held and lost is not None:
                    log.error("node %s: its lease was taken by another replica; closing", node_id)
                    lost.close()

    async def _save_states_periodically(self) -> None:
        # A crash (SIGKILL, power loss) must cost at most one interval of learning, not
        # everything since the last 30 decisions of each instance.
        while True:
            await asyncio.sleep(self.state_save_interval_s)
            try:
                self.save_all_states()
                await self.close_revoked_sessions()
                await self.touch_last_seen()
                # Another replica (or a hand edit) may have changed a policy or a mode.
                if await self.steering.reload():
                    await self.apply_control()
                await self.reload_modes()
            except Exception:  # never die quietly: log and try again next interval
                log.exception("periodic fleet upkeep failed")

    async def writer_room(self) -> None:
        """Wait while the batch writer holds its most rows (backpressure)."""
        await self._writer.wait_for_room()

    async def close_revoked_sessions(self) -> int:
        """End the streams whose node token was revoked since they connected."""
        by_token = {s.token_id: s for s in self.sessions.values() if s.token_id}
        revoked = await asyncio.to_thread(revoked_among, self._factory, list(by_token))
        for token_id in revoked:
            session = by_token[token_id]
            log.warning("node %s: its token %s was revoked; closing", session.node_id, token_id)
            session.close()
        return len(revoked)

    async def touch_last_seen(self) -> None:
        """Record when each live instance and node last sent a window (not per window)."""
        seen: dict[int, datetime] = {}
        nodes: dict[int, datetime] = {}
        for session in list(self.sessions.values()):
            for runtime in session.instances.values():
                at = runtime.last_window_at
                if at is None or at == runtime.seen_saved:
                    continue
                seen[runtime.instance_id] = runtime.seen_saved = at
                node_at = nodes.get(session.node_pk)
                nodes[session.node_pk] = max(node_at, at) if node_at else at
        if seen:
            await asyncio.to_thread(touch_seen, self._factory, nodes, seen)

    def save_all_states(self) -> int:
        """Enqueue the state of every instance that decided since its last save (one batch)."""
        saved = 0
        for session in list(self.sessions.values()):
            for runtime in session.instances.values():
                if runtime.decisions > runtime.decisions_saved:
                    self._save_state(runtime)
                    saved += 1
        return saved

    # ---- connection lifecycle ------------------------------------------------------
    @property
    def factory(self) -> sessionmaker[Session]:
        return self._factory

    def _check_owner(self, hello: pb.Hello, token: TokenInfo, peer: str) -> None:
        if token.node_id != hello.node_id:
            raise NodeRefusedError(
                "PERMISSION_DENIED",
                f"this token belongs to node {token.node_id!r}, not {hello.node_id!r}",
            )
        current = self.sessions.get(hello.node_id)
        # A live stream keeps its node: a second agent with the same id (a copied config,
        # a leaked token) is refused instead of the two kicking each other off. A stream
        # gone quiet for a few windows is presumed dead and gives way.
        if current is not None and current.silent_for() < self.takeover_after_s:
            raise NodeRefusedError(
                "ALREADY_EXISTS",
                f"node {hello.node_id!r} is already connected from {current.peer or 'elsewhere'}"
                f" (last message {current.silent_for():.1f} s ago); a second agent with the"
                " same node id is refused",
            )

    @property
    def takeover_after_s(self) -> float:
        return max(5.0, 3 * self.window_s)

    async def hello(
        self, hello: pb.Hello, token: TokenInfo | None = None, peer: str = ""
    ) -> AgentSession:
        validation.check_hello(hello)
        if token is not None:
            self._check_owner(hello, token, peer)
        await self.ownership.take(hello.node_id)
        registered = await asyncio.to_thread(register_node, self._factory, inventory_of(hello))
        gpus = {g.index: g for g in hello.gpus}
        instances: dict[str, InstanceRuntime] = {}
        for inst in hello.instances:
            group = [gpus[i] for i in inst.gpu_indices]
            arms = ClockArms.intersect(
                [list(g.supported_sm_clocks_mhz) for g in group],
                default_mhz=min(g.default_sm_clock_mhz for g in group),
            )
            row = registered.instances[inst.name]
            spec = self.steering.spec_for(row.id, row.labels)
            instances[inst.name] = InstanceRuntime(
                instance_id=row.id,
                name=inst.name,
                gpu_indices=tuple(inst.gpu_indices),
                arms=arms,
                policy=self.steering.controller(spec)(),
                monitor_only={
                    g.index: g.monitor_only_reason for g in group if g.monitor_only_reason
                },
                labels=row.labels,
                mode=row.mode,
                pinned_mhz=row.pinned_sm_clock_mhz,
                spec=spec,
                calibrate=True,  # the saving it reports rests on calibration windows
                front_door=inst.front_door.counts if inst.HasField("front_door") else 0,
            )
        await self._restore_states(list(instances.values()), estimators=True)
        session = AgentSession(hello.node_id, registered.node_pk, instances)
        session.token_id = token.token_id if token is not None else ""
        session.peer = peer
        previous = self.sessions.get(hello.node_id)
        if previous is not None:
            # The old stream went quiet (checked above): the reconnected agent wins.
            previous.close()
        self.sessions[hello.node_id] = session
        self._node_ids[registered.node_pk] = hello.node_id
        for runtime in instances.values():
            self.live[runtime.instance_id] = (session, runtime)
        session.boot_id = hello.boot_id
        taken = self.windows_taken.get(hello.node_id)
        # Taken by this process but maybe not committed yet (the old stream's windows
        # still in the writer's queue): those are not taken again, and Stored follows.
        through = registered.windows_stored_seq
        if taken is not None and taken[0] == hello.boot_id:
            through = max(through, taken[1])
        self.windows_taken[hello.node_id] = (hello.boot_id, through)
        session.send(
            pb.ServerMessage(
                welcome=pb.Welcome(
                    node_id=hello.node_id,
                    window_s=self.window_s,
                    lease_s=self.lease_s,
                    server_version=self.server_version,
                    stored_through_seq=registered.windows_stored_seq,
                )
            )
        )
        log.info("agent %s connected with %d instances", hello.node_id, len(instances))
        return session

    async def disconnect(self, session: AgentSession) -> None:
        for runtime in session.instances.values():
            self._save_state(runtime)
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
            # A node gone from this replica needs no Stored; a fleet's churn must not
            # leave one entry per node ever seen.
            self._node_ids.pop(session.node_pk, None)
            for runtime in session.instances.values():
                if self.live.get(runtime.instance_id, (None, None))[0] is session:
                    del self.live[runtime.instance_id]
            await asyncio.to_thread(mark_disconnected, self._factory, session.node_pk)
            await self.ownership.give_back([session.node_id])
        log.info("agent %s disconnected", session.node_id)

    async def _restore_states(
        self, runtimes: list[InstanceRuntime], *, estimators: bool = False
    ) -> None:
        """Give each runtime its controller's saved learning (and, at Hello, its energy
        model), from one database session."""
        wanted: dict[str, list[int]] = {}
        for runtime in runtimes:
            wanted.setdefault(runtime.policy.name, []).append(runtime.instance_id)
        if estimators:
            wanted[ESTIMATOR_STATE] = [r.instance_id for r in runtimes]
        saved = await asyncio.to_thread(load_states, self._factory, wanted)
        for runtime in runtimes:
            name = runtime.policy.name
            state = saved.get((name, runtime.instance_id))
            if state is not None:
                try:
                    runtime.policy.load_state(state)
                    runtime.policy.resume()
                except ValueError as err:
                    # A state we cannot trust is dropped, not half-applied: learn afresh.
                    log.error(
                        "instance %s: saved %s state rejected (%s); starting fresh",
                        runtime.name,
                        name,
                        err,
                    )
                    runtime.policy = self.steering.controller(self._spec(runtime))()
            model = saved.get((ESTIMATOR_STATE, runtime.instance_id)) if estimators else None
            if model is not None:
                try:
                    runtime.estimator.load_state(model)
                except ValueError as err:
                    log.error("instance %s: energy model not restored (%s)", runtime.name, err)

    def _spec(self, runtime: InstanceRuntime) -> SloSpec:
        return runtime.spec or self.steering.default

    # ---- the admin's changes ---------------------------------------------------------
    async def apply_control(self) -> int:
        """Retarget every live controller whose SLO policy or controller changed.

        Called right after the API commits a change, so it reaches the controller before
        the next window. Learning survives a new objective: a controller of the same kind
        takes over its predecessor's state (its models of power and latency do not depend
        on the objective); a different controller resumes its own saved state, if any.
        """
        switched: list[InstanceRuntime] = []
        retargeted = 0
        for _session, runtime in list(self.live.values()):
            spec = self.steering.spec_for(runtime.instance_id, runtime.labels)
            if runtime.spec is not None and spec.fingerprint == runtime.spec.fingerprint:
                runtime.spec = spec  # same policy; a newer revision that changed nothing
                continue
            fresh = self.steering.controller(spec)()
            old = runtime.policy
            if fresh.name == old.name:
                try:
                    fresh.load_state(old.state())
                except ValueError as err:
                    log.error("instance %s: state not carried over (%s)", runtime.name, err)
            else:
                self._save_state(runtime)
                switched.append(runtime)
            runtime.policy = fresh
            runtime.spec = spec
            retargeted += 1
        if switched:
            await self._restore_states(switched)
        return retargeted

    async def reload_modes(self) -> int:
        """Apply the modes stored for live instances that differ from what they run under:
        an admin's change made through another replica reaches this one within an upkeep
        interval. Returns how many changed."""
        stored = await asyncio.to_thread(modes_of, self._factory, list(self.live))
        changed = 0
        for instance_id, (mode, pinned_mhz) in stored.items():
            live = self.live.get(instance_id)
            if live is None or (live[1].mode, live[1].pinned_mhz) == (mode, pinned_mhz):
                continue
            log.info("instance %s: mode %s set elsewhere; applying", live[1].name, mode)
            self.set_mode(instance_id, mode, pinned_mhz)
            changed += 1
        return changed

    def set_mode(self, instance_id: int, mode: str, pinned_mhz: int | None) -> bool:
        """Apply a stored mode change to the live instance at once; False if not connected."""
        live = self.live.get(instance_id)
        if live is None:
            return False
        session, runtime = live
        runtime.mode, runtime.pinned_mhz = mode, pinned_mhz
        clock = pinned_mhz if mode == "pinned" else None
        if mode in ("observe", "off", "pinned"):
            # Released or pinned now, not at the next window.
            reason = f"mode {mode} set by an admin" + (f": {clock} MHz" if clock else "")
            command, row = command_now(
                runtime, clock, reason, now=datetime.now(UTC), lease_s=self.lease_s
            )
            if command is not None and row is not None:
                self._writer.add_command(row)
                session.remember_command(row.id, runtime.name)
                session.send(command)
        return True

    # ---- telemetry -> decisions -> commands ------------------------------------------
    def telemetry(
        self,
        session: AgentSession,
        seq: int,
        telemetry: pb.Telemetry,
        read_at: float | None = None,
    ) -> None:
        """read_at: perf_counter when the message came off the stream (default: now)."""
        now = datetime.now(UTC)
        read_at = time.perf_counter() if read_at is None else read_at
        window_seq = telemetry.window_seq if session.boot_id else 0
        if window_seq:
            boot, taken = self.windows_taken.get(session.node_id, (session.boot_id, 0))
            if boot == session.boot_id and window_seq <= taken:
                # Sent again after a reconnect and already taken: deciding it again
                # would apply its decision twice, storing it again would count it twice.
                self.windows_skipped += len(telemetry.windows)
                return
        commands: list[pb.ServerMessage] = []
        for window in telemetry.windows:
            runtime = session.instances.get(window.instance)
            try:
                if runtime is None:
                    raise InvalidMessageError(
                        "unknown_instance",
                        f"instance {window.instance!r} was not announced in Hello; "
                        f"known: {sorted(session.instances)}",
                    )
                started = time.perf_counter()
                if telemetry.replayed:
                    outcome = record_window(runtime, window, now=now)
                else:
                    outcome = decide_window(runtime, window, now=now, lease_s=self.lease_s)
            except InvalidMessageError as err:
                session.send(self.error(seq, err.code, err.message))
                continue
            except Exception:
                # A bug must cost this one window, not the others of the message; the
                # agent learns only that it failed (the details are ours, in the log).
                log.exception("deciding window of %s/%s", session.node_id, window.instance)
                session.send(self.error(seq, "internal", INTERNAL_ERROR))
                continue
            if outcome.command is not None and outcome.command_row is not None:
                self._writer.add_command(outcome.command_row)
                session.remember_command(outcome.command_row.id, runtime.name)
                if len(session.born) < session.pending_limit:
                    session.born[outcome.command_row.id] = read_at
                commands.append(outcome.command)
            self._writer.add_decision(outcome.decision_row)
            self.decide_times.observe(time.perf_counter() - started)
            totals = self.totals.setdefault(runtime.instance_id, InstanceTotals())
            totals.observe(outcome.observation, self._spec(runtime).targets)
            totals.add_saving(outcome.observation.energy_j, outcome.default_energy_j)
            totals.decisions += 1
            if runtime.decisions % self.state_save_every == 0:
                self._save_state(runtime)
        _send_commands(session, commands)
        if telemetry.replayed and telemetry.acks:
            self._recover_acks(session, seq, telemetry.acks, now)
        if window_seq:
            # Rejected windows count as taken too: sending them again cannot help.
            self.windows_taken[session.node_id] = (session.boot_id, window_seq)
            self._writer.add_stored_mark(StoredMark(session.node_pk, session.boot_id, window_seq))

    def _recover_acks(
        self, session: AgentSession, seq: int, acks: Sequence[pb.CommandAck], now: datetime
    ) -> None:
        """A replayed window's acks: the replica they were sent to may have died before it
        wrote them (and the commands they answer). Each is stored if missing: its command
        row made from what the agent applied, or its ack added where none is."""
        if not self._acks_within_bound(session, seq, "telemetry.acks", len(acks)):
            return
        for ack in acks:
            runtime = session.instances.get(ack.instance)
            try:
                if runtime is None:
                    raise InvalidMessageError(
                        "unknown_instance", f"ack for instance {ack.instance!r}, not in Hello"
                    )
                row = validation.ack_row(ack)
            except InvalidMessageError as err:
                session.send(self.error(seq, err.code, err.message))
                continue
            self._writer.add_recovered_ack(recovered_command_row(row, ack, runtime, now))

    def _windows_stored(self, marks: list[StoredMark]) -> None:
        """The writer committed windows: tell each agent, so it can drop them."""
        newest: dict[int, tuple[int, int]] = {}
        for mark in marks:
            pk, boot, seq = mark.node_pk, mark.agent_boot_id, mark.windows_stored_seq
            if seq > newest.get(pk, (boot, 0))[1]:
                newest[pk] = (boot, seq)
        for pk, (boot, seq) in newest.items():
            session = self.sessions.get(self._node_ids.get(pk, ""))
            if session is not None and session.boot_id == boot:
                session.send(pb.ServerMessage(stored=pb.Stored(boot_id=boot, through_seq=seq)))

    def _save_state(self, runtime: InstanceRuntime) -> None:
        if runtime.decisions == 0:
            return
        runtime.decisions_saved = runtime.decisions
        now = datetime.now(UTC)
        # The controller's learning, and the energy model, which is the instance's
        # whatever controller runs it.
        for key, state in (
            (runtime.policy.name, runtime.policy.state()),
            (ESTIMATOR_STATE, runtime.estimator.state()),
        ):
            self._writer.add_policy_state(
                PolicyStateRow(runtime.instance_id, key, state, runtime.decisions, now)
            )

    # ---- controllability ------------------------------------------------------------
    async def control_status(
        self, session: AgentSession, seq: int, status: pb.ControlStatus
    ) -> None:
        """The agent says GPUs became monitor-only (or controllable again) after Hello."""
        changed: dict[int, str | None] = {}
        known = {i for r in session.instances.values() for i in r.gpu_indices}
        for gpu in status.gpus:
            if gpu.index not in known:
                session.send(
                    self.error(seq, "unknown_gpu", f"gpu index {gpu.index} is not in Hello")
                )
                return
            try:
                reason = validation.text("monitor_only_reason", gpu.monitor_only_reason, 1024)
            except InvalidMessageError as err:
                session.send(self.error(seq, err.code, err.message))
                return
            for runtime in session.instances.values():
                if gpu.index not in runtime.gpu_indices:
                    continue
                if reason:
                    runtime.monitor_only[gpu.index] = reason
                else:
                    runtime.monitor_only.pop(gpu.index, None)
                    # Nothing we sent before holds any more: start from a clean slate.
                    runtime.told_anything = False
                changed[runtime.instance_id] = runtime.monitor_only_reason or None
        for runtime in session.instances.values():
            if runtime.instance_id in changed:
                log.warning(
                    "node %s instance %s: %s",
                    session.node_id,
                    runtime.name,
                    f"monitor-only ({runtime.monitor_only_reason})"
                    if runtime.monitor_only
                    else "controllable again",
                )
        if changed:
            await asyncio.to_thread(set_monitor_only, self._factory, changed)

    # ---- acks --------------------------------------------------------------------
    def acks(self, session: AgentSession, seq: int, acks: Sequence[pb.CommandAck]) -> None:
        """An Acks message: the acks of one Commands, each taken as if sent alone."""
        if not self._acks_within_bound(session, seq, "acks", len(acks)):
            return
        for ack in acks:
            self.ack(session, seq, ack)

    def _acks_within_bound(self, session: AgentSession, seq: int, field: str, count: int) -> bool:
        """Whether a message's acks are within MAX_ACKS_PER_WINDOW; if not, it is refused
        whole with an error naming the field."""
        if count <= MAX_ACKS_PER_WINDOW:
            return True
        message = f"{field}: {count} acks, more than {MAX_ACKS_PER_WINDOW}"
        session.send(self.error(seq, "invalid_value", message))
        return False

    def ack(self, session: AgentSession, seq: int, ack: pb.CommandAck) -> None:
        try:
            row = validation.ack_row(ack)
        except InvalidMessageError as err:
            session.send(self.error(seq, err.code, err.message))
            return
        if session.pending.pop(ack.command_id, None) is None:
            session.send(
                self.error(seq, "unknown_command", f"no command {ack.command_id!r} awaits an ack")
            )
            return
        if not row.ack_ok:
            log.warning("agent %s failed command %s: %s", session.node_id, row.id, row.ack_error)
        self._writer.add_ack(row.at(datetime.now(UTC)))

    @staticmethod
    def error(seq: int, code: str, message: str) -> pb.ServerMessage:
        return pb.ServerMessage(error=pb.Error(seq=seq, code=code, message=message))
