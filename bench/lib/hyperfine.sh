# shellcheck shell=bash
# Sourced by the benchmark scripts that time commands with hyperfine. Needs WORK (the run's
# directory) set before timed is called.

# timed ID LABEL RUNS WARMUP PREPARE CMD [LOG]: hyperfine on CMD (wrapped in /usr/bin/time
# for the peak RSS of every run, in $WORK/ID.rss), with the load average before and after
# (ID.load) and ID appended to $WORK/order for table. With LOG, each run first writes
# "== run" to it, and a failed command prints its end and the results written so far.
timed() {
	local id=$1 label=$2 runs=$3 warmup=$4 prepare=$5 cmd=$6 log=${7:-}
	cut -d' ' -f1-3 /proc/loadavg >"$WORK/$id.load"
	: >"$WORK/$id.rss"
	if [ -n "$log" ]; then
		: >"$log"
		cmd="echo \"== run\" >>$log; $cmd"
	fi
	hyperfine --style basic --runs "$runs" --warmup "$warmup" --prepare "$prepare" \
		--export-json "$WORK/$id.json" -n "$label" \
		"/usr/bin/time -f %M -a -o $WORK/$id.rss sh -c '$cmd'" >&2 || {
		echo "bench: $label failed" >&2
		if [ -n "$log" ]; then
			echo "the end of its log and results:" >&2
			tail -n 40 "$log" >&2
			cat "$WORK"/result-*.json >&2 2>/dev/null || true
		fi
		exit 1
	}
	cut -d' ' -f1-3 /proc/loadavg >>"$WORK/$id.load"
	echo "$id" >>"$WORK/order"
}

# dump_table DBSIZE [user]: the Markdown table of the commands timed so far against the
# first one, pgdump (whose output size is in $WORK/pgdump.size, each other's in ID.size);
# "user" adds hyperfine's user CPU column.
dump_table() {
	python3 "$(dirname "${BASH_SOURCE[0]}")/dump_table.py" "$WORK" "$@"
}
