#!/usr/bin/env bash
# Two estates in one inventory, from the installed collection:
#   1. dr_backup with the default forks backs both up at once; each estate's copies land in
#      its own controller directory, every archive beside its own checksum;
#   2. dr_restore --check --diff -l site-b on a controller that never restored shows the
#      plan (units, database, files, devices) and changes nothing on the server;
#   3. after a disaster on site-a, dr_restore -l site-a restores site-a's own archive;
#   4. site-b's archive onto site-a is refused (by name, and by source estate named wrong),
#      unless the source estate is named;
#   5. disaster twice: restore, disaster, restore again brings site-a back (changed), and a
#      third run changes nothing;
#   6. an unknown flightctl_dr_* variable is reported, and fails the run when strict;
#   7. a module runs under async, with options from module_defaults group/flightctl.dr.all.
# Two sandboxes run side by side (distinct ports, container prefixes, systemd managers and
# directories) and are stopped whatever happens.
#
# usage: tests/integration/fleet.sh
set -euo pipefail

suite=fleet estates="site-a:fleeta-:12 site-b:fleetb-:7"
# shellcheck source=tests/integration/estates.sh
. "$(dirname "$0")/estates.sh"

# 1. Backup of both estates at once (default forks).
state initial
play backup flightctl.dr.dr_backup || fail "dr_backup ($work/logs/backup.log)"
for s in site-a site-b; do
  n=$(find "$controller/$s" -maxdepth 1 -name 'flightctl-backup-*.tar.gz' | wc -l)
  [ "$n" -eq 1 ] || fail "$controller/$s holds $n archives, want 1"
  (cd "$controller/$s" && sha256sum -c --quiet ./*.sha256) || fail "an archive in $controller/$s does not match the checksum beside it"
  a=$(find "$controller/$s" -maxdepth 1 -name 'flightctl-backup-*.tar.gz')
  est=$(tar -xzOf "$a" metadata.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["estate"]["name"])')
  [ "$est" = "$s" ] || fail "$a records estate $est, want $s"
done
[ -z "$(find "$controller" -maxdepth 1 -type f)" ] || fail "copies were left outside the estates' directories: $(ls "$controller")"
[ -z "$(find "$controller" -name '.incoming-*')" ] || fail "an incoming directory was left on the controller"
archive_a=$(ls "$controller"/site-a/flightctl-backup-*.tar.gz)
archive_b=$(ls "$controller"/site-b/flightctl-backup-*.tar.gz)
ok "dr_backup kept one verified archive per estate ($(basename "$archive_a"), $(basename "$archive_b"))"

# 2. Check mode on a controller that never restored: the plan, nothing changed.
play check-b flightctl.dr.dr_restore -l site-b --check --diff || fail "dr_restore --check --diff ($work/logs/check-b.log)"
state after-check
cmp -s "$work/state/site-b.initial.json" "$work/state/site-b.after-check.json" || fail "check mode changed site-b: $(diff "$work/state/site-b.initial.json" "$work/state/site-b.after-check.json")"
for w in 'check mode: nothing was changed on the server' 'plan:      stop flightctl-api.service' 'database flightctl' 'files:' 'devices now'; do
  grep -qF "$w" "$work/logs/check-b.log" || fail "check mode output lacks '$w' ($work/logs/check-b.log)"
done
! grep -q 'would be copied' "$work/logs/check-b.log" || fail "check mode still says the archive would be copied first"
! grep -q 'will report their real state' "$work/logs/check-b.log" || fail "check mode says devices will report although nothing was restored"
ok "dr_restore --check --diff showed the plan and changed nothing on site-b"

# 3. Disaster on site-a, then dr_restore -l site-a: site-a's own archive.
play disaster-1 -l site-a "$here/disaster.yml" || fail "disaster ($work/logs/disaster-1.log)"
play restore-a flightctl.dr.dr_restore -l site-a || fail "dr_restore -l site-a ($work/logs/restore-a.log)"
state after-restore-a
python3 - "$work/state" <<'PY' || fail "site-a does not hold its own data after dr_restore -l site-a"
import json, sys
d = sys.argv[1]
a0, a1 = (json.load(open(f"{d}/site-a.{s}.json")) for s in ("initial", "after-restore-a"))
b0, b1 = (json.load(open(f"{d}/site-b.{s}.json")) for s in ("initial", "after-restore-a"))
assert a1["ca"] == a0["ca"] and a1["ca"] != b0["ca"], "site-a's CA"
assert a1["db"].split("|")[1] == a0["db"].split("|")[1], "site-a's device count"
assert b1 == b0, "site-b untouched"
PY
grep -qF "$(basename "$archive_a")" "$work/logs/restore-a.log" || fail "dr_restore -l site-a did not name site-a's archive"
grep -qF "database flightctl (no such database now, in the archive" "$work/logs/restore-a.log" ||
  fail "the plan of the restore after the database was dropped does not say it was not there ($work/logs/restore-a.log)"
! grep -qF "; files none" "$work/logs/restore-a.log" ||
  fail "the report of a restore that replaced the PKI says its plan had no files ($work/logs/restore-a.log)"
ok "dr_restore -l site-a restored site-a's own archive; site-b untouched"

# 4. site-b's archive onto site-a: refused unless the source estate is named.
if play refuse-named flightctl.dr.dr_restore -l site-a -e "flightctl_dr_restore_archive=$archive_b"; then
  fail "site-b's archive was restored onto site-a without naming the source estate"
fi
grep -q "was made on estate site-b.*but site-a is estate site-a" "$work/logs/refuse-named.log" || fail "the refusal does not say why ($work/logs/refuse-named.log)"
grep -q "flightctl_dr_restore_source_estate=site-b" "$work/logs/refuse-named.log" || fail "the refusal does not say how to name the source estate"
if play refuse-wrong flightctl.dr.dr_restore -l site-a -e "flightctl_dr_restore_archive=$archive_b" -e flightctl_dr_restore_source_estate=site-c; then
  fail "site-b's archive was restored onto site-a with the wrong source estate named"
fi
state after-refusals
cmp -s "$work/state/site-a.after-restore-a.json" "$work/state/site-a.after-refusals.json" || fail "a refused restore changed site-a"
play named-check flightctl.dr.dr_restore -l site-a -e flightctl_dr_restore_source_estate=site-b --check ||
  fail "with the source estate named, check mode failed ($work/logs/named-check.log)"
grep -qF "$(basename "$archive_b") (estate site-b) onto site-a (estate site-a)" "$work/logs/named-check.log" || fail "the plan does not say whose archive goes where"
grep -qF "restoring another estate as asked" "$work/logs/named-check.log" || fail "the plan does not say in words that another estate is restored"
ok "site-b's archive onto site-a is refused unless the source estate is named"

# 5. Disaster twice: the second restore brings the server back, a third changes nothing.
play disaster-2 -l site-a "$here/disaster.yml" || fail "second disaster"
play restore-a-2 flightctl.dr.dr_restore -l site-a || fail "dr_restore after the second disaster ($work/logs/restore-a-2.log)"
recap site-a restore-a-2 | grep -qv 'changed=0' || fail "the restore after the second disaster changed nothing"
grep -q "restored again because: database flightctl is missing" "$work/logs/restore-a-2.log" || fail "the second restore does not say why it restored"
state after-restore-a-2
python3 - "$work/state" <<'PY' || fail "site-a is not back after the second restore"
import json, sys
d = sys.argv[1]
a0, a2 = (json.load(open(f"{d}/site-a.{s}.json")) for s in ("initial", "after-restore-a-2"))
assert a2["ca"] == a0["ca"] and a2["db_rc"] == 0 and int(a2["kv_keys"]) > 0
PY
play restore-a-3 flightctl.dr.dr_restore -l site-a || fail "third dr_restore ($work/logs/restore-a-3.log)"
recap site-a restore-a-3 | grep -q 'changed=0' || fail "the third restore changed something: $(recap site-a restore-a-3)"
grep -q "Nothing done" "$work/logs/restore-a-3.log" || fail "the third restore does not say it did nothing"
grep -q "flightctl_dr_restore_force: true" "$work/logs/restore-a-3.log" || fail "the third restore names a module option to a role user"
ok "disaster twice: restored again (changed), then nothing to do (changed=0)"

# 6. Unknown variables.
play unknown flightctl.dr.dr_restore -l site-a --check -e flightctl_dr_restore_forse=true || fail "a run with an unknown variable failed without strict ($work/logs/unknown.log)"
grep -q "not read by the flightctl.dr collection.*flightctl_dr_restore_forse" "$work/logs/unknown.log" || fail "the unknown variable was not reported"
if play unknown-strict flightctl.dr.dr_restore -l site-a --check -e flightctl_dr_restore_forse=true -e flightctl_dr_strict_variables=true; then
  fail "strict variables let an unknown variable through"
fi
ok "unknown flightctl_dr_* variables are reported (and fail when strict)"

# 7. async and module_defaults through the collection's action group.
play async -l site-a -e "fleet_archive=$archive_a" "$here/async.yml" || fail "async with group/flightctl.dr.all module_defaults ($work/logs/async.log)"
ok "modules run under async, with options from module_defaults: group/flightctl.dr.all"

echo "fleet: passed" >&2
