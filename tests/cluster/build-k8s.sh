#!/usr/bin/env bash
# Builds the Kubernetes server components and etcd from their upstream Go modules
# at the versions in versions.env, into $CACHE/bin/<version>/. A finished build is
# marked with a stamp file, so an interrupted build is never mistaken for a cache hit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
CACHE=${ORCHARD_CACHE:-$HOME/.cache/orchard}
out="$CACHE/bin/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION"
[ -f "$out/.complete" ] && { echo "$out"; exit 0; }
mkdir -p "$out" "$CACHE/src"
work=$(mktemp -d "$CACHE/src/build.XXXX")
trap 'rm -rf "$work"' EXIT
minor=${KUBERNETES_VERSION#v1.}
staging="v0.$minor"  # v1.31.9 -> v0.31.9
gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
{
  echo "module orchard.local/k8sbuild"
  echo "go 1.22"
  echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
  for mod in $(sed -n 's#^\s*k8s.io/\([a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod"); do
    version=$staging
    for override in $STAGING_OVERRIDES; do
      [ "${override%%=*}" = "$mod" ] && version=${override#*=}
    done
    echo "replace k8s.io/$mod => k8s.io/$mod $version"
  done
} > "$work/go.mod"
cd "$work"
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
start=$(date +%s)
echo "building ${cmds[*]} $KUBERNETES_VERSION (a cold build takes many minutes) ..." >&2
pkgs=(); for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}"
echo "built Kubernetes components in $(( $(date +%s) - start ))s" >&2
