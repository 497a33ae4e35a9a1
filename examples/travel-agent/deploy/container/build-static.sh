#!/usr/bin/env bash
# Builds the travel-agent release binary the container runs: statically linked (glibc,
# crt-static), so the runtime image holds nothing but it and the CA bundle. The Dockerfile runs
# this script, and so does scripts/container-check.sh, so both build the same binary.
# Prints the path of the binary the image takes.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
target=x86_64-unknown-linux-gnu
# With --target, RUSTFLAGS reach the binary but not build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p travel-agent --bin travel-agent --target "$target" >&2
dir=${CARGO_TARGET_DIR:-$PWD/target}/$target/release
# Without the debug info (the release profile keeps it for the benchmarks' profiles); the symbol
# table stays, so a panic's backtrace still names functions.
strip --strip-debug -o "$dir/travel-agent-image" "$dir/travel-agent"
echo "$dir/travel-agent-image"
