# syntax=docker/dockerfile:1.7
# Thrifty operator image: `thrifty operator` (kopf) and the semantic collection Jobs
# (`thrifty operator ensure-collection|delete-collection`).
# Build from the repository root:  docker build -f images/operator.Dockerfile -t thrifty-operator .
# Two stages: uv installs the locked `operator` extra into /opt/venv; the final stage holds that
# venv and the Python runtime only, runs as uid 10001 and works with a read-only root filesystem.
# Bases are pinned to exact versions; pin them by digest in your registry mirror for releases.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.5.11 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra operator --no-install-project
COPY core core
COPY gateway gateway
COPY operator operator
COPY distill distill
COPY cli cli
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra operator --no-editable

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="thrifty-operator" \
      org.opencontainers.image.description="Thrifty operator: reconciles LLMGateway, CachePolicy, BatchQueue and DistilledModel" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 thrifty \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin thrifty
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    THRIFTY_OPERATOR_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["thrifty"]
CMD ["operator", "--standalone"]
