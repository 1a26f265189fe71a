# syntax=docker/dockerfile:1.7
# Redis from Debian's redis-server, for hosts that cannot pull the stock
# redis:7.4.2-alpine (the default in docker-compose.yml and k8s/): `make images`
# builds it as localhost/incept-redis:7.0 on the local Debian base. It runs the
# same command lines as the stock image (`redis-server --appendonly yes ...`)
# and, like the stock image, with protected mode off: Redis is reached over the
# container network, and the compose and Kubernetes network rules limit who can.
#   docker build -f docker/redis.Dockerfile -t incept-redis:7.0 .
ARG DEBIAN_IMAGE=debian:12.12-slim
FROM ${DEBIAN_IMAGE}
# The version of incept the image was built from (make images passes pyproject.toml's).
ARG INCEPT_VERSION=unknown
LABEL org.opencontainers.image.title="incept-redis" \
      org.opencontainers.image.version="${INCEPT_VERSION}" \
      org.opencontainers.image.description="Debian's redis-server for incept's queues and job state"
# uid 999 / gid 1000 own /data, as in the stock alpine image (compose runs it as
# 999:1000); Kubernetes runs it as 10001 with fsGroup 10001.
RUN groupadd --gid 1000 redis \
 && useradd --system --uid 999 --gid 1000 --no-create-home --home-dir /data --shell /usr/sbin/nologin redis \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server=5:7.0.* \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown 999:1000 /data
COPY --chmod=0755 docker/redis-entrypoint.sh /usr/local/bin/redis-entrypoint
WORKDIR /data
USER 999:1000
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
ENTRYPOINT ["redis-entrypoint"]
CMD ["redis-server"]
