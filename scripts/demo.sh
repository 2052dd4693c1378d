#!/usr/bin/env bash
# Runs weldr in the foreground with a demo pool: two bundled test origins on
# 127.0.0.1:12345 and :12346, the first one listed in the config, the proxy
# on 127.0.0.1:8080 and the admin API on 127.0.0.1:8687. Ctrl-C stops it all.
# Override the ports with WELDR_PROXY_LISTEN / WELDR_ADMIN_LISTEN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

mkdir -p bin
go build -o bin/weldr ./cmd/weldr
go build -o bin/weldr-test-server ./cmd/weldr-test-server

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for port in 12345 12346; do
  bin/weldr-test-server "$port" &
  pids+=($!)
done

bin/weldr -config scripts/demo.toml &
weldr=$!
pids+=("$weldr")
trap 'kill -TERM "$weldr" 2>/dev/null || true' INT TERM
wait "$weldr" || true
