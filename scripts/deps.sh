#!/usr/bin/env bash
# Installs the Debian packages the tests, the lab and the benchmarks need (idempotent; needs root).
set -euo pipefail
pkgs=(etcd-server etcd-client iproute2 nftables iptables protobuf-compiler iperf3 containernetworking-plugins
      iputils-ping curl procps ca-certificates openssl)
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
# etcd-server's package starts a system etcd on 127.0.0.1:2379; the tests start their own, so keep it out of the way.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
