#!/usr/bin/env bash
# Installs every Debian package the build, the tests, the lab and the benchmarks need (idempotent; needs root).
# The list is scripts/packages; .ci/run proves it complete (scripts/deps-check.sh). Nothing else on the machine is
# touched: no service is stopped or reconfigured (etcd-server's package starts a system etcd on 127.0.0.1:2379;
# the tests and the lab run their own etcd inside network namespaces or on free ports and never need it gone).
set -euo pipefail
cd "$(dirname "$0")"
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' packages | tr -s ' \t' '\n' | sed '/^$/d')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
