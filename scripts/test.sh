#!/usr/bin/env bash
# Runs weldr's whole test suite: unit tests, end-to-end tests with the real
# binary and real worker processes. With a C compiler present (the race
# detector needs cgo) everything runs under -race.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

race=()
if command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1; then
  race=(-race)
else
  echo "test.sh: no C compiler found, running without the race detector" >&2
fi
go vet ./...
go test "${race[@]}" -count=1 -timeout 20m "$@" ./...
