#!/usr/bin/env python3
# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validates the AAP-as-code files in aap/ against the collection.

No AWX or Automation Platform controller can run here, so the tests stop at what the files
say: every survey question is a variable the playbook's argument spec accepts, of a
matching type, and none asks for a secret; the schedule's RRULE parses and recurs; every
injector fills a secret role variable from a field of the credential type, and every field
is injected; the job templates name playbooks and surveys that exist. ansible-playbook
--syntax-check of configure.yml and of the wrapper playbooks runs beside this (make test).

usage: tests/aap/check.py
"""

import datetime
import json
import os
import sys

import yaml
from dateutil import rrule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AAP = os.path.join(REPO, "aap")
PLAYBOOKS = {"aap/playbooks/dr_backup.yml": "playbooks/dr-backup.yml",
             "aap/playbooks/dr_restore.yml": "playbooks/dr-restore.yml",
             "aap/playbooks/dr_drill.yml": "playbooks/dr-drill.yml"}
# The roles whose variables a playbook's survey may ask for (offhost runs inside both).
ROLE_OF = {"playbooks/dr-backup.yml": ("backup", "offhost"), "playbooks/dr-restore.yml": ("restore", "offhost"),
           "playbooks/dr-drill.yml": ("drill",)}
SURVEY_TYPES = {"text": {"str", "path"}, "textarea": {"str"}, "integer": {"int"}, "float": {"float"},
                "multiplechoice": {"str", "bool"}, "multiselect": {"list"}}


class Loader(yaml.SafeLoader):
    pass


Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load(path):
    with open(os.path.join(REPO, path)) as f:
        return yaml.load(f, Loader=Loader)


def playbook_spec(path):
    for task in load(path)[0].get("pre_tasks", []):
        if "ansible.builtin.validate_argument_spec" in task:
            return task["ansible.builtin.validate_argument_spec"]["argument_spec"]
    raise AssertionError("%s validates no argument spec" % path)


def role_options(role):
    return load("collection/roles/%s/meta/argument_specs.yml" % role)["argument_specs"]["main"]["options"]


def roles_options(roles):
    opts = {}
    for role in roles:
        opts.update({k: v for k, v in role_options(role).items() if k not in opts})
    return opts


def check_rrule(problems, what, rr, freq, hour):
    """rr parses and recurs at hour UTC every day (freq DAILY) or every week (WEEKLY)."""
    try:
        rule = rrule.rrulestr(rr.replace(" RRULE:", "\nRRULE:"), forceset=True)
        start = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)
        first = rule.after(start)
        second = rule.after(first) if first else None
        step = {"DAILY": datetime.timedelta(days=1), "WEEKLY": datetime.timedelta(weeks=1)}[freq]
        if first is None or first.hour != hour or second is None or second - first != step:
            problems.append("the %s schedule %r does not recur %s at %02d:00 UTC (next: %s, then %s)"
                            % (what, rr, freq.lower(), hour, first, second))
    except Exception as e:  # noqa: BLE001 - any parse error is the finding
        problems.append("the %s schedule's RRULE %r does not parse: %s" % (what, rr, e))


def main():
    problems = []
    configure = load("aap/configure.yml")[0]
    templates = [t for t in configure["tasks"] if "awx.awx.job_template" in t]
    if len(templates) != 3:
        problems.append("configure.yml should define 3 job templates, has %d" % len(templates))
    for t in templates:
        jt = t["awx.awx.job_template"]
        wrapper = jt["playbook"]
        if wrapper not in PLAYBOOKS or not os.path.isfile(os.path.join(REPO, wrapper)):
            problems.append("job template %s: playbook %s is not a wrapper playbook in aap/playbooks" % (jt["name"], wrapper))
            continue
        imported = load(wrapper)[0].get("ansible.builtin.import_playbook")
        collection_name = "flightctl.dr." + os.path.basename(PLAYBOOKS[wrapper])[:-4].replace("-", "_")
        if imported != collection_name:
            problems.append("%s imports %s, want %s" % (wrapper, imported, collection_name))
        spec = playbook_spec(PLAYBOOKS[wrapper])
        roles = roles_options(ROLE_OF[PLAYBOOKS[wrapper]])
        survey_path = jt["survey_spec"].split("'")[3]
        with open(os.path.join(AAP, survey_path)) as f:
            survey = json.load(f)
        for q in survey["spec"]:
            var, typ = q["variable"], q["type"]
            if typ == "password":
                problems.append("%s asks for a secret (%s): secrets belong in the credential" % (survey_path, var))
            if var not in spec:
                problems.append("%s asks for %s, which %s does not accept" % (survey_path, var, PLAYBOOKS[wrapper]))
                continue
            want = spec[var].get("type", "str")
            if want not in SURVEY_TYPES.get(typ, set()):
                problems.append("%s: %s is a %s question but %s wants %s" % (survey_path, var, typ, PLAYBOOKS[wrapper], want))
            if want == "bool" and set(q.get("choices", [])) != {"true", "false"}:
                problems.append("%s: %s is a bool: its choices must be true and false" % (survey_path, var))
            # A variable the playbook reads itself (beyond its spec) needs no role.
            with open(os.path.join(REPO, PLAYBOOKS[wrapper])) as f:
                read_by_playbook = f.read().count(var) > 1
            if var not in roles and not read_by_playbook:
                problems.append("%s: %s is not an option of the %s role" % (survey_path, var, " or ".join(ROLE_OF[PLAYBOOKS[wrapper]])))
            if roles.get(var, {}).get("no_log"):
                problems.append("%s asks for the secret %s" % (survey_path, var))

    cvars = configure["vars"]
    schedules = {t["awx.awx.schedule"]["rrule"]: t["awx.awx.schedule"] for t in configure["tasks"] if "awx.awx.schedule" in t}
    by_name = {t["awx.awx.job_template"]["name"]: t["awx.awx.job_template"] for t in templates}
    for var, what, freq, hour in (("flightctl_dr_aap_backup_rrule", "backup", "DAILY", 2),
                                  ("flightctl_dr_aap_bucket_check_rrule", "weekly restore check", "WEEKLY", 6),
                                  ("flightctl_dr_aap_restore_drill_rrule", "morning restore drill", "DAILY", 4)):
        sched = schedules.get("{{ %s }}" % var)
        if sched is None:
            problems.append("configure.yml schedules nothing with %s" % var)
            continue
        check_rrule(problems, what, cvars.get(var, ""), freq, hour)
        jt = by_name.get(sched["unified_job_template"])
        if jt is None:
            problems.append("the %s schedule runs %s, which configure.yml does not define" % (what, sched["unified_job_template"]))
            continue
        # A schedule's variables must be ones the job's playbook accepts and its survey asks.
        spec = playbook_spec(PLAYBOOKS[jt["playbook"]])
        with open(os.path.join(AAP, jt["survey_spec"].split("'")[3])) as f:
            asked = {q["variable"] for q in json.load(f)["spec"]}
        for var2 in (sched.get("extra_data") or {}):
            if var2 not in spec or var2 not in asked:
                problems.append("the %s schedule sets %s, which %s does not accept or its survey does not ask" % (what, var2, jt["playbook"]))
        if sched.get("job_type") == "check" and not jt.get("ask_job_type_on_launch"):
            problems.append("the %s schedule runs in check mode but %s does not ask for the job type on launch" % (what, jt["name"]))

    # The nightly job copies to the bucket and prunes: its variables reach the offhost role.
    backup_jt = by_name.get("Flight Control DR backup", {})
    extra = str(backup_jt.get("extra_vars", ""))
    for name, value in cvars.items():
        if name in extra:
            extra += str(value)
    for var in ("flightctl_dr_s3_bucket", "flightctl_dr_s3_endpoint", "flightctl_dr_s3_prefix", "flightctl_dr_retention"):
        if var not in extra:
            problems.append("the backup job template does not set %s: the nightly job would not copy and prune" % var)
        elif var not in role_options("offhost"):
            problems.append("the backup job template sets %s, which the offhost role does not read" % var)
    if "flightctl_dr_aap_bucket_credential" not in str(backup_jt.get("credentials", "")):
        problems.append("the backup job template does not attach the bucket credential")
    creds = [t["awx.awx.credential"] for t in configure["tasks"] if "awx.awx.credential" in t]
    aws = [c for c in creds if c.get("credential_type") == "Amazon Web Services"]
    if not aws or set(aws[0].get("inputs", {})) != {"username", "password"}:
        problems.append("configure.yml makes no Amazon Web Services credential (inputs username, password) for the bucket")
    offhost_tasks = open(os.path.join(REPO, "collection/roles/offhost/tasks/main.yml")).read()
    for env in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if env not in offhost_tasks:
            problems.append("the offhost role does not read %s, which the Amazon Web Services credential injects" % env)

    ct = load("aap/credential_type.yml")["flightctl_dr_aap_credential_type"]
    fields = {f["id"]: f for f in ct["inputs"]["fields"]}
    injected = set()
    role_vars = {}
    for role in ("backup", "restore", "devprep"):
        for name, opt in role_options(role).items():
            role_vars.setdefault(name, opt)
    # A secret field fills a no_log role variable; a public one (the trusted signers) fills a
    # variable that is not no_log, so that the credential never hides what it need not.
    for var, tmpl in ct["injectors"]["extra_vars"].items():
        field = tmpl.strip().lstrip("{").rstrip("}").strip()
        injected.add(field)
        if var not in role_vars:
            problems.append("injector %s is not a variable of the backup, restore or devprep role" % var)
            continue
        if field not in fields:
            problems.append("injector %s uses %s, which is not a field of the credential type" % (var, field))
        elif role_vars[var].get("no_log") and not fields[field].get("secret"):
            problems.append("field %s injected into the secret %s is not marked secret" % (field, var))
        elif not role_vars[var].get("no_log") and fields[field].get("secret"):
            problems.append("secret field %s is injected into %s, which the roles do not keep out of the output (no_log)" % (field, var))
    for f in fields:
        if f not in injected:
            problems.append("credential field %s is injected nowhere" % f)

    ee = load("aap/execution-environment.yml")
    if ee.get("version") not in (1, 2, 3) or ee["dependencies"].get("galaxy") != "collections/requirements.yml":
        problems.append("execution-environment.yml must be a version ansible-builder reads and install collections/requirements.yml")
    reqs = load("aap/collections/requirements.yml")["collections"]
    if "flightctl.dr" not in [c["name"] for c in reqs]:
        problems.append("aap/collections/requirements.yml does not install flightctl.dr")

    for p in problems:
        print("aap: " + p, file=sys.stderr)
    if problems:
        return 1
    print("aap: %d job templates, surveys, schedule, credential type and execution environment: ok" % len(templates), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
