#!/usr/bin/env bash
# Installs what the build, the tests and the demo need on a Debian 12 machine.
# Safe to run again: packages already present are left alone.
set -euo pipefail

packages=(
  ca-certificates git make gcc
  postgresql postgresql-client
  redis-server redis-tools
  ansible ansible-lint yamllint
  python3-psycopg2 python3-redis python3-voluptuous python3-pycodestyle pylint shellcheck
  python3-kubernetes
  podman runc catatonit busybox-static uidmap
  dbus-user-session systemd
  openssl jq
  hyperfine time
  openssh-client
  age
  etcd-server
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The postgresql package starts a cluster on 5432 through its init script on some
  # images; the tests run their own private clusters and never use it.
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    echo "install-deps: add /usr/local/go/bin to PATH" >&2
  else
    echo "install-deps: Go is missing; install Go 1.26 or newer" >&2
    exit 1
  fi
fi
# The S3 tests and `hack/sandbox up --s3` need a MinIO server: built once from the Go module
# proxy into a cache shared by every checkout (several minutes the first time).
bash "$(dirname "$0")/build-minio.sh" >/dev/null
# The Kubernetes test cluster (kube-apiserver from the Go module proxy and the exec node of
# hack/kubenode): built once into a cache shared by every checkout (about 5 minutes cold).
bash "$(dirname "$0")/k8s-testbed.sh"
echo "install-deps: ok" >&2
