#!/bin/sh
# As the stock redis image's entrypoint: `redis-server ...` gets protected mode
# off (a password or the network rules guard it); any other command runs as is.
set -e
if [ "$1" = "redis-server" ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
