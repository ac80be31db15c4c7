#!/usr/bin/env bash
# Builds the Kubernetes server components, etcd, CoreDNS and the argocd CLI from their
# upstream Go modules at the versions pinned in versions.env, into
# $ORCHARD_CACHE/bin/<name>-<version>/.
# A finished build is marked with a .complete stamp, so an interrupted build is
# never mistaken for a cache hit. Prints the output directories on success.
#   build.sh            build what is missing (etcd, kubernetes, coredns)
#   build.sh etcd       build only etcd (or only kubernetes, coredns, argocd)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
CACHE=${ORCHARD_CACHE:-$HOME/.cache/orchard}
command -v go >/dev/null || { echo "build: Go is not on PATH; install Go >= 1.22 to build Kubernetes" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { echo "build: $*" >&2; }

workdir() {
  mkdir -p "$CACHE/src"
  mktemp -d "$CACHE/src/build.XXXX"
}

build_kubernetes() {
  local out="$CACHE/bin/kubernetes-$KUBERNETES_VERSION"
  [ -f "$out/.complete" ] && { echo "$out"; return; }
  mkdir -p "$out"
  local work; work=$(workdir)
  local minor=${KUBERNETES_VERSION#v1.}
  local staging="v0.$minor"  # v1.31.9 -> v0.31.9
  local gomod
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes names its staging modules v0.0.0 with local replaces; a module
  # that depends on it must replace each with its published v0.<minor>.<patch> twin.
  {
    echo "module orchard.local/k8sbuild"
    echo "go 1.22"
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    local mod version override
    for mod in $(sed -n 's#^\s*k8s.io/\([a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod"); do
      version=$staging
      for override in $STAGING_OVERRIDES; do
        [ "${override%%=*}" = "$mod" ] && version=${override#*=}
      done
      echo "replace k8s.io/$mod => k8s.io/$mod $version"
    done
  } > "$work/go.mod"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
  local pkgs=() c
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  local start; start=$(date +%s)
  log "building ${cmds[*]} $KUBERNETES_VERSION into $out (cold: 5-30 min on 2 cores) ..."
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
  rm -rf "$work"
  touch "$out/.complete"
  log "built Kubernetes $KUBERNETES_VERSION in $(( $(date +%s) - start ))s"
  echo "$out"
}

build_etcd() {
  local out="$CACHE/bin/etcd-$ETCD_VERSION"
  [ -f "$out/.complete" ] && { echo "$out"; return; }
  mkdir -p "$out"
  local work; work=$(workdir)
  printf 'module orchard.local/etcdbuild\ngo 1.22\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" > "$work/go.mod"
  local start; start=$(date +%s)
  log "building etcd $ETCD_VERSION into $out ..."
  local ldflags="-s -w"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$work"
  touch "$out/.complete"
  log "built etcd $ETCD_VERSION in $(( $(date +%s) - start ))s"
  echo "$out"
}

# The plugins compiled into CoreDNS, in no particular order (plugin.cfg decides it):
# those the harness's Corefile uses (components.corefile). No forward plugin, so the
# cluster's DNS cannot send a query anywhere. The cache key is the version alone, so
# after changing this list remove $ORCHARD_CACHE/bin/coredns-<version>/.
COREDNS_PLUGINS_BUILT="bind errors kubernetes loadbalance"

build_coredns() {
  local out="$CACHE/bin/coredns-$COREDNS_VERSION"
  [ -f "$out/.complete" ] && { echo "$out"; return; }
  mkdir -p "$out"
  local work; work=$(workdir)
  local dir
  dir=$(cd "$work" && go mod download -json "github.com/coredns/coredns@$COREDNS_VERSION" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$dir/plugin.cfg" ] || { log "no plugin.cfg in the coredns module at $COREDNS_VERSION"; exit 1; }
  # CoreDNS's documented way to choose its plugins: edit plugin.cfg, then `go generate`
  # (directives_generate.go) writes the plugin imports and the directive order; the
  # build then uses the module's own go.mod and go.sum, as a release build does.
  cp -R "$dir/." "$work/coredns"
  chmod -R u+w "$work/coredns"
  awk -F: -v keep="$COREDNS_PLUGINS_BUILT" '
    BEGIN { n = split(keep, names, " "); for (i = 1; i <= n; i++) want[names[i]] = 1 }
    /^#/ || NF == 0 { next }
    $1 in want { print }' "$dir/plugin.cfg" > "$work/coredns/plugin.cfg"
  local wanted found
  wanted=$(wc -w <<< "$COREDNS_PLUGINS_BUILT")
  found=$(wc -l < "$work/coredns/plugin.cfg")
  [ "$wanted" -eq "$found" ] || {
    log "coredns $COREDNS_VERSION has only $found of the plugins $COREDNS_PLUGINS_BUILT"; exit 1; }
  local start; start=$(date +%s)
  log "building coredns $COREDNS_VERSION (plugins: $COREDNS_PLUGINS_BUILT) into $out ..."
  local ldflags="-s -w -X github.com/coredns/coredns/coremain.gitTag=$COREDNS_VERSION"
  (cd "$work/coredns" \
    && COREDNS_PLUGINS="" go run directives_generate.go \
    && go build -trimpath -tags grpcnotrace -ldflags "$ldflags" -o "$out/coredns" .)
  rm -rf "$work"
  touch "$out/.complete"
  log "built coredns $COREDNS_VERSION in $(( $(date +%s) - start ))s"
  echo "$out"
}

# Argo CD's one multi-call binary (cmd/main.go picks the component by its name); the unit
# tier runs it as the `argocd` CLI, whose `admin settings resource-overrides` evaluates the
# health scripts and actions of manifests/argocd/ with Argo CD's own code, offline, and the
# e2e tier runs it in the cluster (images/argocd) with the release's core-install.yaml.
build_argocd() {
  local out="$CACHE/bin/argocd-$ARGOCD_VERSION"
  [ -f "$out/.complete" ] && [ -f "$out/core-install.yaml" ] && { echo "$out"; return; }
  mkdir -p "$out"
  local work; work=$(workdir)
  local dir
  dir=$(cd "$work" && go mod download -json "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$dir/cmd/main.go" ] || { log "no cmd/main.go in the argo-cd module at $ARGOCD_VERSION"; exit 1; }
  # Built in a copy of the module with its own go.mod, go.sum and replace block, as a
  # release build is (a module that merely requires argo-cd would lose the replaces).
  cp -R "$dir/." "$work/argo-cd"
  chmod -R u+w "$work/argo-cd"
  local start; start=$(date +%s)
  log "building argocd $ARGOCD_VERSION into $out (cold: about 10 min on 2 cores) ..."
  local ldflags="-s -w -X github.com/argoproj/argo-cd/v3/common.version=${ARGOCD_VERSION#v}"
  (cd "$work/argo-cd" && go build -trimpath -ldflags "$ldflags" -o "$out/argocd" ./cmd)
  "$out/argocd" version --client --short >/dev/null
  # The release's own manifests for the components without the UI (the e2e tier installs
  # them with the image built from this binary).
  cp "$dir/manifests/core-install.yaml" "$out/core-install.yaml"
  rm -rf "$work"
  touch "$out/.complete"
  log "built argocd $ARGOCD_VERSION in $(( $(date +%s) - start ))s"
  echo "$out"
}

case "${1:-all}" in
  all) build_etcd; build_kubernetes; build_coredns ;;
  etcd) build_etcd ;;
  kubernetes) build_kubernetes ;;
  coredns) build_coredns ;;
  argocd) build_argocd ;;
  *) echo "usage: $0 [all|etcd|kubernetes|coredns|argocd]" >&2; exit 2 ;;
esac
