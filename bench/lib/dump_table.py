"""The Markdown table of bench/lib/hyperfine.sh's timed commands against pg_dump alone.

Usage: dump_table.py WORK DBSIZE [user]
"""
import json
import os
import sys

work, dbsize = sys.argv[1], int(sys.argv[2])
user = sys.argv[3:] == ["user"]
ids = open(os.path.join(work, "order")).read().split()
res = {i: json.load(open(os.path.join(work, i + ".json")))["results"][0] for i in ids}
floor = res["pgdump"]["mean"]
dump = int(open(os.path.join(work, "pgdump.size")).read())
print(f"database {dbsize / 1e6:.0f} MB (pg_database_size), plain dump {dump / 1e6:.0f} MB")
print()
cols = ["what", "runs", "mean wall [s]", "min … max [s]"] + (["user [s]"] if user else []) + [
    "× pg_dump", "peak RSS [MiB]", "output [MB]", "load avg before → after"]
print("| " + " | ".join(cols) + " |")
print("|:---|" + "---:|" * (len(cols) - 2) + ":---|")
for i in ids:
    r = res[i]
    rss = max(int(x) for x in open(os.path.join(work, i + ".rss")).read().split()) / 1024
    size = int(open(os.path.join(work, i + ".size")).read()) / 1e6
    load = open(os.path.join(work, i + ".load")).read().strip().split("\n")
    sd = r["stddev"] or 0.0
    row = [r["command"], str(len(r["times"])), f"{r['mean']:.2f} ± {sd:.2f}", f"{r['min']:.2f} … {r['max']:.2f}"]
    if user:
        row.append(f"{r['user']:.2f}")
    row += [f"{r['mean'] / floor:.2f}", f"{rss:.0f}", f"{size:.0f}", f"{load[0]} → {load[-1]}"]
    print("| " + " | ".join(row) + " |")
