#!/usr/bin/env bash
# Builds weldr's .deb and .rpm into dist/ (or $DIST) with nfpm v2.45.2.
# The version is VERSION, plus a pre-release suffix from git when HEAD is
# not a tag matching it: 0.1.0-dev.20261122.1a2b3c4.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=$PATH:/usr/local/go/bin

version=$(tr -d ' \n' <VERSION)
if git rev-parse --git-dir >/dev/null 2>&1 && ! git describe --exact-match --tags --match "v$version" HEAD >/dev/null 2>&1; then
  version="$version-dev.$(git log -1 --format=%cd --date=format:%Y%m%d).$(git rev-parse --short=7 HEAD)"
fi
export WELDR_VERSION=$version
export GOARCH=${GOARCH:-$(go env GOARCH)}
dist=${DIST:-$PWD/dist}
mkdir -p "$dist"
dist=$(cd "$dist" && pwd)

# nfpm takes contents relative to where it runs: stage them.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/packaging" "$stage/systemd"
cp -r packaging/nfpm.yaml packaging/sysusers.conf packaging/scripts "$stage/packaging/"
cp systemd/weldr.service "$stage/systemd/"
cp config.example.toml "$stage/"

ldflags="-s -w -X github.com/weldr-proxy/weldr/manager.Version=$version"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$stage/bin/weldr" ./cmd/weldr
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$stage/bin/weldr-test-server" ./cmd/weldr-test-server

GOBIN="$stage" go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
for packager in deb rpm; do
  (cd "$stage" && ./nfpm package --config packaging/nfpm.yaml --packager "$packager" --target "$dist/") >&2
done
