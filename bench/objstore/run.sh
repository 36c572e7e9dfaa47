#!/usr/bin/env bash
# Off-host copy and retention benchmarks on a private MinIO (scripts/build-minio.sh):
#  - upload + verification of an archive (default 1 GiB) with each part size and
#    concurrency, against a plain single PUT of the same file to the same server and
#    minio-go's own multipart upload; the previous implementation (CRC64NVME parts, the
#    sha256 on the reading goroutine) beside; client-cpu-s and minio-cpu-s are the CPU
#    seconds of the uploader and of the server, which the machine's load does not skew;
#  - prune planning over 10,000 archives of an estate in a bucket (list in parallel key
#    ranges, find the newest that checks out, plan; one listing as reference), and over
#    10,000 names in memory.
# Results go to bench/RESULTS.md by hand; this prints them with the machine's load.
#   SIZE=bytes (default 1073741824)  COUNT=runs per benchmark (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="/usr/local/go/bin:$PATH"
bash scripts/build-minio.sh >/dev/null
size=${SIZE:-1073741824}
count=${COUNT:-3}
echo "# $(date -u +%FT%TZ), $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
FLIGHTCTL_DR_BENCH_S3_SIZE=$size go test -run '^$' -bench 'BenchmarkUpload' -benchtime 1x -count "$count" -timeout 60m ./internal/objstore/
go test -run '^$' -bench 'BenchmarkPrunePlanBucket10000' -benchtime 5x -count "$count" -timeout 30m ./internal/objstore/
go test -run '^$' -bench 'BenchmarkPlan10000' -count "$count" ./internal/retention/
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
