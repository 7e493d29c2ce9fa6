#!/bin/sh
# Runs redis-server as the redis user in /data, reachable from the compose network.
set -eu
chown -R redis:redis /data
exec setpriv --reuid=redis --regid=redis --init-groups "$@" --protected-mode no
