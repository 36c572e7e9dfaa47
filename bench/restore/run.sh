#!/usr/bin/env bash
# Restore benchmark: a whole flightctl_restore (checksum and metadata, load and verify into a temporary database
# over several sessions, swap, files, device preparation of 100,000 devices, unit restart, finalise) against
# `psql -f` of the same dump into an empty database, on a private PostgreSQL 15, Redis and
# systemd user manager started by the benchmark itself (the Go benchmark
# BenchmarkRestoreVsPsqlLoad in internal/restore; every iteration runs psql -f, then
# archive.Verify alone, then the whole restore over the default number of load sessions, then,
# with SERIAL=1 (the default), the whole restore with db_load_connections 1, the serial path,
# side by side). It prints restore/psql, downtime-s (units stopped to units started again)
# and the device count (DEVICES, default 100,000).
#
#   bench/restore/run.sh                    # about 1 GiB of SQL, 3 iterations
#   MB=128 BENCHTIME=1x bench/restore/run.sh  # a quicker run
#   PROFILE=/tmp/restore.prof MB=256 BENCHTIME=1x SERIAL=0 bench/restore/run.sh
#       # with a CPU profile: go tool pprof -tagfocus=phase=restore (or phase=loader-alone)
#   AUTOVACUUM=off ...                     # the server's autovacuum off, for CPU figures per part
#
# Besides restore/psql it prints loader-alone/psql (the dump checker and the loader on the plain
# dump file, no archive) and the CPU-seconds of each part (*-go-cpu-s, *-psql-cpu-s,
# *-backend-cpu-s); with LOG=1 (the default) every step's line carries the CPU-seconds so far.
#
# Needs root (systemd test manager, PostgreSQL as the postgres user), PostgreSQL 15 and
# redis-server (scripts/install-deps.sh). Everything it starts is stopped and removed by the
# benchmark's cleanup. Takes about 10 minutes at 1 GiB and 3 iterations on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
MB=${MB:-1024}
BENCHTIME=${BENCHTIME:-3x}
DEVICES=${DEVICES:-100000}
SERIAL=${SERIAL:-1}
echo "restore benchmark: about ${MB} MiB of SQL, $DEVICES devices, -benchtime $BENCHTIME, $(nproc) CPUs" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
PROF=()
if [ -n "${PROFILE:-}" ]; then
  PROF=(-cpuprofile "$PROFILE" -o "${PROFILE%.*}.test")
fi
FLIGHTCTL_DR_BENCH_RESTORE_MB=$MB FLIGHTCTL_DR_BENCH_LOG=${LOG:-1} \
  FLIGHTCTL_DR_BENCH_RESTORE_DEVICES=$DEVICES FLIGHTCTL_DR_BENCH_RESTORE_SERIAL=$SERIAL \
  FLIGHTCTL_DR_BENCH_AUTOVACUUM=${AUTOVACUUM:-on} \
  go test ./internal/restore/ -run '^$' -bench 'BenchmarkRestoreVsPsqlLoad$' -benchtime "$BENCHTIME" -count 1 -timeout 60m "${PROF[@]}" 2>&1 |
  grep -E 'msg="(verifying archive|archive verified|checking the archive.s checksum|archive checksum verified, metadata read|verifying the archive while loading it|restore journal created|restore step|loading the dump|loading the dump over several database sessions|dump loaded|dump loaded over several sessions|preparing devices in the temporary database|database prepared in the temporary database|database prepared|swapping the databases|sessions ended before the rename|databases swapped|unit jobs done|restore completed)"|Benchmark|bench_test|ns/op|^ok|FAIL' |
  sed -E 's/ (archive|journal|path|database)=[^ ]*//g'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
