#!/usr/bin/env bash
# Runs every test: the Go tests on real PostgreSQL, Redis, systemd and podman, then the
# Ansible side (docs, integration targets, the molecule scenario, linters). The closing
# lines say what ran, what passed, what failed and what was skipped, and why; the exit
# status is 0 only when everything ran and passed.
#
# GO and MAKE name the go and make commands (tests of this script replace them).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export FLIGHTCTL_DR_REQUIRE_REAL=1
GO=${GO:-go}
MAKE=${MAKE:-make}
mkdir -p build
log=build/go-test.log

$GO test -count=1 -timeout 45m ./... 2>&1 | tee "$log"
go_status=${PIPESTATUS[0]}
go_passed=$(grep -cE '^ok\s' "$log" || true)
go_failed_list=$(grep -E '^FAIL\s' "$log" | awk '{print $2}' | sort -u | paste -sd' ' - || true)
go_failed=0
[ -z "$go_failed_list" ] || go_failed=$(wc -w <<<"$go_failed_list")
go_notests=$(grep -cE '^\?\s.*\[no test files\]' "$log" || true)
go_skipped_tests=$(grep -cE '^\s*--- SKIP:' "$log" || true)

ansible_status=
ansible_why=
if [ "$go_status" -eq 0 ] || [ "${FLIGHTCTL_DR_TEST_CONTINUE:-}" = 1 ]; then
  $MAKE --no-print-directory test-ansible
  ansible_status=$?
else
  ansible_why="the Go tests failed (FLIGHTCTL_DR_TEST_CONTINUE=1 runs them anyway)"
fi

echo
echo "test summary:"
go_line="go: $((go_passed + go_failed)) packages ran: $go_passed passed, $go_failed failed"
[ "$go_failed" -eq 0 ] || go_line+=" ($go_failed_list)"
go_line+="; $go_notests without tests; $go_skipped_tests tests skipped"
if [ "$go_status" -ne 0 ] && [ "$go_failed" -eq 0 ]; then
  go_line+="; go test itself failed (exit $go_status) before reporting a package: see $log"
fi
echo "  $go_line"
if [ -z "$ansible_status" ]; then
  echo "  ansible suites (make test-ansible): skipped: $ansible_why"
elif [ "$ansible_status" -eq 0 ]; then
  echo "  ansible suites (make test-ansible): ran, passed"
else
  echo "  ansible suites (make test-ansible): ran, failed (exit $ansible_status)"
fi
if [ "$go_status" -eq 0 ] && [ "${ansible_status:-1}" -eq 0 ]; then
  echo "result: passed"
  exit 0
fi
echo "result: FAILED"
exit 1
