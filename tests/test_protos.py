"""The checked-in generated code must be exactly what the .proto files generate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agft.commands import commands_of
from agft.v1 import agent_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py", "agent_pb2_grpc.pyi"]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    subprocess.run(
        ["bash", str(ROOT / "protos" / "generate.sh"), str(tmp_path)], check=True, env=env
    )
    for name in GENERATED:
        fresh = (tmp_path / "agft" / "v1" / name).read_text()
        checked_in = (ROOT / "protos" / "agft" / "v1" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run `make protos` and commit"


def test_the_commands_of_a_server_message_in_their_order() -> None:
    lock = pb.SetClocks(command_id="a", instance="vllm-0", max_sm_clock_mhz=1200)
    reset = pb.ResetClocks(command_id="b", instance="vllm-1")
    assert commands_of(pb.ServerMessage(set_clocks=lock)) == [lock]
    assert commands_of(pb.ServerMessage(reset_clocks=reset)) == [reset]
    batch = pb.Commands()
    batch.commands.add(reset_clocks=reset)
    batch.commands.add()  # no command in it: skipped
    batch.commands.add(set_clocks=lock)
    assert commands_of(pb.ServerMessage(commands=batch)) == [reset, lock]
    assert commands_of(pb.ServerMessage(stored=pb.Stored(through_seq=3))) == []
