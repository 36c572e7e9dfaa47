#!/usr/bin/env bash
# Benchmark of archive encryption: the backup's archive stream and Verify of a 64 MiB
# SQL-like dump, plain against encrypted with age (one X25519 recipient; verify with the
# identity). Plain and encrypted runs alternate, so that a load that changes over time
# hits both alike; each run reports wall time and the process's CPU time (cpu-ms/op).
#
#   bench/archive/encryption.sh              # 6 rounds of 3 operations each
#   ROUNDS=10 BENCHTIME=5x bench/archive/encryption.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
ROUNDS=${ROUNDS:-6}
BENCHTIME=${BENCHTIME:-3x}
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/flightctl-encryption-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

"$GO" test -c -o "$WORK/archive.test" ./internal/archive
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for _ in $(seq "$ROUNDS"); do
  for b in 'BackupStream/plain$' 'BackupStream/encrypted$' 'VerifyStream/plain$' 'VerifyStream/encrypted-with-key$'; do
    (cd internal/archive && "$WORK/archive.test" -test.run '^$' -test.bench "$b" -test.benchtime "$BENCHTIME") | grep '^Benchmark' >> "$WORK/out.txt"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cat "$WORK/out.txt"
if command -v benchstat >/dev/null; then
  benchstat "$WORK/out.txt"
fi
