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
             "aap/playbooks/dr_restore.yml": "playbooks/dr-restore.yml"}
ROLE_OF = {"playbooks/dr-backup.yml": "backup", "playbooks/dr-restore.yml": "restore"}
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


def main():
    problems = []
    configure = load("aap/configure.yml")[0]
    templates = [t for t in configure["tasks"] if "awx.awx.job_template" in t]
    if len(templates) != 2:
        problems.append("configure.yml should define 2 job templates, has %d" % len(templates))
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
        roles = role_options(ROLE_OF[PLAYBOOKS[wrapper]])
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
            if var not in roles:
                problems.append("%s: %s is not an option of the %s role" % (survey_path, var, ROLE_OF[PLAYBOOKS[wrapper]]))
            if roles.get(var, {}).get("no_log"):
                problems.append("%s asks for the secret %s" % (survey_path, var))

    rr = configure["vars"]["flightctl_dr_aap_backup_rrule"]
    schedules = [t["awx.awx.schedule"] for t in configure["tasks"] if "awx.awx.schedule" in t]
    if not schedules or schedules[0]["rrule"] != "{{ flightctl_dr_aap_backup_rrule }}":
        problems.append("configure.yml schedules nothing with flightctl_dr_aap_backup_rrule")
    try:
        rule = rrule.rrulestr(rr.replace(" RRULE:", "\nRRULE:"), forceset=True)
        nxt = rule.after(datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc))
        if nxt is None or nxt.hour != 2:
            problems.append("the backup schedule %r does not recur nightly at 02:00 UTC (next: %s)" % (rr, nxt))
    except Exception as e:  # noqa: BLE001 - any parse error is the finding
        problems.append("the backup schedule's RRULE %r does not parse: %s" % (rr, e))

    ct = load("aap/credential_type.yml")["flightctl_dr_aap_credential_type"]
    fields = {f["id"]: f for f in ct["inputs"]["fields"]}
    injected = set()
    secrets = {}
    for role in ("backup", "restore", "devprep"):
        for name, opt in role_options(role).items():
            if opt.get("no_log"):
                secrets[name] = role
    for var, tmpl in ct["injectors"]["extra_vars"].items():
        field = tmpl.strip().lstrip("{").rstrip("}").strip()
        if field not in fields:
            problems.append("injector %s uses %s, which is not a field of the credential type" % (var, field))
        elif not fields[field].get("secret"):
            problems.append("field %s injected into %s is not marked secret" % (field, var))
        injected.add(field)
        if var not in secrets:
            problems.append("injector %s is not a secret variable of the backup, restore or devprep role" % var)
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
