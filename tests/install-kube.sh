#!/usr/bin/env bash
# Builds the Kubernetes components the cluster under deploy/cluster runs on berth: kubelet,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl and etcd, from the
# Go module proxy (Go is used for these upstream programs only). They are cached by version under
# $BERTH_TEST_CACHE (default /var/cache/berth-tests), so a second run costs nothing.
# Prints the versions on stderr and the directory that holds the binaries on stdout.
#
# k8s.io/kubernetes cannot be `go install`ed as it is: its go.mod requires the staging modules
# (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and replaces them with paths inside its own
# repository, which the module zip does not carry. A generated wrapper module requires it and
# replaces each of those staging modules with its published v0.<minor>.<patch> release, which is
# what the Kubernetes release of the same number was built from.
# etcd is built in the same module, at the version k8s.io/kubernetes pins, from a main that calls
# its server's etcdmain, as etcd's own binary does.
set -euo pipefail

# The newest v1.37 patch release the module proxy served when this was written
# (`go list -m -versions k8s.io/kubernetes`); pinned so that the cache key is known offline.
version=${BERTH_KUBE_VERSION:-v1.37.2}
cache=${BERTH_TEST_CACHE:-/var/cache/berth-tests}
dest=$cache/kubernetes/$version
binaries=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd)

have_all() {
  local b
  for b in "${binaries[@]}"; do
    [ -x "$dest/$b" ] || return 1
  done
  [ -f "$dest/versions" ]
}

if have_all; then
  sed 's/^/tests\/install-kube.sh: /' "$dest/versions" >&2
  echo "$dest"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  export PATH=$PATH:/usr/local/go/bin
fi
if ! command -v go >/dev/null 2>&1; then
  echo "tests/install-kube.sh: no Go toolchain found to build Kubernetes $version" >&2
  exit 1
fi

if [[ ! $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
  echo "tests/install-kube.sh: $version is not a Kubernetes release version (v1.MINOR.PATCH)" >&2
  exit 1
fi
minor=${BASH_REMATCH[1]}
staging_version=v0.$minor.${BASH_REMATCH[2]}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kube_gomod=$(go mod download -json "k8s.io/kubernetes@$version" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')

# From k8s.io/kubernetes's go.mod: the staging modules it requires (those it replaces with a
# ./staging path; sample modules it does not require are left out, not all of them are published),
# the etcd server version it pins, and its Go language version.
go mod edit -json "$kube_gomod" > "$work/kube-gomod.json"
read -r go_version etcd_version < <(python3 - "$work/kube-gomod.json" <<'EOF'
import json, sys
mod = json.load(open(sys.argv[1]))
req = {r["Path"]: r["Version"] for r in mod.get("Require") or []}
print(mod["Go"], req["go.etcd.io/etcd/server/v3"])
EOF
)
staging=$(python3 - "$work/kube-gomod.json" <<'EOF'
import json, sys
mod = json.load(open(sys.argv[1]))
req = {r["Path"] for r in mod.get("Require") or []}
for r in mod.get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/") and r["Old"]["Path"] in req:
        print(r["Old"]["Path"])
EOF
)

mkdir -p "$work/mod/cmd/etcd"
cd "$work/mod"
cat > go.mod <<EOF
module berth.test/kube-build

go $go_version

godebug default=go1.$(echo "$go_version" | cut -d. -f2)
EOF
go mod edit -require="k8s.io/kubernetes@$version" -require="go.etcd.io/etcd/server/v3@$etcd_version"
for m in $staging; do
  go mod edit -replace="$m=$m@$staging_version"
done

cat > cmd/etcd/main.go <<'EOF'
// etcd, built from the etcd server module version that k8s.io/kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
EOF
# Never compiled: it only makes `go mod tidy` record what the Kubernetes commands import.
cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
echo "tests/install-kube.sh: resolving modules for kubernetes $version (staging $staging_version), etcd $etcd_version" >&2
go mod tidy

# The version fields the Kubernetes build sets (hack/lib/version.sh): the kubelet reports
# gitVersion to the API server, which checks its skew, and `kubectl version` prints it.
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
etcd_ldflags="-s -w"

mkdir -p "$work/bin"
echo "tests/install-kube.sh: building kubernetes $version and etcd $etcd_version (takes a while)" >&2
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$work/bin/" \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl
CGO_ENABLED=0 go build -trimpath -ldflags "$etcd_ldflags" -o "$work/bin/etcd" ./cmd/etcd
echo "tests/install-kube.sh: built in $(($(date +%s) - start))s" >&2

cat > "$work/bin/versions" <<EOF
kubernetes $version
kubernetes staging modules $staging_version
etcd $etcd_version
go $(go env GOVERSION)
EOF
cp go.mod "$work/bin/go.mod"

mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
mv "$work/bin" "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
sed 's/^/tests\/install-kube.sh: /' "$dest/versions" >&2
echo "$dest"
