#!/usr/bin/env bash
# Builds the upstream CRI clients the tests drive berth with: crictl and critest of cri-tools,
# from the Go module proxy (Go is used for these test clients only). They are cached by version
# under $BERTH_TEST_CACHE (default /var/cache/berth-tests), so a second run costs nothing.
# Prints the directory that holds both binaries.
set -euo pipefail

version=v1.37.0
cache=${BERTH_TEST_CACHE:-/var/cache/berth-tests}
dest=$cache/cri-tools/$version

if [ -x "$dest/crictl" ] && [ -x "$dest/critest" ]; then
  echo "$dest"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  export PATH=$PATH:/usr/local/go/bin
fi
if ! command -v go >/dev/null 2>&1; then
  echo "tests/install-critools.sh: no Go toolchain found to build cri-tools $version" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The module cache is read-only; build from a writable copy of the released module.
src=$(go mod download -json "sigs.k8s.io/cri-tools@$version" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"

ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=$version"
mkdir -p "$work/bin"
(
  cd "$work/src"
  echo "building crictl and critest $version" >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$work/bin/crictl" ./cmd/crictl
  # critest is cri-tools' test binary: a ginkgo suite compiled with `go test -c`.
  CGO_ENABLED=0 go test -c -trimpath -ldflags "$ldflags" -o "$work/bin/critest" ./cmd/critest
)

mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
mv "$work/bin" "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
