# syntax=docker/dockerfile:1.7
# Thrifty gateway image (also runs the batch worker: `thrifty batch-worker ...`).
# Build from the repository root:  docker build -f images/gateway.Dockerfile -t thrifty-gateway .
# Two stages: uv resolves the locked environment into /opt/venv in the build stage; the final
# stage holds only that venv and the Python runtime (no uv, no compilers), running as non-root.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.5.11 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first (cached while only source changes).
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra gateway --no-install-project
COPY core core
COPY gateway gateway
COPY operator operator
COPY distill distill
COPY cli cli
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra gateway --no-editable

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="thrifty-gateway" \
      org.opencontainers.image.description="Thrifty: OpenAI-compatible gateway that makes LLM traffic cheaper" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 thrifty \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin thrifty
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["thrifty"]
CMD ["gateway", "--config", "/etc/thrifty/gateway.yaml"]
