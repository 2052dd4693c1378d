#!/usr/bin/env bash
# The harness's WELDR_CMD: runs weldr in the foreground on $PROXY_ADDR with
# $BACKEND1 and $BACKEND2 as its pool (see ../shared/bench/run.sh).
set -euo pipefail
: "${PROXY_ADDR:?}" "${BACKEND1:?}" "${BACKEND2:?}" "${WELDR_BIN:?}"
cfg=$(mktemp "${TMPDIR:-/tmp}/weldr-bench-XXXXXX.toml")
cat >"$cfg" <<TOML
[proxy]
listen = "$PROXY_ADDR"
workers = ${WELDR_WORKERS:-2}
[admin]
listen = "127.0.0.1:${WELDR_ADMIN_PORT:-28199}"
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
