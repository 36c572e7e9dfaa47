#!/bin/sh
# Device preparation benchmark: 100,000 devices across 10 organizations, the whole
# preparation and its KV part against upstream's one SETNX per device, on loopback and
# through a proxy adding 0.5 ms each way (about 1 ms per round trip); owner-loopback is the
# whole preparation as the tables' owner, whose transaction builds the btree indexes of
# devices again instead of maintaining them row by row (db-cpu-s: the database session's CPU).
#
#   bench/devprep/run.sh                 # 3 iterations each
#   BENCH_DEVICES=20000 bench/devprep/run.sh 1x
#   BENCH_LOG=1 ...                      # phase timings on stderr
#
# The sequential SETNX run through the 1 ms link is bounded to BENCH_SEQ_SAMPLE keys
# (default 3000; the full 100,000 would take over 100 s per iteration) and reported per key.
set -eu
cd "$(dirname "$0")/../.."
exec go test -run '^$' -bench . -benchtime "${1:-3x}" -timeout 60m ./internal/devprep/
