# syntax=docker/dockerfile:1.7
# TensorBoard over the shared volume's runs/ (training and evaluation summaries).
#   docker build -f docker/tensorboard.Dockerfile -t incept-tensorboard:0.1.0 .

# The base image: the official one by default; `make images` passes one built
# from Debian packages (no registry is reachable where this is tested).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock docker/tensorboard-requirements.txt /src/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint /src/requirements.lock -r /src/tensorboard-requirements.txt

FROM ${PYTHON_IMAGE}
# The version of incept the image was built from (make images passes pyproject.toml's).
ARG INCEPT_VERSION=unknown
LABEL org.opencontainers.image.title="incept-tensorboard" \
      org.opencontainers.image.version="${INCEPT_VERSION}"
RUN groupadd --gid 10001 incept \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin incept
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/incept-healthcheck
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 6006
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["incept-healthcheck", "http", "http://127.0.0.1:6006/"]
CMD ["tensorboard", "--logdir", "/data/runs", "--bind_all", "--port", "6006"]
