#!/usr/bin/env bash
# Checks the statically linked (musl) berthd and berth-monitor: no interpreter and no shared
# libraries, `--version` runs, and berthd serves the CRI: started with a private root, state
# dir and socket (in its own mount and network namespaces), it answers the upstream crictl's
# `version` and `info`, then stops on SIGTERM with status 0.
#
# Usage: tests/check-static.sh [DIR]   DIR holds berthd and berth-monitor; without it they are
# built with deploy/package/build-static.sh, which needs Rust's musl target and musl-tools.
# CI does not run this: the musl target comes from static.rust-lang.org, not a package registry.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "tests/check-static.sh: $*" >&2
  exit 1
}

dir=${1:-}
if [ -z "$dir" ]; then
  dir=target/static
  deploy/package/build-static.sh "$dir" >/dev/null
fi
crictl=$(tests/install-critools.sh)/crictl

for bin in berthd berth-monitor; do
  description=$(file --brief "$dir/$bin")
  grep -Eq 'static-pie linked|statically linked' <<<"$description" \
    || fail "$bin is not static: $description"
  # ldd answers "statically linked" (or "not a dynamic executable") and lists no library.
  libraries=$(ldd "$dir/$bin" 2>&1 || true)
  grep -Eq 'statically linked|not a dynamic executable' <<<"$libraries" \
    || fail "$bin links shared libraries: $libraries"
  echo "$bin: $description" >&2
done
"$dir/berthd" --version | grep -qx 'CRI: v1 (k8s.io/cri-api '"$(cat proto/cri-api-version)"')' \
  || fail "berthd --version: $("$dir/berthd" --version)"
"$dir/berthd" --version >&2

tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/cni"
# Nested cgroups, a CNI directory of its own: nothing of the host's configuration is used.
cat >"$tmp/config.toml" <<EOF
[cgroup]
nest_under_self = true

[cni]
conf_dir = "$tmp/cni"
EOF
socket=$tmp/berth.sock
# The shell brings up the namespace's loopback (for the streaming server) and becomes berthd.
unshare --mount --net -- sh -c 'ip link set lo up && exec "$@"' berthd "$dir/berthd" \
  --config "$tmp/config.toml" --root "$tmp/root" --state "$tmp/state" --listen "unix://$socket" \
  2>"$tmp/berthd.log" &
pid=$!
for _ in $(seq 100); do
  [ -S "$socket" ] && break
  kill -0 "$pid" 2>/dev/null || fail "berthd exited: $(cat "$tmp/berthd.log")"
  sleep 0.1
done
[ -S "$socket" ] || fail "berthd made no socket in 10s: $(cat "$tmp/berthd.log")"

cat >"$tmp/crictl.yaml" <<EOF
runtime-endpoint: unix://$socket
image-endpoint: unix://$socket
EOF
crictl() { "$crictl" --config "$tmp/crictl.yaml" "$@"; }
version=$(crictl version)
grep -Eq '^RuntimeName: +berth$' <<<"$version" || fail "crictl version: $version"
grep -Eq '^RuntimeApiVersion: +v1$' <<<"$version" || fail "crictl version: $version"
crictl info >/dev/null || fail "crictl info failed"
echo "$version" >&2

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || fail "berthd exited with $status on SIGTERM: $(cat "$tmp/berthd.log")"
echo "static berthd served crictl and stopped on SIGTERM" >&2
