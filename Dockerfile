# One image for the server and the agent (the agent only imports its own deps at run time).
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
COPY protos protos
COPY agft_cli agft_cli
COPY node_agent node_agent
COPY server server
COPY sim sim
COPY migrations migrations
COPY web web
COPY alembic.ini ./
RUN uv sync --frozen --all-extras --no-dev
ENV PATH="/app/.venv/bin:$PATH"
ENTRYPOINT ["agft"]
