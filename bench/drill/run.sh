#!/usr/bin/env bash
# Restore drill benchmark: a drill of an archive beside the live database and on a throwaway
# PostgreSQL, against a whole flightctl_restore of the same archive, on the restore
# benchmark's database (20,000 devices and about 1 GiB of events), on a private PostgreSQL
# 15, Redis and systemd user manager started by the benchmark itself (the Go benchmark
# BenchmarkDrillVsRestore in internal/drill). The archive comes from the real backup engine.
# Every drill is checked to leave the application units as they were (same main PID).
#
#   bench/drill/run.sh                        # about 1 GiB of SQL, 1 iteration
#   MB=128 BENCHTIME=2x bench/drill/run.sh    # a quicker run
#
# Needs root (systemd test manager, PostgreSQL as the postgres user), PostgreSQL 15 and
# redis-server (scripts/install-deps.sh). Everything it starts is stopped and removed by the
# benchmark's cleanup.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
MB=${MB:-1024}
BENCHTIME=${BENCHTIME:-1x}
echo "drill benchmark: about ${MB} MiB of SQL, -benchtime $BENCHTIME, $(nproc) CPUs" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
FLIGHTCTL_DR_BENCH_DRILL_MB=$MB \
  go test ./internal/drill/ -run '^$' -bench 'BenchmarkDrillVsRestore$' -benchtime "$BENCHTIME" -count 1 -timeout 90m 2>&1 |
  grep -E 'Benchmark|bench_test|ns/op|^ok|FAIL'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
