#!/usr/bin/env bash
# Installs, from Debian's packages, what berth's tests run for real: a registry, CNI plugins,
# busybox for the test images, and the OCI runtimes the e2e suites cross-check against.
# Packages already installed are skipped, so this is cheap to run every time.
set -euo pipefail

packages=(
  docker-registry             # the registry the e2e nodes pull from
  containernetworking-plugins # bridge, host-local, loopback, portmap for pod networks
  busybox-static              # the test images are built from it
  runc crun                   # external OCI runtime handlers
  iproute2                    # the e2e nodes' network setup
  iptables                    # portmap's rules inside the test nodes
  procps util-linux           # sysctl, nsenter and mount in the e2e tests
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/install-deps.sh: run as root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
