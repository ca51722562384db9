"""A vLLM-V1-style serving engine: continuous batching with chunked prefill, a paged KV cache
with preemption, per-request timing, and the engine's Prometheus metrics.

Scheduling per step (vLLM V1 ``Scheduler.schedule``, simplified where noted):

1. running requests first: every decoding sequence gets one token; a sequence that crosses a
   KV block boundary needs a new block, and when none is free the most recently admitted
   running request is preempted (recompute: its blocks are freed and it goes back to the front
   of the queue) until the allocation fits;
2. then partially prefilled requests continue with a chunk of at most the remaining budget;
3. then waiting requests are admitted in FCFS order while there is token budget
   (``max_num_batched_tokens``), sequence room (``max_num_seqs``) and KV blocks; a prompt
   longer than the budget is chunked across steps.

Simplification: decodes are scheduled before partial prefills whatever their admission order,
so a long prefill chunk never starves a decode of its token (vLLM V1 walks the running list in
admission order; with the default budgets the difference only shows when the budget is full).

Speed: all decoding sequences advance by one token per step, so instead of touching each of
them per step the engine keeps a global decode counter and, per sequence, the counter value at
which it joined. Finishes and KV block-boundary crossings are pre-computed into buckets keyed
by counter value; a step costs O(1) plus O(events), not O(batch).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from sim.gpu import GpuGroup
from sim.kvcache import KvCache
from sim.metrics import EngineMetrics
from sim.physics import StepModel
from sim.workload import ArrivalStream

__all__ = ["Engine", "EngineConfig", "RequestRecord"]

_WAITING, _PREFILL, _DECODE, _DONE = 0, 1, 2, 3
# Event times kept for a router's view a hop behind: far more than happen within any hop
# delay (a few ms).
_RECENT_EVENTS = 4096


class EventCount:
    """A count of events with the times of the latest ones, to count them as of a moment
    shortly before now."""

    __slots__ = ("recent", "total")

    def __init__(self) -> None:
        self.total = 0
        self.recent: deque[float] = deque(maxlen=_RECENT_EVENTS)

    def add(self, t: float) -> None:
        self.total += 1
        self.recent.append(t)

    def through(self, t: float) -> int:
        """Events at or before t (t within the span of the recent times kept)."""
        later = 0
        for at in reversed(self.recent):
            if at <= t:
                break
            later += 1
        return self.total - later


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """vLLM engine arguments the simulation honours. None means vLLM's default for the GPU."""

    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int | None = (
        None  # override the computed KV capacity (e.g. to force preemption)
    )
    prefix_cache_hit_fraction: float = 0.0  # share of each new prompt found in the prefix cache
    completed_history: int = 100_000  # completed-request records kept (realtime runs forever)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, in the node's clock (seconds)."""

    request_id: int
    arrival_s: float
    first_scheduled_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    preemptions: int
    finished_reason: str

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for one-token outputs)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


class _Req:
    __slots__ = (
        "arrival",
        "blocks",
        "c_join",
        "cached",
        "computed",
        "epoch",
        "first_sched",
        "first_token",
        "gen_join",
        "generated",
        "kv_join",
        "last_token",
        "output",
        "preemptions",
        "prompt",
        "rid",
        "state",
        "target",
    )

    def __init__(self, rid: int, arrival: float, prompt: int, output: int) -> None:
        self.rid = rid
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.target = prompt  # tokens to prefill (prompt + generated after a preemption)
        self.computed = 0
        self.generated = 0
        self.cached = 0
        self.blocks = 0
        self.state = _WAITING
        self.epoch = 0  # bumped on preemption/finish; invalidates bucketed events
        self.first_sched = -1.0
        self.first_token = -1.0
        self.last_token = -1.0
        self.c_join = 0
        self.kv_join = 0
        self.gen_join = 0
        self.preemptions = 0


class Engine:
    """One serving instance's engine, driven by ``advance_to``. Not thread-safe on its own."""

    def __init__(
        self,
        physics: StepModel,
        group: GpuGroup,
        stream: ArrivalStream,
        t0: float,
        kv: KvCache,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefix_cache_hit_fraction: float = 0.0,
        completed_history: int = 100_000,
    ) -> None:
        self.physics = physics
        self.group = group
        self.stream = stream
        self.t0 = t0
        self.now = t0
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefix_hit = prefix_cache_hit_fraction
        self.max_model_len = physics.model.max_model_len
        self.metrics = EngineMetrics(max_model_len=self.max_model_len)
        self.completed: deque[RequestRecord] = deque(maxlen=completed_history)
        self._next_rid = 0
        self.waiting: deque[_Req] = deque()
        self.running: dict[int, _Req] = {}
        self.prefilling: list[_Req] = []
        self.n_dec = 0
        self.kv_dec = 0  # sum over decoding sequences of their KV length at counter c
        self.c = 0  # decode steps taken
        self._finish_at: dict[int, list[tuple[_Req, int]]] = {}
        self._block_at: dict[int, list[tuple[_Req, int]]] = {}
        # The step in flight: end time, start time, decodes, prefill chunks, tokens.
        self._inflight = False
        self._t_start = 0.0
        self._t_end = 0.0
        self._step_dec = 0
        self._step_chunks: list[tuple[_Req, int]] = []
        self._step_tokens = 0
        self.steps = 0
        self.busy_s = 0.0
        self.clock_time_integral = 0.0  # sum of effective clock x step time (MHz s)
        self.capped_s = 0.0  # step time spent power-capped
        # First tokens and finished responses so far, with their latest times: what a front
        # door (the API server, a router a hop upstream) counts requests by.
        self.first_tokens = EventCount()
        self.responses_done = EventCount()

    # ---- driving ------------------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        """Simulate up to time t: finish steps that end by t, start the next ones, skip idle."""
        stream = self.stream
        t0 = self.t0
        while True:
            if self._inflight:
                if self._t_end > t:
                    return
                self._finish_step()
                continue
            now = self.now
            while stream.next_t + t0 <= now:
                self._arrive(*stream.pop())
            if (self.waiting or self.running) and self._begin_step(now):
                continue
            nxt = stream.next_t + t0
            if nxt > t:
                if t > now:
                    self.group.idle_until(t)
                    self.now = t
                return
            self.group.idle_until(nxt)
            self.now = nxt

    def _arrive(self, t_rel: float, prompt: int, output: int) -> None:
        # vLLM rejects prompts over max_model_len; a trace replay truncates them instead.
        prompt = min(prompt, self.max_model_len - 1)
        output = max(1, min(output, self.max_model_len - prompt))
        r = _Req(self._next_rid, t_rel + self.t0, prompt, output)
        self._next_rid += 1
        if self.kv.blocks_for(prompt + output) > self.kv.num_blocks:
            # Can never fit: vLLM fails such a request at admission.
            self.metrics.success_abort += 1
            return
        self.waiting.append(r)

    # ---- scheduling ---------------------------------------------------------------------
    def _preempt_last(self, t: float) -> _Req:
        victim = self.running[next(reversed(self.running))]
        self._preempt(victim, t)
        return victim

    def _preempt(self, r: _Req, t: float) -> None:
        if r.state == _DECODE:
            steps = self.c - r.c_join
            self.n_dec -= 1
            self.kv_dec -= r.kv_join + steps
            r.generated = r.gen_join + steps
            r.last_token = t
        else:
            self.prefilling.remove(r)
        self.kv.release(r.blocks)
        r.blocks = 0
        r.computed = 0
        r.target = r.prompt + r.generated
        r.epoch += 1
        r.state = _WAITING
        r.preemptions += 1
        self.metrics.num_preemptions += 1
        del self.running[r.rid]
        self.waiting.appendleft(r)

    def _begin_step(self, t: float) -> bool:
        kv = self.kv
        bs = kv.block_size
        budget = self.max_num_batched_tokens
        # 1. decodes: new blocks for sequences crossing a block boundary.
        due = self._block_at.pop(self.c, None)
        if due:
            need = [r for r, ep in due if r.epoch == ep]
            while len(need) > kv.free:
                victim = self._preempt_last(t)
                if victim in need:
                    need.remove(victim)
            kv.allocate(len(need))
            nxt = self.c + bs
            bucket = self._block_at.setdefault(nxt, [])
            for r in need:
                r.blocks += 1
                bucket.append((r, r.epoch))
        n_dec = min(self.n_dec, budget)
        budget -= n_dec
        kv_read = self.kv_dec + n_dec
        attn = float(kv_read)
        chunks: list[tuple[_Req, int]] = []
        new_tokens = n_dec
        logits = n_dec
        # 2. partially prefilled requests.
        for r in list(self.prefilling):
            if budget <= 0:
                break
            if r.state != _PREFILL:
                continue  # preempted by an earlier request of this loop
            chunk = min(r.target - r.computed, budget)
            need_blocks = kv.blocks_for(r.computed + chunk) - r.blocks
            while need_blocks > kv.free:
                if self._preempt_last(t) is r:
                    break
            if r.state != _PREFILL:
                continue
            kv.allocate(need_blocks)
            r.blocks += need_blocks
            chunks.append((r, chunk))
            budget -= chunk
            new_tokens += chunk
            k = r.computed
            attn += chunk * k + chunk * (chunk + 1) / 2
            kv_read += k
            if k + chunk == r.target:
                logits += 1
        # 3. waiting requests, FCFS.
        waiting = self.waiting
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            r = waiting[0]
            if r.first_sched < 0 and self.prefix_hit > 0:
                hit = int(r.prompt * self.prefix_hit) // bs * bs
                r.cached = min(hit, r.prompt - 1)
                r.computed = r.cached
            chunk = min(r.target - r.computed, budget)
            need_blocks = kv.blocks_for(r.computed + chunk) - r.blocks
            if need_blocks > kv.free:
                if r.first_sched < 0:
                    r.computed = 0
                    r.cached = 0
                break
            waiting.popleft()
            if r.first_sched < 0:
                r.first_sched = t
                self.metrics.prefix_cache_queries += r.prompt
                self.metrics.prefix_cache_hits += r.cached
            kv.allocate(need_blocks)
            r.blocks += need_blocks
            r.state = _PREFILL
            self.running[r.rid] = r
            self.prefilling.append(r)
            chunks.append((r, chunk))
            budget -= chunk
            new_tokens += chunk
            k = r.computed
            attn += chunk * k + chunk * (chunk + 1) / 2
            kv_read += k
            if k + chunk == r.target:
                logits += 1
        if new_tokens == 0:
            return False
        cost = self.physics.cost(new_tokens, attn, kv_read, n_dec + len(chunks), logits)
        out = self.group.run_step(t, cost)
        self._inflight = True
        self._t_start = t
        self._t_end = t + out.duration_s
        self._step_dec = n_dec
        self._step_chunks = chunks
        self._step_tokens = new_tokens
        self.steps += 1
        self.busy_s += out.duration_s
        self.clock_time_integral += out.clock_mhz * out.duration_s
        if out.power_capped:
            self.capped_s += out.duration_s
        return True

    # ---- completing a step ----------------------------------------------------------------
    def _finish_step(self) -> None:
        t = self._t_end
        m = self.metrics
        self._inflight = False
        self.now = t
        n_dec = self._step_dec
        if n_dec:
            self.c += 1
            self.kv_dec += n_dec
            m.generation_tokens += n_dec
            m.itl.observe(t - self._t_start, n_dec)
            done = self._finish_at.pop(self.c, None)
            if done:
                for r, ep in done:
                    if r.epoch == ep:
                        steps = self.c - r.c_join
                        self.n_dec -= 1
                        self.kv_dec -= r.kv_join + steps
                        r.generated = r.gen_join + steps
                        self._finish(r, t)
        for r, chunk in self._step_chunks:
            r.computed += chunk
            if r.computed < r.target:
                continue
            # Prefill done: this step also sampled the next token.
            self.prefilling.remove(r)
            if r.first_token < 0:
                r.first_token = t
                self.first_tokens.add(t)
                m.ttft.observe(t - r.arrival)
                m.prompt_tokens += r.prompt
            else:
                m.itl.observe(t - r.last_token)  # resumed after a preemption
            r.generated += 1
            m.generation_tokens += 1
            if r.generated >= r.output:
                self._finish(r, t)
                continue
            r.state = _DECODE
            c = self.c
            r.c_join = c
            r.kv_join = r.computed
            r.gen_join = r.generated
            self.n_dec += 1
            self.kv_dec += r.computed
            ep = r.epoch
            self._finish_at.setdefault(c + r.output - r.generated, []).append((r, ep))
            self._block_at.setdefault(c + (-r.computed) % self.kv.block_size, []).append((r, ep))
        m.iteration_tokens.observe(self._step_tokens)
        self._step_chunks = []
        m.num_requests_running = len(self.running)
        m.num_requests_waiting = len(self.waiting)
        m.kv_cache_usage = self.kv.usage

    def _finish(self, r: _Req, t: float) -> None:
        m = self.metrics
        self.kv.release(r.blocks)
        r.blocks = 0
        r.state = _DONE
        r.epoch += 1
        del self.running[r.rid]
        m.success_stop += 1
        self.responses_done.add(t)
        m.e2e.observe(t - r.arrival)
        m.queue_time.observe(r.first_sched - r.arrival)
        m.inference_time.observe(t - r.first_sched)
        m.prefill_time.observe(r.first_token - r.first_sched)
        m.decode_time.observe(t - r.first_token)
        m.request_prompt_tokens.observe(r.prompt)
        m.request_generation_tokens.observe(r.output)
        # As vLLM: every finished request is observed, a one-token answer as 0.
        m.tpot_request.observe((t - r.first_token) / (r.output - 1) if r.output > 1 else 0.0)
        self.completed.append(
            RequestRecord(
                request_id=r.rid,
                arrival_s=r.arrival,
                first_scheduled_s=r.first_sched,
                first_token_s=r.first_token,
                finish_s=t,
                prompt_tokens=r.prompt,
                output_tokens=r.output,
                cached_tokens=r.cached,
                preemptions=r.preemptions,
                finished_reason="stop",
            )
        )

    # ---- the front door ---------------------------------------------------------------------
    def arrived_through(self, t: float) -> int:
        """Requests that reached the API server by time t, including those the scheduler
        has not taken in yet (it does so only between steps)."""
        return self._next_rid + self.stream.pending_through(t - self.t0)

    def first_tokens_through(self, t: float) -> int:
        """Requests whose first token was out by time t (a rejected one counts at once)."""
        return self.first_tokens.through(t) + self.metrics.success_abort

    def done_through(self, t: float) -> int:
        """Requests whose response was done by time t: finished, or rejected at admission."""
        return self.responses_done.through(t) + self.metrics.success_abort

    # ---- views ----------------------------------------------------------------------------
    @property
    def inflight_until(self) -> float | None:
        """End time of the step in flight, or None between steps."""
        return self._t_end if self._inflight else None

    @property
    def idle(self) -> bool:
        return not (self._inflight or self.waiting or self.running)

    @property
    def next_arrival_s(self) -> float:
        return self.stream.next_t + self.t0 if self.stream.next_t != math.inf else math.inf
