#!/usr/bin/env bash
# Builds statically linked berthd and berth-monitor (musl libc) for distributions other than
# Debian: two files that run on any Linux of the same architecture. Needs Rust's musl target and
# a C compiler for musl (aws-lc for TLS and zstd are C):
#   rustup target add x86_64-unknown-linux-musl
#   apt-get install musl-tools        # Debian and Ubuntu; musl-gcc elsewhere
# Puts the binaries, stripped, into DIR (default target/static), their debug info beside them
# (BIN.debug), and prints the binaries' paths.
#
# The commit `berthd --version` names comes from git, or from BERTH_COMMIT when building
# outside a checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

dest=${1:-target/static}
target=$(uname -m)-unknown-linux-musl

if ! rustup target list --installed 2>/dev/null | grep -qxF "$target"; then
  echo "deploy/package/build-static.sh: Rust's $target target is not installed;" \
    "add it with: rustup target add $target" >&2
  exit 1
fi
# Without a musl C compiler aws-lc-sys stops with `failed to find tool "x86_64-linux-musl-gcc"`.
if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "deploy/package/build-static.sh: no musl-gcc; on Debian: apt-get install musl-tools" >&2
  exit 1
fi
cc_var=CC_${target//-/_}
export "$cc_var=${!cc_var:-musl-gcc}"

cargo build --release --locked --target "$target" -p berth-cri-server \
  --bin berthd --bin berth-monitor

mkdir -p "$dest"
for bin in berthd berth-monitor; do
  # Stripped, as a package ships them; the debug info (the release profile keeps line tables)
  # goes beside, in BIN.debug, which gdb finds through the debuglink.
  objcopy --only-keep-debug --compress-debug-sections=zlib "target/$target/release/$bin" \
    "$dest/$bin.debug"
  objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$dest/$bin.debug" \
    "target/$target/release/$bin" "$dest/$bin"
  chmod 0755 "$dest/$bin"
  chmod 0644 "$dest/$bin.debug"
  # A static binary has no interpreter (PT_INTERP); refuse to hand out anything else.
  if readelf --program-headers "$dest/$bin" | grep -q INTERP; then
    echo "deploy/package/build-static.sh: $dest/$bin is dynamically linked" >&2
    exit 1
  fi
  echo "$dest/$bin"
done
