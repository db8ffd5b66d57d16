# usage-consumer image: a Debian slim Python base, dependencies from hash-locked requirement files, no
# compilers or package managers in the final stage, a non-root user, and tini as PID 1 so SIGTERM reaches
# the consumer's graceful shutdown (flush, commit, exit 0). Runs with a read-only root filesystem.
#
#   docker build -t usage-consumer .
#   make image-test        # builds with buildah from a debootstrap base and smoke-runs it (no Docker engine)
#
# BASE_IMAGE must be Debian bookworm with python3 (>= 3.11) and its venv module, e.g. python:3.11-slim-bookworm
# (the default) or the debootstrap base made by scripts/image-test. Both stages use it, so the venv's
# interpreter path is the same in both.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# tini-static: PID 1 that forwards signals and reaps children; static, so it is copied alone.
ARG TINI_VERSION=0.19.0-1+b3
RUN apt-get update \
    && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

# Optional, for builds behind a package proxy or a TLS-inspecting gateway (unset: PyPI and the base's CA
# bundle). scripts/image-test passes the host's CA bundle as a build volume with PIP_CERT.
ARG PIP_INDEX_URL
ARG PIP_CERT

# Runtime dependencies first (cached until the lock changes): wheels only, each checked against its sha256.
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
RUN python3 -m venv --without-pip /opt/venv \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary :all: \
       -r requirements-build.lock \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes --no-deps \
       --only-binary :all: -r requirements.lock

# The project itself: built into a wheel without network (build dependencies come from the lock above).
COPY pyproject.toml README.md ./
COPY consumer ./consumer
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --no-index --wheel-dir /wheels . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --no-deps --no-index /wheels/*.whl \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/usage-consumer --help >/dev/null

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="usage-consumer" \
      org.opencontainers.image.description="Kafka consumer group delivering product-usage events to Freshsuccess and Freshpaint" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/venv /opt/venv

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it; no home, no shell.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1

USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
# tini -g: a signal goes to the whole process group, so nothing the consumer starts outlives it.
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "usage-consumer"]
CMD ["run", "--config", "/etc/usage-consumer/config.yaml"]
