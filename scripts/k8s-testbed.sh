#!/usr/bin/env bash
# Builds, once, the binaries of the Kubernetes test cluster that internal/testbed starts:
#   kube-apiserver  from the Go module proxy (k8s.io/kubernetes, every staging module replaced
#                   by its matching v0.x tag), in a scratch module of its own;
#   kubenode        the exec node of hack/kubenode (virtual-kubelet, its own module);
#   etcd            a link to Debian's etcd-server.
# They go into a cache folder reused by every later run (and by other clones of the project):
#   ${FLIGHTCTL_DR_K8S_CACHE:-${FLIGHTCTL_DR_CACHE:-$HOME/.cache/flightctl-dr}/k8s-v1.37.0}/bin
# (internal/testbed looks there). A cold kube-apiserver build takes about 16 minutes of CPU
# (5 minutes of wall time on two idle cores, much longer on a loaded machine); a warm run
# returns at once.
# Usage: scripts/k8s-testbed.sh [--print-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="/usr/local/go/bin:$PATH"

k8s_version=v1.37.0
staging_version=v0.37.0
cache=${FLIGHTCTL_DR_K8S_CACHE:-${FLIGHTCTL_DR_CACHE:-$HOME/.cache/flightctl-dr}/k8s-$k8s_version}
bin=$cache/bin

if [ "${1:-}" = "--print-dir" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# One build at a time, even when two test runs start together.
exec 9>"$cache/.lock"
flock 9

start=$(date +%s)

if [ ! -x "$bin/kube-apiserver" ]; then
  echo "k8s-testbed: building kube-apiserver $k8s_version (about 5 minutes the first time)" >&2
  src=$cache/src-apiserver
  rm -rf "$src"
  mkdir -p "$src"
  gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$k8s_version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  {
    echo "module flightctl.dr/k8s-testbed-apiserver"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $k8s_version"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } >"$src/go.mod"
  (cd "$src" && GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0 \
    go build -trimpath -ldflags '-s -w' -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
fi

# The exec node is small (seconds); rebuilt when its source changed.
node_src=$root/hack/kubenode
if [ -d "$node_src" ]; then
  sum=$(cat "$node_src"/go.mod "$node_src"/go.sum "$node_src"/*.go | sha256sum | cut -c1-16)
  if [ ! -x "$bin/kubenode" ] || [ "$(cat "$bin/kubenode.sum" 2>/dev/null)" != "$sum" ]; then
    echo "k8s-testbed: building the exec node (hack/kubenode)" >&2
    (cd "$node_src" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$bin/kubenode.tmp" .)
    mv "$bin/kubenode.tmp" "$bin/kubenode"
    echo "$sum" >"$bin/kubenode.sum"
  fi
fi

if command -v etcd >/dev/null 2>&1; then
  ln -sf "$(command -v etcd)" "$bin/etcd"
else
  echo "k8s-testbed: etcd is missing; install the Debian package etcd-server (scripts/install-deps.sh)" >&2
  exit 1
fi

echo "k8s-testbed: ready in $bin ($(($(date +%s) - start)) s)" >&2
