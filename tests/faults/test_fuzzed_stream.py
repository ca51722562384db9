"""A stream of malformed and hostile messages between good ones: every good window is kept.

Random bytes, bit-flipped and truncated messages, and well-formed messages with
values drawn from every edge (NaN, infinities, huge, negative, empty) are sent on
one authenticated stream among good windows. The stream must survive, answer each
bad message with an error, and store every good window.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from sqlalchemy import select

from agft.v1 import agent_pb2 as pb
from server.store.models import Decision
from tests.helpers.raw_agent import RawStream, hello, window
from tests.helpers.running import running_server

NOW = 1_780_000_000.0
EDGES = [math.nan, math.inf, -math.inf, 1e308, -1.0, 0.0, 1e-300, 2.0**63, 5e9]


def _hostile(rng: random.Random, good: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return rng.randbytes(rng.randint(1, 200))
    if roll < 0.5:
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if roll < 0.6:
        return good[: rng.randrange(1, len(good))]
    w = window(start=NOW + 10_000 + rng.random())
    field = rng.choice(
        ["window_start_s", "window_end_s", "energy_j", "avg_power_w", "running", "tokens", "kv"]
    )
    value = rng.choice(EDGES)
    if field in ("window_start_s", "window_end_s"):
        setattr(w, field, value)
    elif field in ("energy_j", "avg_power_w"):
        setattr(w.gpus[0], field, value)
    elif field == "running":
        w.serving.num_requests_running = value
    elif field == "tokens":
        w.serving.generation_tokens = value
    else:
        w.serving.kv_cache_usage = value
    if rng.random() < 0.3:
        w.instance = rng.choice(["", "ghost", "vllm-0\x00", "x" * 300])
    return pb.AgentMessage(seq=0, telemetry=pb.Telemetry(windows=[w])).SerializeToString()


async def test_every_good_window_survives_a_fuzzed_stream(database_url: str) -> None:
    rng = random.Random(20261202)
    good_starts: list[float] = []
    async with running_server(database_url) as srv:
        stream = RawStream(srv.grpc_address, srv.node_token("raw-node"))
        try:
            stream.send(hello=hello())
            await stream.read_kind("welcome")
            template = pb.AgentMessage(
                seq=1, telemetry=pb.Telemetry(windows=[window(start=NOW)])
            ).SerializeToString()
            for n in range(60):
                start = NOW + n
                good_starts.append(start)
                stream.send(telemetry=pb.Telemetry(windows=[window(start=start)]))
                for _ in range(rng.randint(1, 5)):
                    stream.send_bytes(_hostile(rng, template))
            # The stream is still alive and answering at the end.
            seq = stream.send(ack=pb.CommandAck(command_id="final-probe", ok=True))
            while True:
                msg = await stream.read(10)
                if msg.WhichOneof("body") == "error" and msg.error.seq == seq:
                    break
        finally:
            await stream.close()
        await srv.app.state.writer.flush()
        with srv.app.state.session_factory() as db:
            stored = db.scalars(select(Decision.window_start)).all()
        assert srv.app.state.writer.status().ok
    stored_starts = {(t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() for t in stored}
    missing = [s for s in good_starts if s not in stored_starts]
    assert not missing, f"{len(missing)} good windows lost, e.g. {missing[:3]}"
    assert datetime.fromtimestamp(good_starts[-1], UTC).year == 2026
