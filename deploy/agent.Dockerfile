# The AGFT node agent alone: the project's base dependencies (grpcio, protobuf,
# nvidia-ml-py, httpx) and the agent's code; no server, simulator or benchmark.
#   docker build -f deploy/agent.Dockerfile -t agft-agent .
# NVML comes from the host driver through the NVIDIA container runtime:
#   docker run --rm --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=all \
#     -v /etc/agft:/etc/agft:ro agft-agent agent --check --config /etc/agft/agent.toml
# The image runs as uid 10001, which can read every NVML value (monitor-only). Docker,
# like Kubernetes, gives --cap-add capabilities to uid 0 only, so to lock clocks run
# `--user 0 --cap-drop ALL --cap-add SYS_ADMIN` (not --privileged): docs/DEPLOY.md.
FROM python:3.11-slim AS build
WORKDIR /app
RUN pip install --no-cache-dir "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
# Dependencies only (no dev group, no extras): the agent's runtime set.
RUN uv sync --frozen --no-dev --no-install-project

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY protos/agft protos/agft
COPY agft_cli agft_cli
COPY node_agent node_agent
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin agft
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONPATH="/app:/app/protos" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["python", "-m", "agft_cli.main"]
CMD ["agent", "--help"]
