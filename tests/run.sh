#!/usr/bin/env bash
# The whole test suite, as the README gives it: unit tests of every crate and the e2e suites,
# which start real berthd daemons on private test nodes. Needs root (namespaces, mounts,
# cgroups) and installs its Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
tests/install-critools.sh >/dev/null
# The cluster suite's Kubernetes v1.37 binaries (cached by version; the first build takes
# about 16 minutes on 2 cores).
tests/install-kube.sh >/dev/null
# critest's stand-in images are made of a busybox built from Debian's source (cached).
tests/build-busybox.sh >/dev/null
exec cargo test --workspace --locked "$@"
