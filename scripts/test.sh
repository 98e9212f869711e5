#!/usr/bin/env bash
# The test command: installs what the tests need, builds every binary (the black-box tests exec them), runs every
# test. Run as root: the tests make network namespaces, veths, bridges, VXLAN devices and firewall rules, each
# inside namespaces of their own, never in the machine's root namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (the tests create network namespaces)" >&2
  exit 1
fi
bash scripts/deps.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"
