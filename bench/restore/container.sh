#!/usr/bin/env bash
# Restore benchmark with container access (`db_access: container`, a quadlet host's default):
# a whole flightctl_restore whose psql runs inside the database's podman container, against
# `podman exec -i <db> psql -f -` of the same dump into an empty database (the floor), with
# PostgreSQL and Redis in rootful podman containers and two application units under a systemd
# user manager, all started and removed by the benchmark (BenchmarkPodmanRestoreInContainer in
# internal/estate). It prints restore/psql, downtime-s (first unit stopped to last unit
# started) and its parts down-stop-s, down-swap-s, down-files-s, down-devprep-s,
# down-start-s.
#
#   bench/restore/container.sh                         # 20,000 devices, about 64 MiB of events
#   DEVICES=100000 MB=128 BENCHTIME=3x bench/restore/container.sh
#
# Needs root, podman with runc, busybox-static, PostgreSQL 15 and redis-server
# (scripts/install-deps.sh). LOG=1 prints the restore's steps with their times.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
DEVICES=${DEVICES:-20000}
MB=${MB:-64}
BENCHTIME=${BENCHTIME:-1x}
echo "restore benchmark, container access: $DEVICES devices, about ${MB} MiB of events, -benchtime $BENCHTIME, $(nproc) CPUs" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
FLIGHTCTL_DR_BENCH_CONTAINER_DEVICES=$DEVICES FLIGHTCTL_DR_BENCH_CONTAINER_MB=$MB FLIGHTCTL_DR_BENCH_LOG=${LOG:-0} \
  go test ./internal/estate/ -run '^$' -bench 'BenchmarkPodmanRestoreInContainer$' -benchtime "$BENCHTIME" -count 1 -timeout 60m 2>&1 |
  grep -E 'msg="(restore step|swapping the databases|sessions ended before the rename|databases swapped|database prepared|unit jobs done|restore completed)"|Benchmark|bench_test|ns/op|^ok|FAIL|SKIP' |
  sed -E 's/ (archive|journal|path|database)=[^ ]*//g'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
