#!/bin/sh
# `make images`: build every image in docker/ with podman, from the Dockerfiles
# as users get them, on the local base images (docker/podman/base-images.sh).
# The incept images share one Python-dependency layer (identical first
# instructions), built once and reused from podman's layer cache; pip's
# downloads stay in a cache mount. Prints each image's size at the end.
set -eu
cd "$(dirname "$0")/../.."
PYTHON_IMAGE=${PYTHON_IMAGE:-localhost/incept-python:3.11-bookworm}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-localhost/incept-debian:bookworm}
# One home for the version: pyproject.toml; images are tagged and labelled with it.
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
TAG=${INCEPT_IMAGE_TAG:-$VERSION}
TF=$(sed -n 's/^tensorflow-cpu==//p' requirements.lock)

docker/podman/base-images.sh

build() {  # build NAME DOCKERFILE [extra podman build args...]
  name=$1 file=$2
  shift 2
  start=$(date +%s)
  echo "== building $name from $file"
  # Docker format: OCI images drop HEALTHCHECK, which `podman healthcheck run` reads.
  if ! podman build --format docker --network host --layers --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" \
        --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg INCEPT_VERSION="$VERSION" "$@" -f "$file" -t "$name" . ; then
    echo "error: building $name from $file failed (podman's output above says at which step)." >&2
    echo "       Base images: $PYTHON_IMAGE, $DEBIAN_IMAGE (remove them to rebuild:" >&2
    echo "       podman rmi $PYTHON_IMAGE $DEBIAN_IMAGE); pip needs the package index." >&2
    exit 1
  fi
  echo "== built $name in $(( $(date +%s) - start )) s"
}

build "localhost/incept-evaluator:$TAG" docker/evaluator.Dockerfile
build "localhost/incept-gateway:$TAG" docker/gateway.Dockerfile
# The CPU build of TensorFlow: no GPU here (the Dockerfile's default is the GPU build).
build "localhost/incept-trainer:$TAG" docker/trainer.Dockerfile \
  --build-arg TENSORFLOW_PACKAGE="tensorflow-cpu==$TF"
build "localhost/incept-tfserving-standin:$TAG" docker/tfserving-standin.Dockerfile
build "localhost/incept-tensorboard:$TAG" docker/tensorboard.Dockerfile
build "localhost/incept-redis:7.0" docker/redis.Dockerfile

echo "== image sizes (podman image inspect)"
for image in evaluator gateway trainer tfserving-standin tensorboard; do
  podman image inspect --format "localhost/incept-$image:$TAG {{.Size}}" "localhost/incept-$image:$TAG"
done
podman image inspect --format "localhost/incept-redis:7.0 {{.Size}}" localhost/incept-redis:7.0
