#!/usr/bin/env bash
# Signed archives through the roles, from the installed collection, on one sandbox estate:
#   1. dr_backup without a signing key: an unsigned archive, and no "unknown variable"
#      warning for what the sandbox inventory holds;
#   2. dr_backup signing with flightctl_dr_signing_key (the key's content, as the AAP
#      credential injects it): the signature reaches the controller beside the archive,
#      ssh-keygen -Y verify accepts it, and the key appears in no output;
#   3. a newer unsigned archive, backed up under become (fetch streams it, no slurp), then
#      dr_restore with flightctl_dr_trusted_keys_path (a file on the controller): the
#      unsigned archives are skipped, the signed one is restored, and its signature was put
#      beside it on the server;
#   4. the signed archive with the wrong trusted key: refused, nothing changed;
#   5. the unsigned archive named with trusted keys: refused, unless
#      flightctl_dr_allow_unsigned (check mode, with a warning);
#   6. another archive's signature beside an archive: refused.
# The sandbox is stopped whatever happens.
#
# usage: tests/integration/trust.sh
set -euo pipefail

suite=trust estates=site-a:trusta-:5
# shellcheck source=tests/integration/estates.sh
. "$(dirname "$0")/estates.sh"

# Two keys, as an operator makes them (collection/docs/operations.md).
for k in good other; do
  ssh-keygen -q -t ed25519 -N '' -C "flightctl-backup-$k" -f "$work/keys/$k"
  printf 'backup@%s %s\n' "$k" "$(cut -d' ' -f1,2 "$work/keys/$k.pub")" > "$work/keys/allowed-$k"
done
python3 - "$work/keys/good" "$work/keys/signing.json" <<'PY'
import json, os, sys
with open(sys.argv[2], "w") as f:
    json.dump({"flightctl_dr_signing_key": open(sys.argv[1]).read()}, f)
os.chmod(sys.argv[2], 0o600)
PY
secret_line=$(sed -n 2p "$work/keys/good")

archives() { find "$controller/site-a" -maxdepth 1 -name 'flightctl-backup-*.tar.gz' | sort; }
newest_after() { archives | while read -r a; do [ "$a" \> "$1" ] && echo "$a"; done | tail -n1; }

# 1. Unsigned.
play backup-unsigned flightctl.dr.dr_backup || fail "dr_backup ($work/logs/backup-unsigned.log)"
unsigned_old=$(archives | tail -n1)
[ -n "$unsigned_old" ] || fail "no archive on the controller"
[ ! -e "$unsigned_old.sig" ] || fail "an unsigned backup left a signature"
! grep -q "not read by the flightctl.dr collection" "$work/logs/backup-unsigned.log" ||
  fail "the sandbox inventory's variables are reported as unknown: $(grep -h 'not read by' "$work/logs/backup-unsigned.log")"
ok "an unsigned backup, and no unknown-variable warning for the sandbox inventory"

# 2. Signed with the key's content; verified there with the trusted keys as well.
play backup-signed flightctl.dr.dr_backup -e "@$work/keys/signing.json" -e "flightctl_dr_trusted_keys_path=$work/keys/allowed-good" ||
  fail "dr_backup with a signing key ($work/logs/backup-signed.log)"
signed=$(newest_after "$unsigned_old")
[ -n "$signed" ] || fail "the signed backup left no new archive on the controller"
[ -f "$signed.sig" ] || fail "the signature did not reach the controller beside $signed"
[ "$(stat -c %a "$signed.sig")" = 600 ] || fail "the controller's signature is not 0600"
ssh-keygen -Y verify -f "$work/keys/allowed-good" -I backup@good -n flightctl-backup -s "$signed.sig" < "$signed" >/dev/null ||
  fail "ssh-keygen -Y verify refuses the controller's copy of $signed"
for f in "$work"/logs/*.log; do
  ! grep -qF "$secret_line" "$f" || fail "the signing key appears in $f"
done
ok "a signed backup: the signature is on the controller and ssh-keygen -Y verify accepts it; the key is in no output"

# 3. A newer unsigned archive, made under become: fetch must stream the archive to the
#    controller, never read it through slurp (the whole archive base64 in memory).
play backup-unsigned-2 flightctl.dr.dr_backup --become --become-method su -vvv || fail "second unsigned dr_backup, under become ($work/logs/backup-unsigned-2.log)"
unsigned_new=$(newest_after "$signed")
[ -n "$unsigned_new" ] || fail "the second unsigned backup left no new archive"
! grep -q "AnsiballZ_slurp" "$work/logs/backup-unsigned-2.log" || fail "fetch under become read the archive through slurp"
# The control: here, a plain fetch under the same become does go through slurp.
printf -- '- hosts: site-a\n  gather_facts: false\n  tasks:\n    - ansible.builtin.fetch: {src: "%s", dest: "%s/", flat: true}\n' \
  "$unsigned_new.sha256" "$work/fetch-control" > "$work/fetch-control.yml"
play fetch-control "$work/fetch-control.yml" --become --become-method su -vvv || fail "the plain fetch under become failed ($work/logs/fetch-control.log)"
grep -q "AnsiballZ_slurp" "$work/logs/fetch-control.log" || fail "a plain fetch under become did not use slurp: the check above proves nothing"
ok "under become the archive was fetched as a stream, not through slurp"
play restore-trusted flightctl.dr.dr_restore -e "flightctl_dr_trusted_keys_path=$work/keys/allowed-good" ||
  fail "dr_restore with trusted keys ($work/logs/restore-trusted.log)"
grep -q "Skipping $unsigned_new: .*not signed" "$work/logs/restore-trusted.log" || fail "the newest, unsigned archive was not skipped as unsigned"
grep -qF "Restoring $signed (estate site-a)" "$work/logs/restore-trusted.log" || fail "the signed archive was not the one restored"
on_server=$(python3 -c 'import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))["all"]["children"]["flightctl_servers"]["hosts"]["site-a"]["flightctl_dr_restore_remote_dir"])' "$inv")
[ -f "$on_server/site-a/$(basename "$signed").sig" ] || fail "the signature was not copied to the server beside the archive"
ok "dr_restore with trusted keys skipped the unsigned archives and restored the signed one, its signature beside it"

# 4. The wrong key.
state before-refusals
if play restore-wrong-key flightctl.dr.dr_restore -e "flightctl_dr_restore_archive=$signed" -e "flightctl_dr_trusted_keys_path=$work/keys/allowed-other"; then
  fail "an archive signed by an untrusted key was restored"
fi
grep -q "signature check failed" "$work/logs/restore-wrong-key.log" || fail "the refusal does not say the signature failed ($work/logs/restore-wrong-key.log)"
ok "an archive signed by another key is refused"

# 5. Unsigned, named: refused, unless allowed.
if play restore-unsigned flightctl.dr.dr_restore -e "flightctl_dr_restore_archive=$unsigned_new" -e "flightctl_dr_trusted_keys_path=$work/keys/allowed-good"; then
  fail "an unsigned archive was restored although trusted keys are configured"
fi
grep -q "the archive is not signed" "$work/logs/restore-unsigned.log" || fail "the refusal does not say the archive is unsigned"
grep -q "flightctl_dr_allow_unsigned" "$work/logs/restore-unsigned.log" || fail "the refusal does not name the role variable that allows it"
play restore-unsigned-allowed flightctl.dr.dr_restore --check -e "flightctl_dr_restore_archive=$unsigned_new" \
  -e "flightctl_dr_trusted_keys_path=$work/keys/allowed-good" -e flightctl_dr_allow_unsigned=true ||
  fail "with flightctl_dr_allow_unsigned the unsigned archive is still refused ($work/logs/restore-unsigned-allowed.log)"
grep -q "accepted only because" "$work/logs/restore-unsigned-allowed.log" || fail "accepting an unsigned archive gave no warning"
ok "an unsigned archive is refused with trusted keys, and accepted with flightctl_dr_allow_unsigned, with a warning"

# 6. The signature of another archive.
cp "$signed.sig" "$unsigned_new.sig"
if play restore-other-sig flightctl.dr.dr_restore --check -e "flightctl_dr_restore_archive=$unsigned_new" -e "flightctl_dr_trusted_keys_path=$work/keys/allowed-good"; then
  fail "an archive with another archive's signature was accepted"
fi
grep -q "signature check failed" "$work/logs/restore-other-sig.log" || fail "another archive's signature is not reported as a failed signature"
state after-refusals
cmp -s "$work/state/site-a.before-refusals.json" "$work/state/site-a.after-refusals.json" ||
  fail "a refused restore changed the server: $(diff "$work/state/site-a.before-refusals.json" "$work/state/site-a.after-refusals.json")"
ok "another archive's signature is refused; the refusals changed nothing on the server"

echo "trust: passed" >&2
