"""The agent's reconnect loop and safety loop, with fake sessions (no server needed)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc
import httpx
import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.agent import Agent, FatalLinkError, SafetyLoopError
from node_agent.config import AgentConfig, ConfigError, InstanceConfig
from tests.fakes.backend import FakeBackend


def config(**overrides: object) -> AgentConfig:
    base = AgentConfig(
        server="127.0.0.1:1",
        node_id="fake-node",
        token="test-token",
        instances=(InstanceConfig("vllm-0", "http://127.0.0.1:1/metrics", (0,)),),
        backoff_initial_s=1e-6,
        backoff_max_s=1e-5,
        lease_check_s=0.01,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom")


class FlakyAgent(Agent):
    """Each session fails at once, in a rotation of the ways a session can fail."""

    FAILURES: tuple[BaseException, ...] = (
        OSError("connection refused"),
        TimeoutError(),
        rpc_error(grpc.StatusCode.UNAVAILABLE),
        RuntimeError("a bug in one session"),
        ValueError("bad bytes"),
        KeyError("x"),
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.attempts = 0
        self.started_at: list[float] = []
        self.welcome_on: set[int] = set()
        self.fatal_on: int | None = None
        self.config_error_on: int | None = None

    async def _session(self, http: httpx.AsyncClient) -> bool:
        self.started_at.append(time.monotonic())
        n = self.attempts
        self.attempts += 1
        if n == self.fatal_on:
            raise FatalLinkError("refused for good")
        if n == self.config_error_on:
            raise ConfigError("no node token")
        if n in self.welcome_on:
            self._welcomed(pb.Welcome(window_s=1.0, lease_s=5.0))
        raise self.FAILURES[n % len(self.FAILURES)]


async def test_two_thousand_dropped_links_in_a_row_and_still_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="node_agent.agent")  # 2,000 tracebacks are slow
    agent = FlakyAgent(config(), FakeBackend())
    task = asyncio.create_task(agent.run())
    deadline = time.monotonic() + 60
    while agent.attempts < 2000:
        assert not task.done(), f"agent ended after {agent.attempts} attempts: {task!r}"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not task.done()
    still = agent.attempts
    await asyncio.sleep(0.05)
    assert agent.attempts > still  # still retrying
    agent.stop()
    await asyncio.wait_for(task, 5)


async def test_only_a_fatal_link_error_ends_the_loop() -> None:
    agent = FlakyAgent(config(), FakeBackend())
    agent.fatal_on = 20
    with pytest.raises(FatalLinkError):
        await asyncio.wait_for(agent.run(), 10)
    assert agent.attempts == 21


async def test_a_configuration_error_in_a_session_ends_the_agent_with_its_message() -> None:
    # No token or an unreadable CA file: retrying cannot help, the CLI prints it (exit 2).
    agent = FlakyAgent(config(), FakeBackend())
    agent.config_error_on = 3
    with pytest.raises(ConfigError, match="no node token"):
        await asyncio.wait_for(agent.run(), 10)


async def test_a_welcomed_session_that_drops_retries_after_about_the_initial_delay() -> None:
    agent = FlakyAgent(config(backoff_initial_s=0.02, backoff_max_s=10.0), FakeBackend())
    # Six failures grow the delay to [0.32, 0.64] s; the seventh session is welcomed,
    # then drops: the eighth must follow within about backoff_initial_s (0.01-0.02 s).
    agent.welcome_on = {6}
    task = asyncio.create_task(agent.run())
    while agent.attempts < 8:
        assert not task.done()
        await asyncio.sleep(0.005)
    agent.stop()
    await asyncio.wait_for(task, 5)
    gaps = [b - a for a, b in zip(agent.started_at, agent.started_at[1:], strict=False)]
    assert gaps[5] >= 0.32  # before the Welcome: the grown delay
    assert gaps[6] < 0.15  # after it: back to the initial delay


class ExpiryFailsOnce(FakeBackend):
    """The reset an expiry does raises a bug-like error once; later resets work."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def reset_locked_sm_clocks(self, index: int) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("unexpected driver wrapper bug")
        super().reset_locked_sm_clocks(index)


async def test_a_failing_safety_loop_resets_every_gpu_and_ends_the_agent_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ExpiryFailsOnce()
    agent = FlakyAgent(config(backoff_initial_s=0.01, backoff_max_s=0.05), backend)
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.1)  # started: the start-up reset is done, sessions are failing
    assert agent.attempts >= 1
    ack = agent.clocks.set_clocks(
        pb.SetClocks(
            command_id="c",
            instance="vllm-0",
            min_sm_clock_mhz=210,
            max_sm_clock_mhz=900,
            lease_s=0.05,
        )
    )
    assert ack.ok and backend.locks == {0: (210, 900)}
    backend.armed = True  # the expiry of that lease will raise
    with pytest.raises(SafetyLoopError, match="unexpected driver wrapper bug"):
        await asyncio.wait_for(task, 5)
    assert backend.locks == {}  # reset on the way out
    assert any("lease enforcement failed" in r.getMessage() for r in caplog.records)


async def test_a_fast_loop_thread_that_dies_stops_the_agent_with_gpus_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its steps cannot raise out of it; if the thread ends anyway, a boost it left would
    # carry into later commands: the agent stops, as when lease enforcement fails.
    from node_agent.reflex import FastLoop
    from node_agent.serving.front_door import QUEUED, FrontDoorSpec

    door = FrontDoorSpec(QUEUED, "http://127.0.0.1:1/metrics", "dynamo_frontend_queued_requests")
    inst = InstanceConfig("vllm-0", "http://127.0.0.1:1/metrics", (0,), front_door=door)
    monkeypatch.setattr(FastLoop, "run", lambda self, stop: None)  # ends at once
    backend = FakeBackend()
    agent = FlakyAgent(config(instances=(inst,)), backend)
    assert agent.fast_loop is not None
    with pytest.raises(SafetyLoopError, match="fast loop's thread ended"):
        await asyncio.wait_for(agent.run(), 5)
    assert backend.locks == {}


def test_without_a_front_door_there_is_no_fast_loop() -> None:
    assert FlakyAgent(config(), FakeBackend()).fast_loop is None
