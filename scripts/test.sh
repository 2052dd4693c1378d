#!/usr/bin/env bash
# Runs weldr's whole test suite: unit tests, end-to-end tests with the real
# binary and real worker processes. With a C compiler present (the race
# detector needs cgo) everything runs under -race.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

# The package tests inspect .rpm files with rpm and the unit with
# systemd-analyze. As root with apt-get, install what is missing; otherwise
# those tests skip and say why.
missing=()
command -v rpm >/dev/null 2>&1 || missing+=(rpm)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${missing[*]}" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2
  else
    echo "test.sh: ${missing[*]} not installed and not root: their package tests will skip" >&2
  fi
fi

race=()
if command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1; then
  race=(-race)
else
  echo "test.sh: no C compiler found, running without the race detector" >&2
fi
go vet ./...
go test "${race[@]}" -count=1 -timeout 20m "$@" ./...
# The memory trim reads the executable's own mappings: test it in a
# position-independent build too (with a RELRO segment), as distributions
# build Go programs.
go test -buildmode=pie -count=1 ./internal/memtrim
# The race detector's instrumentation allocates: the tests that count
# allocations skip under it, so they run again without it.
if ((${#race[@]})); then
  go test -count=1 -run 'AllocatesNothing' ./...
fi
