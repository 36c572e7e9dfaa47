#!/usr/bin/env bash
# Encrypted archives through the roles, from the installed collection, on one sandbox estate:
#   1. dr_backup with flightctl_dr_encryption_recipients (an operations key and a break-glass
#      key, as age-keygen makes them): the controller holds a .tar.gz.age and its .sha256
#      (sha256sum -c passes without a key), and no plaintext archive anywhere;
#   2. dr_restore without a key: refused before anything is stopped;
#   3. dr_restore with the wrong key: refused, nothing changed;
#   4. dr_restore with the break-glass key's identity (flightctl_dr_decryption_key, the
#      file's content as an AAP credential injects it): restored.
# The sandbox is stopped whatever happens.
#
# usage: tests/integration/encryption.sh
set -euo pipefail

suite=encryption estates=site-a:enca-:5
# shellcheck source=tests/integration/estates.sh
. "$(dirname "$0")/estates.sh"

for k in ops breakglass wrong; do age-keygen -o "$work/keys/$k" 2>/dev/null; done
pub() { age-keygen -y "$work/keys/$1"; }
python3 - "$work/keys" <<'PY'
import json, os, sys
d = sys.argv[1]
for k in ("breakglass", "wrong"):
    p = os.path.join(d, k + ".json")
    with open(p, "w") as f:
        json.dump({"flightctl_dr_decryption_key": open(os.path.join(d, k)).read()}, f)
    os.chmod(p, 0o600)
PY

# 1. Encrypted to two recipients.
play backup flightctl.dr.dr_backup -e "{\"flightctl_dr_encryption_recipients\": [\"$(pub ops)\", \"$(pub breakglass)\"]}" ||
  fail "dr_backup with recipients ($work/logs/backup.log)"
archive=$(find "$controller/site-a" -maxdepth 1 -name 'flightctl-backup-*.tar.gz.age' | sort | tail -n1)
[ -n "$archive" ] || fail "no .tar.gz.age archive on the controller ($work/logs/backup.log)"
[ -z "$(find "$controller" "$work/site-a" -name 'flightctl-backup-*.tar.gz' -type f)" ] || fail "a plaintext archive was written"
(cd "$(dirname "$archive")" && sha256sum -c --quiet "$(basename "$archive").sha256") || fail "sha256sum -c refuses $archive.sha256"
head -c 21 "$archive" | grep -q '^age-encryption.org/v1' || fail "$archive is not an age file"
members=$(age -d -i "$work/keys/ops" "$archive" | tar -tzf -) || fail "the operations key does not open $archive into a tar.gz"
grep -qx 'db/dump.sql' <<<"$members" || fail "the decrypted $archive holds no db/dump.sql"
ok "dr_backup wrote $(basename "$archive") and its .sha256, no plaintext archive; the operations key opens it"

# 2. and 3. No key, the wrong key: refused before anything is stopped.
state before-refusals
play restore-nokey flightctl.dr.dr_restore && fail "dr_restore without a key restored an encrypted archive"
grep -q "decryption" "$work/logs/restore-nokey.log" || fail "the refusal without a key does not name the decryption variables ($work/logs/restore-nokey.log)"
play restore-wrong flightctl.dr.dr_restore -e "@$work/keys/wrong.json" && fail "dr_restore with the wrong key restored"
state after-refusals
# The archive copied into the restore's staging directory is expected; the database, the
# KV store and the CA must be as they were.
python3 - "$work/state/site-a.before-refusals.json" "$work/state/site-a.after-refusals.json" <<'PY' || fail "a refused restore changed the server"
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:3])
changed = [k for k in ("db", "kv_keys", "ca") if before.get(k) != after.get(k)]
if changed or not before.get("db"):
    sys.exit("changed: %s (before %s, after %s)" % (changed, before, after))
PY
ok "without a key and with the wrong key dr_restore refuses, and the database, KV store and CA are unchanged"

# 4. The break-glass key.
play restore flightctl.dr.dr_restore -e "@$work/keys/breakglass.json" || fail "dr_restore with the break-glass key ($work/logs/restore.log)"
grep -q "Restored from $(basename "$archive")" "$work/logs/restore.log" || fail "dr_restore did not restore $(basename "$archive") ($work/logs/restore.log)"
secret=$(sed -n 's/^AGE-SECRET-KEY-/&/p' "$work/keys/breakglass")
for f in "$work"/logs/*.log; do
  ! grep -qF "$secret" "$f" || fail "the break-glass identity appears in $f"
done
ok "dr_restore with the break-glass key restored $(basename "$archive"); the identity is in no output"
echo "encryption: passed" >&2
