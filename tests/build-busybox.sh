#!/usr/bin/env bash
# Builds the busybox that critest's stand-in images are made of, from Debian's `busybox` source
# package with upstream's `defconfig`, linked statically. Debian's busybox-static will not do:
# it lacks applets critest's specs run (ipcs, pgrep) and runs applets inside `sh`
# (FEATURE_SH_STANDALONE), whereas a spec masks /bin/ls and expects `sh -c ls` to fail.
#
# The binary is cached by the source version under
# ${BERTH_TEST_CACHE:-/var/cache/berth-tests}/busybox/<version>/busybox, so a second run costs
# nothing. Only Debian's archive is reached, through apt with a private deb-src list: the
# host's apt configuration is left as it was. Prints the binary's path.
set -euo pipefail

cache=${BERTH_TEST_CACHE:-/var/cache/berth-tests}

# The source version of the busybox binary package apt would install (its candidate); that
# source is fetched below, so the cache key names what was built. A binNMU (+b1) has a source
# version of its own in the Source: field; otherwise the two are the same.
candidate=$(apt-cache policy busybox 2>/dev/null | sed -n 's/^ *Candidate: //p')
if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
  echo "tests/build-busybox.sh: apt knows no busybox package (apt-get update?)" >&2
  exit 1
fi
version=$(apt-cache show "busybox=$candidate" 2>/dev/null \
  | sed -n 's/^Source: busybox (\(.*\))$/\1/p' | head -n 1)
version=${version:-$candidate}
dest=$cache/busybox/${version//:/_}

if [ -x "$dest/busybox" ]; then
  echo "$dest/busybox"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/build-busybox.sh: run as root to install the build tools" >&2
  exit 1
fi
need=()
for package in gcc make libc6-dev dpkg-dev; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || need+=("$package")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt fetches as the _apt user where it can.
chmod 0755 "$work"

# deb-src entries for the suites the host's deb entries name, in a private list and state
# directory: the host's /etc/apt and /var/lib/apt/lists stay untouched.
srclist=$work/sources.list
{
  # One-line format: "deb [opts] URI suite components".
  { grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true; } \
    | sed 's/^deb /deb-src /'
  # deb822 format: a stanza per Types: line.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /deb/ && uris != "") {
          n = split(suites, s, " ")
          for (i = 1; i <= n; i++) {
            line = "deb-src"
            if (signed != "") line = line " [signed-by=" signed "]"
            print line " " uris " " s[i] " " comps
          }
        }
        types = uris = suites = comps = signed = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^#/ { next }
      /^Types:/ { types = $0 }
      /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
      /^Components:/ { sub(/^Components:[[:space:]]*/, ""); comps = $0 }
      /^Signed-By:/ { sub(/^Signed-By:[[:space:]]*/, ""); signed = $0 }
      END { flush() }
    ' "$f"
  done
} >"$srclist"
mkdir -p "$work/lists/partial" "$work/archives/partial"
apt_private=(
  -o "Dir::Etc::SourceList=$srclist"
  -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache::Archives=$work/archives"
  -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache="
)
echo "fetching Debian's busybox source $version" >&2
apt-get "${apt_private[@]}" update -qq >&2
(
  cd "$work"
  # Downloads the .dsc and tarballs, checks them against the signed index and unpacks them
  # with Debian's patches applied.
  apt-get "${apt_private[@]}" source -qq "busybox=$version" >&2
)
src=$(find "$work" -maxdepth 1 -type d -name 'busybox-*' | head -n 1)
if [ -z "$src" ]; then
  echo "tests/build-busybox.sh: apt-get source left no busybox-* directory" >&2
  exit 1
fi

echo "building busybox $version (defconfig, static)" >&2
(
  cd "$src"
  make -s defconfig >/dev/null
  # Static, so that it runs in an image with nothing else; defconfig already leaves
  # FEATURE_SH_STANDALONE and FEATURE_PREFER_APPLETS off, so sh runs /bin/<applet> links.
  sed -i 's/^# CONFIG_STATIC is not set$/CONFIG_STATIC=y/' .config
  for off in FEATURE_SH_STANDALONE FEATURE_PREFER_APPLETS; do
    if grep -q "^CONFIG_$off=y" .config; then
      echo "tests/build-busybox.sh: defconfig turned on $off" >&2
      exit 1
    fi
  done
  { yes '' || true; } | make -s oldconfig >/dev/null
  grep -q '^CONFIG_STATIC=y' .config
  make -s -j"$(nproc)" busybox >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    exit 1
  }
)

"$src/busybox" --list | grep -qx ipcs
"$src/busybox" --list | grep -qx pgrep
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
install -m 0755 "$src/busybox" "$dest.tmp/busybox"
echo "$version" >"$dest.tmp/source-version"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest/busybox"
