# syntax=docker/dockerfile:1.7
# Thrifty distill image: the DistilledModel Jobs (`thrifty distill export|train|evaluate`, the
# evaluate step wrapped by `thrifty operator publish-report`) and `thrifty distill serve`.
# Causal-lm students are served by the vLLM image; this image trains their LoRA adapters.
# Build from the repository root:
#   docker build -f images/distill.Dockerfile -t thrifty-distill .                # classifier
#   docker build -f images/distill.Dockerfile -t thrifty-distill-lm \
#     --build-arg EXTRAS="--extra distill --extra distill-lm" .                  # + LoRA (torch)
# Non-root (uid 10001), read-only root filesystem friendly (HOME=/tmp, data on the volume).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.5.11 AS uv

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS="--extra distill"
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev ${EXTRAS} --no-install-project
COPY core core
COPY gateway gateway
COPY operator operator
COPY distill distill
COPY cli cli
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev ${EXTRAS} --no-editable

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="thrifty-distill" \
      org.opencontainers.image.description="Thrifty distillation: export, train, evaluate and serve student models" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 thrifty \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin thrifty
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
ENTRYPOINT ["thrifty"]
CMD ["distill", "--help"]
