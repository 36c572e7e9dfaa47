#!/usr/bin/env bash
# Builds the MinIO server used by the S3 tests, the S3 benchmarks and `hack/sandbox up --s3`
# from the Go module proxy, once, into a cache shared by every checkout of this machine.
# Prints the binary's path. Safe to run again: a cached binary is reused (about 5.5 minutes
# cold on two cores, instant afterwards).
#   FLIGHTCTL_DR_MINIO_VERSION  module version to build (default below)
#   FLIGHTCTL_DR_CACHE          cache root (default ~/.cache/flightctl-dr)
set -euo pipefail
export PATH="/usr/local/go/bin:$PATH"
version="${FLIGHTCTL_DR_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
cache="${FLIGHTCTL_DR_CACHE:-$HOME/.cache/flightctl-dr}"
dir="$cache/minio/$version"
bin="$dir/minio"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "build-minio: building github.com/minio/minio@$version (several minutes the first time)" >&2
# A private GOBIN so that a half-written binary never sits at the cached path.
GOBIN="$tmp" GOFLAGS=-buildvcs=false nice -n 10 go install -trimpath "github.com/minio/minio@$version" >&2
mv "$tmp/minio" "$bin"
echo "$bin"
