# The server image (also runs `agft bench`, `agft sim` and simulated agents). The agent
# alone, for GPU nodes, has its own smaller image: deploy/agent.Dockerfile.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
# Dependencies first (cached while only the code changes), then the project itself.
RUN uv sync --frozen --all-extras --no-dev --no-install-project
COPY protos protos
COPY agft_cli agft_cli
COPY node_agent node_agent
COPY server server
COPY sim sim
COPY bench bench
COPY migrations migrations
COPY web web
COPY alembic.ini ./
RUN uv sync --frozen --all-extras --no-dev \
    && useradd --system --uid 10001 --user-group --home-dir /home/agft --create-home \
       --shell /usr/sbin/nologin agft \
    && mkdir -p /data && chown agft:agft /data
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
# The embedded SQLite default (AGFT_DATABASE_URL unset) writes agft.db in the working
# directory: /data, owned by the unprivileged user (mount a volume there to keep it).
WORKDIR /data
USER agft
ENTRYPOINT ["agft"]
