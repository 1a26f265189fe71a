# syntax=docker/dockerfile:1.7
# NOT TensorFlow Serving: incept's TF Serving stand-in, for hosts where the
# tensorflow/serving image cannot be had (where incept is tested). It installs
# docker/tfserving_standin.py as `tensorflow_model_server`: the project's TF
# Serving protocol double (tests/fakes/tfserving.py, gRPC + REST over the real
# SavedModels) behind the stock server's flags, so docker-compose.yml and k8s/
# run it unchanged. `make images` builds it as localhost/incept-tfserving-standin.
#   docker build -f docker/tfserving-standin.Dockerfile -t incept-tfserving-standin:0.1.0 .

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
LABEL org.opencontainers.image.title="incept-tfserving-standin" \
      org.opencontainers.image.version="${INCEPT_VERSION}" \
      org.opencontainers.image.description="NOT TensorFlow Serving: incept's TF Serving protocol double behind tensorflow_model_server's flags"
COPY tests/__init__.py /opt/standin/tests/__init__.py
COPY tests/fakes/__init__.py tests/fakes/http.py tests/fakes/tfserving.py /opt/standin/tests/fakes/
COPY --chmod=0755 docker/tfserving_standin.py /usr/local/bin/tensorflow_model_server
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/standin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8501"]
ENTRYPOINT ["tensorflow_model_server"]
CMD ["--port=8500", "--rest_api_port=8501", "--model_config_file=/data/serving/models.config", "--model_config_file_poll_wait_seconds=60"]
