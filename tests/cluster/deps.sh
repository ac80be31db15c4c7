#!/usr/bin/env bash
# Installs the Debian packages the local cluster and the image builds need.
# Fast and silent when everything is already there; needs root and apt.
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables conntrack iproute2 kmod
      buildah skopeo mmdebstrap openssl gcc libc6-dev socat ethtool util-linux)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#pkgs[@]} packages present"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "deps: missing ${missing[*]}; run as root to install them" >&2; exit 1; }
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: installed ${#missing[@]} packages"
