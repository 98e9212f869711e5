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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The Kubernetes manifests under deploy/ against the API schemas (strict) and their ConfigMap's JSON: one test more
# in the total below, passed or failed, never left out (no network for PyPI fails it too).
bash scripts/validate-manifests.sh
manifests=$?
set -e
((manifests == 0)) || rc=1
# One total over every test binary (cargo prints a line per binary; the last one is often an empty doc-test run).
# "ignored" is what testkit reports for a test that could not run here (no root, a kernel feature missing): it is
# counted as not run, never as passed, and each one is listed with its reason.
# The manifests' check adds its one test (mp passed, or mf failed).
awk -v mp=$((manifests == 0)) -v mf=$((manifests != 0)) \
    '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i;
                                                if ($(i+1) ~ /^ignored/) n += $i } }
     END { p += mp; f += mf; printf "\ntotal: %d passed, %d failed, %d not run\n", p, f, n }' "$log"
((manifests == 0)) || echo "  failed: the deploy/ manifests (scripts/validate-manifests.sh exited $manifests)"
grep -E '^test .* \.\.\. ignored' "$log" | sed -E 's/^test +/  not run: /; s/ +\.\.\. ignored/:/' || true
exit "$rc"
