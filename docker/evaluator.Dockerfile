# syntax=docker/dockerfile:1.7
# The evaluator: an rq worker on the queue `eval`. Build from the repository root:
#   docker build -f docker/evaluator.Dockerfile -t incept-evaluator:0.1.0 .
# TensorFlow CPU: evaluation and export run on CPU next to the GPU trainer.

# The base image: the official one by default; `make images` passes one built
# from Debian packages (no registry is reachable where this is tested).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml docker/runtime-extras.txt ./
# Runtime dependencies only (no test tools), every version pinned by the lock,
# in a layer of their own: the same instructions in every image's Dockerfile, so
# the builder's layer cache builds it once for all of them and keeps it while
# only the code changes. pip's downloads stay in a cache mount across builds.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > runtime-requirements.txt \
 && pip install --constraint requirements.lock setuptools wheel -r runtime-requirements.txt \
 && pip install --no-deps --constraint requirements.lock -r runtime-extras.txt
COPY incept ./incept
COPY services ./services
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 incept \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin incept \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# The version of incept the image was built from (make images passes pyproject.toml's).
ARG INCEPT_VERSION=unknown
LABEL org.opencontainers.image.title="incept-evaluator" \
      org.opencontainers.image.version="${INCEPT_VERSION}" \
      org.opencontainers.image.description="incept evaluator: evaluates, blesses and exports checkpoints"
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/incept-healthcheck
# The TF Serving model-config writer (compose service, Kubernetes sidecar) runs from this image.
COPY --chmod=0755 docker/tfserving_models.py /usr/local/bin/incept-tfserving-config
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    INCEPT_DATA_ROOT=/data
WORKDIR /tmp
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["incept-healthcheck", "rq-worker"]
CMD ["incept", "evaluator"]
