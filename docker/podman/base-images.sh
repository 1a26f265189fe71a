#!/bin/sh
# Build the two local base images once (skipped when present):
#   localhost/incept-debian:bookworm   debootstrap's minimal bookworm + the host's extra CAs
#   localhost/incept-python:3.11-bookworm   the same + Debian's Python 3.11 (base.Containerfile)
# Nothing can be pulled from a registry here; everything comes from the Debian
# mirror apt already uses. Run as root, with CONTAINERS_CONF set (the Makefile does).
set -eu
DEBIAN_IMAGE=${DEBIAN_IMAGE:-localhost/incept-debian:bookworm}
PYTHON_IMAGE=${PYTHON_IMAGE:-localhost/incept-python:3.11-bookworm}
HERE=$(cd "$(dirname "$0")" && pwd)

if ! podman image exists "$DEBIAN_IMAGE"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d /var/tmp/incept-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "building $DEBIAN_IMAGE with debootstrap from $mirror (about 2 minutes)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; echo "error: debootstrap failed (log: $root.log)" >&2; exit 1; }
  rm -f "$root.log"
  # Debian's ca-certificates keeps local CAs when it regenerates the bundle.
  mkdir -p "$root/usr/local/share/ca-certificates"
  for ca in /usr/local/share/ca-certificates/*.crt; do
    [ -e "$ca" ] && cp "$ca" "$root/usr/local/share/ca-certificates/"
  done
  rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
  tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
  echo "built $DEBIAN_IMAGE"
fi

if ! podman image exists "$PYTHON_IMAGE"; then
  podman build --network host --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f "$HERE/base.Containerfile" -t "$PYTHON_IMAGE" "$HERE"
fi
