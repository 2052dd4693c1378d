#!/usr/bin/env bash
# Compares weldr with nginx, HAProxy, Caddy, a plain httputil.ReverseProxy
# and the bare backend, side by side, with the benchmark harness of
# ../shared/bench/run.sh (override with HARNESS=...). It builds weldr from
# this checkout and passes every other knob through to the harness:
#
#   ./bench/compare.sh                          # wrk -t2 -c64 -d10s, 2 rounds
#   ROUNDS=3 CONNS=256 ./bench/compare.sh
#   WELDR_WORKERS=1 ./bench/compare.sh          # workers (default 2)
#
# The harness installs wrk, nginx, haproxy and caddy from Debian's packages
# when they are missing (as root), talks only to 127.0.0.1, and stops what
# it started by PID.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
harness=${HARNESS:-$repo/../shared/bench/run.sh}
[[ -x $harness ]] || { echo "no benchmark harness at $harness (set HARNESS)" >&2; exit 1; }
export PATH=$PATH:/usr/local/go/bin

export WELDR_BIN=${WELDR_BIN:-${TMPDIR:-/tmp}/weldr-bench/weldr}
mkdir -p "$(dirname "$WELDR_BIN")"
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$WELDR_BIN" ./cmd/weldr)
export WELDR_CMD="exec $here/weldr-cmd.sh"
exec "$harness"
