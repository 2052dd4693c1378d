#!/usr/bin/env bash
# A/B of weldr builds, on small requests by default: wrk -t2 -c$CONNS through each
# build in turn, PAIRS times, alternating, and for each run requests/s,
# p99 and the CPU of weldr's process tree per request, split into user and
# kernel time (from /proc, 10 ms ticks), and the client connections each
# worker holds halfway through (from ss), and the two backends' CPU per
# request, which moves with what weldr sends them. Medians at the end. The harness
# (bench/compare.sh) compares weldr with other proxies; this compares
# weldr with itself, where the user-space share moves more clearly than
# the total on a noisy machine.
#
#   ./bench/ab.sh /tmp/weldr-old /tmp/weldr-new     # PAIRS=6 DURATION=6 CONNS=64 CLOSE= URL_PATH=/
#   URL_PATH=/large ./bench/ab.sh ...               # 1 MiB answers: req/s is then about MiB/s
#
# Builds: go build -o /tmp/weldr-new ./cmd/weldr (and from a worktree of
# the other commit). The backend is ../shared/bench's. Ports 29301-29303
# and 29399 on 127.0.0.1; everything started is stopped by PID.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
shared=${SHARED_BENCH:-$repo/../shared/bench}
export PATH=$PATH:/usr/local/go/bin
PAIRS=${PAIRS:-6} DURATION=${DURATION:-6} CONNS=${CONNS:-64} URL_PATH=${URL_PATH:-/}
# CLOSE=1: a connection per request (wrk sends "Connection: close").
hdr=(); [[ ${CLOSE:-} == 1 ]] && hdr=(-H "Connection: close")
(($# >= 1)) || { echo "usage: $0 WELDR_BINARY..." >&2; exit 2; }
names=$(for b in "$@"; do basename "$b"; done)
[[ $(sort -u <<<"$names" | wc -l) == $# ]] || { echo "the builds' file names must differ: they name the rows" >&2; exit 2; }
command -v wrk >/dev/null || { echo "missing wrk (run bench/compare.sh once as root to install it)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
stop() { for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "$@"; do wait "$p" 2>/dev/null || true; done; }
cleanup() { stop "${pids[@]}"; rm -rf "$work"; }
trap cleanup EXIT

(cd "$shared/backend" && go build -o "$work/backend" .)
"$work/backend" -addr 127.0.0.1:29301 >/dev/null 2>&1 & pids+=($!)
"$work/backend" -addr 127.0.0.1:29302 >/dev/null 2>&1 & pids+=($!)
backends=("${pids[@]}")
tick_us=$((1000000 / $(getconf CLK_TCK)))

# ticks FIELD PID...: the sum of /proc/PID/stat's field (14 user, 15 kernel).
ticks() { local f=$1 t=0 p; shift; for p in "$@"; do t=$((t + $(awk -v f="$f" '{print $f}' "/proc/$p/stat"))); done; echo "$t"; }

run() {
  local bin=$1 w wp tree u0 k0 b0 split
  PROXY_ADDR=127.0.0.1:29303 BACKEND1=127.0.0.1:29301 BACKEND2=127.0.0.1:29302 \
    WELDR_BIN=$bin WELDR_ADMIN_PORT=29399 "$here/weldr-cmd.sh" >"$work/weldr.log" 2>&1 &
  w=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:29303/ && break; sleep 0.1; done
  wrk -t2 -c"$CONNS" -d2s "${hdr[@]}" "http://127.0.0.1:29303$URL_PATH" >/dev/null # warm-up
  tree=("$w" $(pgrep -P "$w"))
  u0=$(ticks 14 "${tree[@]}") k0=$(ticks 15 "${tree[@]}") b0=$(($(ticks 14 "${backends[@]}") + $(ticks 15 "${backends[@]}")))
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "http://127.0.0.1:29303$URL_PATH" >"$work/wrk.out" &
  wp=$!
  # Halfway through, the client connections each worker holds.
  sleep "$((DURATION / 2))"
  split=$(for p in "${tree[@]:1}"; do { ss -tnpH state established '( sport = :29303 )' | grep -c "pid=$p,"; } || true; done | paste -sd/)
  wait "$wp"
  awk -v name="$(basename "$bin")" -v du=$(($(ticks 14 "${tree[@]}") - u0)) -v dk=$(($(ticks 15 "${tree[@]}") - k0)) -v db=$(($(ticks 14 "${backends[@]}") + $(ticks 15 "${backends[@]}") - b0)) -v tick="$tick_us" -v clients="$split" '
    /requests in/ {n = $1} /Requests\/sec/ {rps = $2} $1 == "99%" {p99 = $2}
    END {printf "%s\t%.0f\t%s\t%.2f\t%.2f\t%.2f\t%s\t%.2f\n", name, rps, p99, (du + dk) * tick / n, du * tick / n, dk * tick / n, clients, db * tick / n}' "$work/wrk.out"
  stop "$w"
}

printf 'build\treq/s\tp99\tcpu_us/req\tuser_us/req\tkernel_us/req\tclients_per_worker\tbackends_us/req\n' | tee "$work/runs.tsv"
for _ in $(seq "$PAIRS"); do
  for bin in "$@"; do run "$bin" | tee -a "$work/runs.tsv"; done
done
echo "medians of $PAIRS runs each (wrk -t2 -c$CONNS -d${DURATION}s ${hdr[*]} $URL_PATH):"
for bin in "$@"; do
  awk -F'\t' -v name="$(basename "$bin")" '
    function median(a, n,   i, j, t) {for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) {t = a[j]; a[j] = a[j-1]; a[j-1] = t}
      return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2}
    function ms(s) {return s ~ /us$/ ? s / 1000 : s ~ /ms$/ ? s + 0 : s * 1000} # wrk: 812.00us, 27.84ms, 1.02s
    $1 == name {n++; r[n] = $2; p[n] = ms($3); c[n] = $4; u[n] = $5; k[n] = $6; b[n] = $8}
    END {printf "%s\treq/s %.0f\tp99 %.2fms\tcpu %.2f us/req\tuser %.2f\tkernel %.2f\tbackends %.2f us/req\n", name, median(r, n), median(p, n), median(c, n), median(u, n), median(k, n), median(b, n)}' "$work/runs.tsv"
done
