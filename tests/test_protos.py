"""The checked-in generated code must be exactly what the .proto files generate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
