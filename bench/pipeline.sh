#!/usr/bin/env bash
# Pipelined requests (HTTP/1.1, depth 16) through nginx and weldr, side by
# side: wrk -t2 -c64 with bench/pipeline.lua, alternating rounds, reporting
# requests/s, errors and CPU µs per request of each proxy's process tree.
# nginx is configured as in ../shared/bench/run.sh. Ports 28201-28204 and
# 29201-29202 on 127.0.0.1; everything started is stopped by PID.
#
#   ./bench/pipeline.sh                  # ROUNDS=3 DURATION=10s DEPTH=16 CONNS=64
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
shared=${SHARED_BENCH:-$repo/../shared/bench}
export PATH=$PATH:/usr/local/go/bin
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} DEPTH=${DEPTH:-16} CONNS=${CONNS:-64}
for tool in wrk nginx; do command -v $tool >/dev/null || { echo "missing $tool (run bench/compare.sh once as root to install it)" >&2; exit 1; }; done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 1; for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

(cd "$shared/backend" && go build -o "$work/backend" .)
export WELDR_BIN=$work/weldr
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$WELDR_BIN" ./cmd/weldr)
"$work/backend" -addr 127.0.0.1:29201 >/dev/null 2>&1 & pids+=($!)
"$work/backend" -addr 127.0.0.1:29202 >/dev/null 2>&1 & pids+=($!)

mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/client; proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fcgi; uwsgi_temp_path $work/nginx/tmp/uwsgi; scgi_temp_path $work/nginx/tmp/scgi;
  keepalive_requests 1000000; keepalive_timeout 120s;
  upstream backends { server 127.0.0.1:29201; server 127.0.0.1:29202; keepalive 512; keepalive_requests 1000000; keepalive_timeout 120s; }
  server {
    listen 127.0.0.1:28201 backlog=4096;
    location / {
      proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffering on; proxy_max_temp_file_size 0;
      proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;
    }
  }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off; master_process on;' >/dev/null 2>&1 & pids+=($!)
declare -A root=([nginx]=$! [weldr]=)
PROXY_ADDR=127.0.0.1:28204 BACKEND1=127.0.0.1:29201 BACKEND2=127.0.0.1:29202 WELDR_ADMIN_PORT=28203 \
  "$here/weldr-cmd.sh" >/dev/null 2>&1 & pids+=($!)
root[weldr]=$!
declare -A port=([nginx]=28201 [weldr]=28204)
for t in nginx weldr; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:${port[$t]}/" && break; sleep 0.1; done
done

# CPU ticks of a process tree.
ticks() {
  local sum=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    [[ -r /proc/$p/stat ]] || continue
    local s; s=$(sed 's/^.*) //' "/proc/$p/stat")
    set -- $s; sum=$((sum + ${12} + ${13}))
  done
  echo $sum
}
hz=$(getconf CLK_TCK)
printf 'round\ttarget\treq/s\tp99ms\terrors\tcpu_us_per_req\n'
for t in nginx weldr; do wrk -t2 -c"$CONNS" -d3s -s "$here/pipeline.lua" "http://127.0.0.1:${port[$t]}/" -- / "$DEPTH" >/dev/null; done
for r in $(seq "$ROUNDS"); do
  for t in nginx weldr; do
    c0=$(ticks "${root[$t]}")
    out=$(wrk -t2 -c"$CONNS" -d"$DURATION" -s "$here/pipeline.lua" "http://127.0.0.1:${port[$t]}/" -- / "$DEPTH")
    c1=$(ticks "${root[$t]}")
    line=$(grep '^RESULT' <<<"$out")
    awk -v r="$r" -v t="$t" -v c=$((c1 - c0)) -v hz="$hz" -v line="$line" 'BEGIN {
      n = split(line, kv, " "); for (i = 2; i <= n; i++) { split(kv[i], p, "="); R[p[1]] = p[2] }
      printf "%d\t%s\t%.0f\t%.2f\t%d\t%.2f\n", r, t, R["requests"] / (R["duration_us"] / 1e6), R["p99_us"] / 1000, R["errors"], c * 1e6 / hz / R["requests"]
    }'
  done
done
