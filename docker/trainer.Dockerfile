# syntax=docker/dockerfile:1.7
# The trainer: an rq worker on the queues `train` and `datasets` (compose), or
# `incept train --job-id ID` as a Kubernetes Job. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t incept-trainer:0.1.0 .
# TensorFlow's GPU build with CUDA/cuDNN as pip wheels (docker/cuda-constraints.txt):
# the host needs only the NVIDIA driver and container toolkit. Without a GPU the
# same image trains on CPU; --build-arg TENSORFLOW_PACKAGE=tensorflow-cpu==2.21.0
# builds the CPU-only image (what `make images` does here).

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
# The project declares tensorflow-cpu (what CI and the CPU images use); by default
# swap in the GPU build of the same version, "tensorflow[and-cuda]==2.21.0" (both
# ship the same `tensorflow` package). --build-arg TENSORFLOW_PACKAGE=tensorflow-cpu==2.21.0
# keeps the CPU build: a 1.5 GB image instead of 5 GB, for hosts without a GPU.
ARG TENSORFLOW_PACKAGE="tensorflow[and-cuda]==2.21.0"
COPY docker/cuda-constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "${TENSORFLOW_PACKAGE%%==*}" != tensorflow-cpu ]; then \
      pip uninstall --yes tensorflow-cpu \
      && pip install --constraint requirements.lock --constraint cuda-constraints.txt \
           "$TENSORFLOW_PACKAGE"; \
    fi \
 && python -c "import tensorflow as tf; assert tf.__version__ == '2.21.0', tf.__version__"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 incept \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin incept \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# The version of incept the image was built from (make images passes pyproject.toml's).
ARG INCEPT_VERSION=unknown
LABEL org.opencontainers.image.title="incept-trainer" \
      org.opencontainers.image.version="${INCEPT_VERSION}" \
      org.opencontainers.image.description="incept trainer: fine-tunes Inception v4 (GPU or CPU)"
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/incept-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    INCEPT_DATA_ROOT=/data \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
# SIGTERM (docker stop, Kubernetes) makes the trainer checkpoint and exit; give
# it the same grace as the Kubernetes Job (stop_grace_period in compose).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
  CMD ["incept-healthcheck", "rq-worker"]
CMD ["incept", "trainer"]
