"""Faults on the node side, over real HTTP and gRPC with a simulated GPU serving node.

- An agent killed while it held a lowered clock leaves the lock behind on the GPU (it
  outlives the process); the next agent resets it before anything else.
- The serving endpoint going down mid-run makes windows "unknown": the lowered clock
  goes back to default at once and comes down again only once metrics return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from node_agent.agent import Agent
from tests.helpers.running import running_server
from tests.helpers.simnode import agent_config, eventually, sim_node

FIXED_MHZ = 1200


async def test_a_killed_agents_lock_is_reset_when_the_next_agent_starts(sqlite_url: str) -> None:
    node = await asyncio.to_thread(sim_node, "restart-node", 1)
    backend = node.backend
    try:
        resets: list[float] = []
        for _ in range(5):
            # What a SIGKILLed agent leaves behind: a lock on the GPU and no lease.
            low = backend.supported_sm_clocks_mhz(0, backend.default_memory_clock_mhz(0))[-1]
            backend.set_locked_sm_clocks_mhz(0, low, 900)
            assert backend.locked_sm_clocks_mhz(0) == (low, 900)
            async with running_server(sqlite_url) as srv:
                config = dataclasses.replace(
                    agent_config(node, srv.grpc_address, "restart-node"),
                    token=srv.node_token("restart-node"),
                )
                agent = Agent(config, backend)
                started = time.monotonic()
                task = asyncio.create_task(agent.run())
                try:
                    await eventually(lambda: backend.locked_sm_clocks_mhz(0) is None, 5, "reset")
                    resets.append(time.monotonic() - started)
                    await eventually(agent.connected.is_set, 10, "connected")
                finally:
                    agent.stop()
                    await asyncio.wait_for(task, 10)
    finally:
        node.stop()
    print(
        f"stale lock reset after agent start (5 trials): {[f'{t * 1000:.0f} ms' for t in resets]}"
    )
    assert max(resets) < 1.0


class SwitchableProxy:
    """Forwards GET to a real /metrics endpoint, or fails like a dead one when off."""

    def __init__(self, target: str) -> None:
        self.up = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not proxy.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                with urllib.request.urlopen(target, timeout=2) as response:
                    body = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    @contextmanager
    def running(self) -> Iterator[SwitchableProxy]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


async def test_metrics_going_down_mid_run_brings_the_clock_back_to_default(
    database_url: str,
) -> None:
    node = await asyncio.to_thread(sim_node, "metrics-node", 1)
    backend = node.backend
    proxy = SwitchableProxy(node.instances[0].metrics_url)
    try:
        with proxy.running():
            async with running_server(
                database_url, window_s=0.2, lease_s=5.0, static_clock_mhz=FIXED_MHZ
            ) as srv:
                base = agent_config(node, srv.grpc_address, "metrics-node")
                (inst,) = base.instances
                config = dataclasses.replace(
                    base,
                    token=srv.node_token("metrics-node"),
                    instances=(dataclasses.replace(inst, metrics_url=proxy.url),),
                )
                agent = Agent(config, backend)
                task = asyncio.create_task(agent.run())
                try:

                    def locked() -> bool:
                        return backend.locked_sm_clocks_mhz(0) is not None

                    await eventually(locked, 15, "clock lowered while metrics flow")
                    proxy.up = False
                    down_at = time.monotonic()
                    # Not the 5 s lease: the next window is unknown, and unknown is not idle.
                    await eventually(lambda: not locked(), 2, "default clocks while metrics down")
                    released_after = time.monotonic() - down_at
                    await asyncio.sleep(1.0)
                    assert not locked(), "a clock was lowered on unknown telemetry"
                    proxy.up = True
                    await eventually(locked, 5, "lowered again once metrics return")
                finally:
                    agent.stop()
                    await asyncio.wait_for(task, 10)
    finally:
        node.stop()
    print(f"metrics down: default clocks after {released_after * 1000:.0f} ms")
    assert released_after < 1.0
