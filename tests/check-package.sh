#!/usr/bin/env bash
# Builds berth's Debian package with cargo-deb (release profile) and checks what an operator
# gets: the control fields, the files and their modes, the conffile, the systemd unit's
# maintainer scripts. Then installs it with dpkg into an empty scratch root and checks what
# landed where, as dpkg itself records it, and runs the installed berthd --version.
#
# The scratch root holds a static shell and nothing else: dpkg installs, removes and purges the
# package there for real (maintainer scripts included, chrooted), and nothing of the host is
# touched. The systemd parts of the scripts (enable and start through deb-systemd-helper) find
# no systemd there and do nothing, so they are checked as text.
#
# cargo-deb comes from crates.io, built once and cached by version under $BERTH_TEST_CACHE.
# Prints the path of the package it built.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_deb_version=3.8.0
cache=${BERTH_TEST_CACHE:-/var/cache/berth-tests}
cargo_deb=$cache/cargo-deb/$cargo_deb_version/bin/cargo-deb
if [ ! -x "$cargo_deb" ]; then
  echo "installing cargo-deb $cargo_deb_version" >&2
  cargo install --quiet --locked "cargo-deb@$cargo_deb_version" \
    --root "$cache/cargo-deb/$cargo_deb_version"
fi

fail() {
  echo "tests/check-package.sh: $*" >&2
  exit 1
}

version=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "berth-cri-server"))')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
cri_upstream=$(cat proto/cri-api-version)

start=$SECONDS
out=target/debian
rm -rf "$out"
# cargo-deb builds the release binaries itself (a no-op when they are current).
"$cargo_deb" -p berth-cri-server --locked --output "$out" >/dev/null
deb=$(echo "$out"/berth_*.deb)
dbgsym=$(echo "$out"/berth-dbgsym_*.ddeb)
[ -f "$deb" ] || fail "cargo-deb made no package"
[ -f "$dbgsym" ] || fail "cargo-deb made no debug symbols package"
echo "built $deb in $((SECONDS - start))s" >&2

field() { dpkg-deb --field "$deb" "$1"; }
expect_field() {
  local got
  got=$(field "$1")
  [ "$got" = "$2" ] || fail "control field $1: got '$got', want '$2'"
}
expect_field Package berth
expect_field Version "$version-1"
expect_field Architecture "$(dpkg --print-architecture)"
expect_field Recommends "runc, containernetworking-plugins"
# $auto: the shared libraries the binaries link, found by cargo-deb; libc at least.
field Depends | grep -q 'libc6' || fail "Depends lacks libc6: $(field Depends)"

# Every file with its mode and owner (root, by number), as the package carries it.
listing=$(dpkg-deb --contents "$deb" | awk '{print $1, $2, $6}')
expect_file() {
  grep -qxF -- "$1 0/0 ./$2" <<<"$listing" || fail "package lacks $2 ($1): $listing"
}
expect_file -rwxr-xr-x usr/bin/berthd
expect_file -rwxr-xr-x usr/bin/berth-monitor
expect_file -rw-r--r-- etc/berth/config.toml
expect_file -rw-r--r-- usr/lib/systemd/system/berthd.service
expect_file -rw-r--r-- usr/share/doc/berth/examples/crictl.yaml
expect_file -rw-r--r-- usr/share/doc/berth/copyright

control=$(mktemp -d)
root=$(mktemp -d)
trap 'rm -rf "$control" "$root"' EXIT
dpkg-deb --control "$deb" "$control"
grep -qxF /etc/berth/config.toml "$control/conffiles" || fail "config.toml is not a conffile"
# An upgrade must keep the pods: no preinst, and the unit is restarted after the new files are
# in place rather than stopped before (prerm) — with KillMode=process berthd finds them again.
[ ! -e "$control/preinst" ] || fail "unexpected preinst"
grep -q 'deb-systemd-helper enable berthd.service' "$control/postinst" \
  || fail "postinst does not enable berthd.service"
# Started on install, restarted on upgrade (the old version is the postinst's $2).
grep -q '_dh_action=restart' "$control/postinst" \
  && grep -qF 'deb-systemd-invoke $_dh_action berthd.service' "$control/postinst" \
  || fail "postinst does not start berthd.service, or restart it on upgrade"
grep -qF '[ "$1" = remove ]' "$control/prerm" || fail "prerm stops berthd.service on upgrade"

# dpkg into an empty root with its own, empty database. dpkg runs the maintainer scripts
# chrooted there, so the root gets a shell (Debian's static busybox, which the tests install)
# and /dev/null, and nothing else: no systemd, no deb-systemd-helper. The scripts must get
# through that, as they do in a container image or a debootstrap before first boot.
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/bin" "$root/dev"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
cp "$(command -v busybox)" "$root/bin/sh"
mknod -m 666 "$root/dev/null" c 1 3
pkg_status() { dpkg-query --root="$root" -W -f='${Status}' berth; }
# dpkg's own complaints (the libc6 below, the missing deb-systemd-helper) only on failure.
run_dpkg() {
  dpkg --root="$root" "$@" >"$control/dpkg.log" 2>&1 || {
    cat "$control/dpkg.log" >&2
    fail "dpkg $* failed"
  }
}
# The scratch database has no libc6: dependencies are the one thing not checked here (Depends
# is checked above).
run_dpkg --force-depends --install "$deb"
[ "$(pkg_status)" = "install ok installed" ] || fail "dpkg status after install: $(pkg_status)"
installed=$(dpkg-query --root="$root" -L berth)
for path in /usr/bin/berthd /usr/bin/berth-monitor /etc/berth/config.toml \
  /usr/lib/systemd/system/berthd.service /usr/share/doc/berth/examples/crictl.yaml; do
  grep -qxF "$path" <<<"$installed" || fail "dpkg did not record $path"
  [ -f "$root$path" ] || fail "$path did not land"
done
# The conffile as dpkg recorded it: the documented default, byte for byte.
recorded=$(dpkg-query --root="$root" -W -f='${Conffiles}' berth \
  | awk '$1 == "/etc/berth/config.toml" {print $2}')
[ "$recorded" = "$(md5sum <deploy/config.toml | cut -d' ' -f1)" ] \
  || fail "conffile /etc/berth/config.toml recorded as '$recorded'"
cmp -s "$root/etc/berth/config.toml" deploy/config.toml || fail "installed config.toml differs"
for mode in "755 /usr/bin/berthd" "755 /usr/bin/berth-monitor" "644 /etc/berth/config.toml" \
  "644 /usr/lib/systemd/system/berthd.service"; do
  got=$(stat -c '%a %U:%G' "$root${mode#* }")
  [ "$got" = "${mode%% *} root:root" ] || fail "${mode#* }: mode and owner $got"
done

# The unit starts the berthd the package installed, and that berthd writes the same default
# configuration the package ships.
exec_start=$(sed -n 's/^ExecStart=//p' "$root/usr/lib/systemd/system/berthd.service")
[ "$exec_start" = /usr/bin/berthd ] || fail "unit's ExecStart is '$exec_start'"
"$root/usr/bin/berthd" config default | cmp -s - "$root/etc/berth/config.toml" \
  || fail "berthd config default differs from /etc/berth/config.toml"

want="berthd $version
commit: $commit
CRI: v1 (k8s.io/cri-api $cri_upstream)"
got=$("$root/usr/bin/berthd" --version)
[ "$got" = "$want" ] || fail "berthd --version printed '$got', want '$want'"
echo "$got" >&2

# Removing keeps the operator's configuration; purging takes it too.
echo "# an operator's edit" >>"$root/etc/berth/config.toml"
run_dpkg --remove berth
[ "$(pkg_status)" = "deinstall ok config-files" ] || fail "dpkg status after remove: $(pkg_status)"
[ ! -e "$root/usr/bin/berthd" ] || fail "remove left /usr/bin/berthd"
grep -qxF "# an operator's edit" "$root/etc/berth/config.toml" || fail "remove lost config.toml"
run_dpkg --purge berth
[ ! -e "$root/etc/berth/config.toml" ] || fail "purge left /etc/berth/config.toml"
echo "package checked in $((SECONDS - start))s" >&2
echo "$deb"
