# syntax=docker/dockerfile:1.7
# The trainer: an rq worker on the queues `train` and `datasets` (compose), or
# `incept train --job-id ID` as a Kubernetes Job. Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t incept-trainer:0.1.0 .
# TensorFlow's GPU build with CUDA/cuDNN as pip wheels (docker/cuda-constraints.txt):
# the host needs only the NVIDIA driver and container toolkit. Without a GPU the
# same image trains on CPU.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml docker/cuda-constraints.txt docker/runtime-extras.txt ./
RUN pip install --no-cache-dir --constraint requirements.lock setuptools wheel
COPY incept ./incept
COPY services ./services
# The project declares tensorflow-cpu (what CI and the CPU images use); swap in
# the GPU build of the same version. Both ship the same `tensorflow` package.
RUN pip install --no-cache-dir --no-build-isolation --constraint requirements.lock . \
 && pip install --no-cache-dir --no-deps --constraint requirements.lock -r runtime-extras.txt \
 && pip uninstall --yes tensorflow-cpu \
 && pip install --no-cache-dir --constraint requirements.lock --constraint cuda-constraints.txt \
      "tensorflow[and-cuda]==2.21.0" \
 && python -c "import tensorflow as tf; assert tf.__version__ == '2.21.0', tf.__version__"

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="incept-trainer" \
      org.opencontainers.image.description="incept trainer: fine-tunes Inception v4 (GPU or CPU)"
RUN groupadd --gid 10001 incept \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin incept \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
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
