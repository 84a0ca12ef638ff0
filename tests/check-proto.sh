#!/usr/bin/env bash
# Compares berth's proto with the upstream CRI API it targets, k8s.io/cri-api at the release named
# in proto/cri-api-version, from the Go module proxy: ../shared/cri-api/check-proto turns
# upstream's file into facts (names, numbers, types) and checks ours against them. Nothing of
# upstream's is kept in the project.
set -euo pipefail
cd "$(dirname "$0")/.."

# The release is named once, in proto/cri-api-version (berthd --version prints it too).
version=$(cat proto/cri-api-version)
checker=../shared/cri-api/check-proto
if ! command -v go >/dev/null 2>&1; then
  export PATH=$PATH:/usr/local/go/bin
fi
dir=$(go mod download -json "k8s.io/cri-api@$version" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
facts=$(mktemp)
trap 'rm -f "$facts"' EXIT
"$checker" --emit "$dir/pkg/apis/runtime/v1/api.proto" --label "k8s.io/cri-api $version" >"$facts"
"$checker" proto/runtime/v1/api.proto --facts "$facts"
