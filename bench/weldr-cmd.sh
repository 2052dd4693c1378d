#!/usr/bin/env bash
# The harness's WELDR_CMD: runs weldr in the foreground on $PROXY_ADDR with
# $BACKEND1 and $BACKEND2 as its pool (see ../shared/bench/run.sh).
set -euo pipefail
: "${PROXY_ADDR:?}" "${BACKEND1:?}" "${BACKEND2:?}" "${WELDR_BIN:?}"
# weldr is exec'd below and reads its file again on SIGHUP, so nothing is
# left to remove it: one file per admin port, rewritten by each run.
admin_port=${WELDR_ADMIN_PORT:-28199}
cfg="${TMPDIR:-/tmp}/weldr-bench-$admin_port.toml"
cat >"$cfg" <<TOML
[proxy]
listen = "$PROXY_ADDR"
workers = ${WELDR_WORKERS:-2}
[admin]
listen = "127.0.0.1:$admin_port"
[state]
file = ""
[log]
level = "warn"
[[servers]]
url = "http://$BACKEND1"
[[servers]]
url = "http://$BACKEND2"
TOML
exec "$WELDR_BIN" -config "$cfg"
