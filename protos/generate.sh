#!/usr/bin/env bash
# Regenerates the checked-in Python code and type stubs from protos/agft/v1/*.proto.
# OUT_DIR lets tests generate into a scratch folder and diff against the checked-in files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
python="${PYTHON:-python}"
"$python" -m grpc_tools.protoc -I "$here" \
  --python_out="$out" --mypy_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "$here"/agft/v1/*.proto
