#!/usr/bin/env bash
# One command for every benchmark: installs what they need (scripts/install-deps.sh, which
# includes hyperfine and GNU time), runs each benchmark script under bench/ in turn, and
# rewrites the "## Benchmark run (bench/run-all.sh)" section of bench/RESULTS.md with what
# each printed, the machine's load before and after each one, and how long it took.
#
#   bench/run-all.sh                          # every benchmark, their default sizes
#   BENCHES="restore backup" bench/run-all.sh # some of them (names below)
#   NO_INSTALL=1 bench/run-all.sh             # skip the package check
#
# Names: restore backup backup-container devprep archive encryption drill objstore kubernetes
# kubernetes-restore.
# The machine is shared: the load averages are printed beside every result, and every
# benchmark measures its ratios side by side within one run. A benchmark that fails is
# reported as failed in the section and the others still run. Needs root, like the
# benchmarks themselves (systemd test manager, PostgreSQL as the postgres user).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
export PATH=/usr/local/go/bin:$PATH

declare -A script=(
	[restore]=bench/restore/run.sh
	[backup]=bench/backup/run.sh
	[backup-container]=bench/backup/container.sh
	[devprep]=bench/devprep/run.sh
	[archive]=bench/archive/verify.sh
	[encryption]=bench/archive/encryption.sh
	[drill]=bench/drill/run.sh
	[objstore]=bench/objstore/run.sh
	[kubernetes]=bench/kubernetes/run.sh
	[kubernetes-restore]=bench/kubernetes/restore.sh
)
order="restore backup backup-container devprep archive encryption drill objstore kubernetes kubernetes-restore"
benches=${BENCHES:-$order}

if [ -z "${NO_INSTALL:-}" ]; then
	bash scripts/install-deps.sh || { echo "run-all: installing the dependencies failed" >&2; exit 1; }
fi
for p in hyperfine /usr/bin/time; do
	command -v "$p" >/dev/null || { echo "run-all: $p is missing after scripts/install-deps.sh" >&2; exit 1; }
done

out=$(mktemp -d "${TMPDIR:-/tmp}/flightctl-dr-bench-all.XXXXXX")
trap 'rm -rf "$out"' EXIT
section=$out/section.md
{
	echo "## Benchmark run (bench/run-all.sh)"
	echo
	echo "Written by \`bench/run-all.sh\` on $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start."
	echo "The machine may be shared: compare ratios measured within one benchmark, not absolute times across runs."
} >"$section"

for name in $benches; do
	s=${script[$name]:-}
	if [ -z "$s" ] || [ ! -f "$s" ]; then
		echo "run-all: no benchmark named $name (names: $order)" >&2
		continue
	fi
	echo "== run-all: $name ($s)" >&2
	before=$(cut -d' ' -f1-3 /proc/loadavg)
	start=$(date +%s)
	bash "$s" >"$out/$name.out" 2>"$out/$name.err"
	rc=$?
	secs=$(( $(date +%s) - start ))
	after=$(cut -d' ' -f1-3 /proc/loadavg)
	{
		echo
		echo "### $name: \`$s\`"
		echo
		if [ "$rc" = 0 ]; then
			echo "Took ${secs} s; load average before ${before}, after ${after}."
		else
			echo "**Failed** (exit status $rc) after ${secs} s; load average before ${before}, after ${after}. Last lines of its error output:"
			echo
			echo '```'
			tail -n 15 "$out/$name.err"
			echo '```'
		fi
		echo
		echo '```'
		# Results only: the Go benchmark lines, tables and summary lines the script printed.
		cat "$out/$name.out" "$out/$name.err" |
			grep -E '^(Benchmark|\||ok|FAIL|cpu:)|ns/op|load average|×' | head -n 80
		echo '```'
	} >>"$section"
	cat "$out/$name.out"
done

# Replace the section (from its heading to the next "## " heading, or the end) or append it.
python3 - "$section" bench/RESULTS.md <<'PY'
import sys
section = open(sys.argv[1]).read().rstrip("\n") + "\n"
path = sys.argv[2]
text = open(path).read()
head = "## Benchmark run (bench/run-all.sh)"
i = text.find(head)
if i < 0:
    text = text.rstrip("\n") + "\n\n" + section
else:
    j = text.find("\n## ", i + len(head))
    text = text[:i] + section + (text[j + 1:] if j >= 0 else "")
open(path, "w").write(text)
PY
echo "run-all: bench/RESULTS.md section rewritten" >&2
