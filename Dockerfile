# The reward scoring service, torch-free. See deploy/README.md.
#
#   docker build -t rlhf-reward-service .                                   # bundle mounted at run time
#   docker run -p 8000:8000 -v "$PWD/bundles/rm-default:/bundles/current:ro" rlhf-reward-service
#   docker build --build-arg BUNDLE_DIR=bundles/rm-default -t rlhf-reward-service:rm-default .   # baked in
#
# Two stages: the builder installs the project's base dependencies (the service and its client:
# onnxruntime, tokenizers, fastapi, uvicorn, ...) into a virtual environment with
# deploy/install-service.sh, which refuses to finish if torch became importable; the runtime stage
# copies only that venv onto a clean slim image and runs it as an unprivileged user.
# tests/deploy/test_image_recipe.py replays the builder stage's COPY and RUN lines in a fresh venv.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY cli ./cli
COPY bench ./bench
COPY deploy/install-service.sh ./deploy/install-service.sh
RUN sh deploy/install-service.sh /opt/venv /src

FROM ${PYTHON_IMAGE} AS runtime
# A directory of the build context copied to /bundles/current; the default holds no model (mount one).
ARG BUNDLE_DIR=deploy/no-bundle
# Fixed ids so that volume permissions and Kubernetes' runAsUser/fsGroup can name them.
RUN groupadd --system --gid 10001 rlhf \
    && useradd --system --uid 10001 --gid rlhf --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rlhf
COPY --from=builder /opt/venv /opt/venv
COPY --chown=root:root ${BUNDLE_DIR} /bundles/current
# One uvicorn process per container: the batcher owns one queue and one onnxruntime session per
# process, so more throughput comes from more replicas (or more intra-op threads), not workers.
# RLHF_INTRA_OP_THREADS matches the container's CPU request (1 core in deploy/k8s); raise both together.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RLHF_HOST=0.0.0.0 \
    RLHF_PORT=8000 \
    RLHF_BUNDLE=/bundles/current \
    RLHF_BUNDLE_ROOT=/bundles \
    RLHF_PRECISION=auto \
    RLHF_INTRA_OP_THREADS=1 \
    RLHF_DRAIN_SECONDS=10 \
    RLHF_LOG_LEVEL=info
USER 10001:10001
VOLUME ["/bundles"]
EXPOSE 8000
# Liveness only (the process answers); readiness is /readyz, which orchestrators probe themselves.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RLHF_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
