#!/usr/bin/env bash
# Runs every test: the Go tests on real PostgreSQL, Redis, systemd and podman, then the
# Ansible side (docs, integration targets, the molecule scenario, linters). Prints one
# closing line counting the Go test packages and Ansible suites that passed and failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export FLIGHTCTL_DR_REQUIRE_REAL=1
mkdir -p build
log=build/go-test.log

go test -count=1 -timeout 45m ./... 2>&1 | tee "$log"
go_status=${PIPESTATUS[0]}
go_passed=$(grep -c '^ok ' "$log" || true)
go_failed=$(grep -c '^FAIL\s' "$log" || true)

ansible_status=0
if [ "$go_status" -eq 0 ] || [ "${FLIGHTCTL_DR_TEST_CONTINUE:-}" = 1 ]; then
  make --no-print-directory test-ansible
  ansible_status=$?
fi

passed=$go_passed failed=$go_failed
if [ "$go_status" -ne 0 ] && [ "$go_failed" -eq 0 ]; then failed=$((failed + 1)); fi
if [ "$ansible_status" -eq 0 ] && [ "$go_status" -eq 0 ]; then passed=$((passed + 1)); fi
if [ "$ansible_status" -ne 0 ]; then failed=$((failed + 1)); fi
echo "test: go $go_passed packages ok, ansible suites $([ "$ansible_status" -eq 0 ] && echo ok || echo failed)"
echo "${passed} passed, ${failed} failed"
[ "$go_status" -eq 0 ] && [ "$ansible_status" -eq 0 ]
