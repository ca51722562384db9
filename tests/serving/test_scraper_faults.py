"""ServingScraper against a real HTTP /metrics endpoint that restarts, fails and lies."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from agft.v1 import agent_pb2 as pb
from node_agent.serving.scraper import ServingScraper
from sim.http import MetricsServer

LAB = 'engine="0",model_name="m"'


def vllm_text(gen: float, ttft: tuple[float, float, float], running: str = "4") -> str:
    """A vLLM scrape: generation counter, finished requests and a 2-bound TTFT histogram."""
    lines = [
        f"vllm:num_requests_running{{{LAB}}} {running}",
        f"vllm:num_requests_waiting{{{LAB}}} 1",
        f"vllm:kv_cache_usage_perc{{{LAB}}} 0.5",
        f"vllm:prompt_tokens_total{{{LAB}}} {gen * 2}",
        f"vllm:generation_tokens_total{{{LAB}}} {gen}",
        f'vllm:request_success_total{{{LAB},finished_reason="stop"}} {ttft[2]}',
    ]
    for le, n in zip(("0.1", "1.0", "+Inf"), ttft, strict=True):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{{LAB},le="{le}"}} {n}')
    lines.append(f"vllm:time_to_first_token_seconds_sum{{{LAB}}} {ttft[2] * 0.2}")
    lines.append(f"vllm:time_to_first_token_seconds_count{{{LAB}}} {ttft[2]}")
    return "\n".join(lines) + "\n"


@dataclass
class Endpoint:
    text: str = ""
    up: bool = True


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    state = Endpoint()
    server = MetricsServer(lambda: state.text, lambda: state.up)
    server.start()
    try:
        yield state, server.url
    finally:
        server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def assert_unknown(w: pb.ServingWindow) -> None:
    assert not w.available and w.error
    # Nothing but the error is set: every measurement is unknown, never 0.
    assert {f.name for f, _ in w.ListFields()} == {"error"}


async def test_engine_restart_flags_reset_with_no_negative_or_huge_delta(
    endpoint: tuple[Endpoint, str], client: httpx.AsyncClient
) -> None:
    state, url = endpoint
    scraper = ServingScraper(url, "vllm", client, timeout_s=2.0)
    state.text = vllm_text(5000, (50, 80, 90))
    await scraper.next_window()
    state.text = vllm_text(5600, (52, 84, 95))
    w = await scraper.next_window()
    assert w.generation_tokens == 600 and not w.counters_reset
    state.text = vllm_text(120, (1, 2, 2))  # restarted: counters and histograms from 0
    w = await scraper.next_window()
    assert w.available and w.counters_reset
    assert w.generation_tokens == 120 and w.prompt_tokens == 240 and w.requests_finished == 2
    assert list(w.ttft_s.bucket_counts) == [1, 1, 0] and w.ttft_s.count == 2
    state.text = vllm_text(150, (2, 3, 3))
    w = await scraper.next_window()
    assert not w.counters_reset and w.generation_tokens == 30 and w.ttft_s.count == 1


async def test_endpoint_down_mid_run_is_unknown_then_a_fresh_baseline(
    endpoint: tuple[Endpoint, str], client: httpx.AsyncClient
) -> None:
    state, url = endpoint
    scraper = ServingScraper(url, "vllm", client, timeout_s=2.0)
    state.text = vllm_text(1000, (5, 8, 9))
    await scraper.next_window()
    state.up = False  # answers 503
    w = await scraper.next_window()
    assert_unknown(w)
    assert "503" in w.error
    state.up = True
    state.text = vllm_text(9000, (50, 80, 90))  # much happened while we could not see
    w = await scraper.next_window()
    assert w.available and w.num_requests_running == 4
    assert not w.HasField("generation_tokens")  # a new baseline, not the gap as one delta
    assert not w.HasField("ttft_s") and not w.counters_reset
    state.text = vllm_text(9100, (51, 81, 91))
    w = await scraper.next_window()
    assert w.generation_tokens == 100 and w.ttft_s.count == 1


async def test_connection_refused_is_unknown(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scraper = ServingScraper(f"http://127.0.0.1:{port}/metrics", "vllm", client, timeout_s=2.0)
    w = await scraper.next_window()
    assert_unknown(w)
    assert "ConnectError" in w.error


async def test_garbage_text_is_unknown_with_the_bad_line(
    endpoint: tuple[Endpoint, str], client: httpx.AsyncClient
) -> None:
    state, url = endpoint
    scraper = ServingScraper(url, "vllm", client, timeout_s=2.0)
    state.text = vllm_text(1000, (5, 8, 9))
    await scraper.next_window()
    state.text = "<html><body>502 Bad Gateway</body></html>\n"
    w = await scraper.next_window()
    assert_unknown(w)
    assert w.error.startswith("ExpositionError: line 1")
    state.text = vllm_text(1000, (5, 8, 9)).replace("} 1000\n", "} 1_000\n")  # float() reads it
    w = await scraper.next_window()
    assert_unknown(w)
    assert "1_000" in w.error


async def test_nan_gauges_are_left_unset(
    endpoint: tuple[Endpoint, str], client: httpx.AsyncClient
) -> None:
    state, url = endpoint
    scraper = ServingScraper(url, "vllm", client, timeout_s=2.0)
    state.text = vllm_text(1000, (5, 8, 9), running="NaN").replace(
        "vllm:kv_cache_usage_perc{" + LAB + "} 0.5", "vllm:kv_cache_usage_perc{" + LAB + "} NaN"
    )
    w = await scraper.next_window()
    assert w.available
    assert not w.HasField("num_requests_running") and not w.HasField("kv_cache_usage")
    assert w.num_requests_waiting == 1


async def test_several_instances_on_one_endpoint_need_match_labels(
    endpoint: tuple[Endpoint, str], client: httpx.AsyncClient
) -> None:
    state, url = endpoint

    def two(gen1: float) -> str:
        other = vllm_text(gen1, (1, 1, 1), running="7").replace('engine="0"', 'engine="1"')
        return vllm_text(1000, (5, 8, 9)) + other

    state.text = two(50)
    w = await ServingScraper(url, "vllm", client, timeout_s=2.0).next_window()
    assert_unknown(w)
    assert "SnapshotError" in w.error and "engine=['0', '1']" in w.error
    one = ServingScraper(url, "vllm", client, timeout_s=2.0, match_labels=(("engine", "1"),))
    await one.next_window()
    state.text = two(80)
    w = await one.next_window()
    assert w.available and w.num_requests_running == 7 and w.generation_tokens == 30
