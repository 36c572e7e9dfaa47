# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Speaks to a role's user in role variables.

The modules word their messages with their own option names ("set allow_unsigned",
"Set force: true (--force on the command line)"): right for a playbook that calls the
module, wrong for someone running the collection's roles, who sets
``flightctl_dr_allow_unsigned`` or ``flightctl_dr_restore_force`` instead. The command-line
personalities rewrite the same messages into their flags (internal/cli); this is the same
rewrite for the roles, applied by the action plugins to ``msg`` and ``warnings`` when the
task belongs to one of this collection's roles.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

ROLE_PREFIX = "flightctl.dr."
PREFIX = "flightctl_dr_"

# Options whose role variable is not flightctl_dr_<option> (or flightctl_dr_s3_<option>).
SPECIAL = {
    "force": "flightctl_dr_restore_force",
    "output_dir": "flightctl_dr_backup_remote_dir",
    "path": "flightctl_dr_restore_archive",
    "source_estate": "flightctl_dr_restore_source_estate",
    "units": "flightctl_dr_app_units",
    "context": "flightctl_dr_k8s_context",
    "host": "flightctl_dr_k8s_host",
    "api_key": "flightctl_dr_k8s_api_key",
    "ca_cert": "flightctl_dr_k8s_ca_cert",
    "validate_certs": "flightctl_dr_k8s_validate_certs",
    "schedule": "flightctl_dr_timer_schedule",
}

# Module options that have no role variable of their own name although one exists by
# that name for another purpose: never rewritten.
NEVER = frozenset(("estate", "name", "action", "archive", "checksum_file", "signature_file", "dest_dir"))


def role_words(options, known):
    """The role variable for each module option that has one.

    options: the module's option names; known: every flightctl_dr_* variable the roles read.
    """
    known = set(known or ())
    words = {}
    for opt in options:
        if opt in NEVER:
            continue
        for var in (SPECIAL.get(opt), PREFIX + opt, PREFIX + "s3_" + opt):
            if var and var in known:
                words[opt] = var
                break
    return words


class Wording(object):
    """Rewrites module option names in a message into role variables."""

    def __init__(self, words):
        self.words = dict(words)
        names = sorted(self.words, key=lambda n: (-len(n), n))
        multi = [re.escape(n) for n in names if "_" in n]
        single = [re.escape(n) for n in names if "_" not in n]
        alts = "|".join(multi + single)
        # "force: true (--force on the command line)", "deployment_type (--deployment-type)".
        self.with_flag = re.compile(r"\b(%s)(: (?:true|yes))?(?: \(--[a-z0-9-]+(?: on the command line)?\))" % alts) if alts else None
        # Multi-word option names on their own ("give server_version", "allow_unsigned").
        self.bare = re.compile(r"(?<![\w/.-])(%s)\b(?![/.-]\w)" % "|".join(multi)) if multi else None
        # One-word options after a verb ("with rollback", "set force: true").
        self.verbs = re.compile(r"\b(with|set|give|use) (%s)\b" % "|".join(single)) if single else None

    def translate(self, msg):
        if not isinstance(msg, str) or not self.words:
            return msg
        if self.with_flag is not None:
            msg = self.with_flag.sub(lambda m: self.words[m.group(1)] + (m.group(2) or ""), msg)
        if self.bare is not None:
            msg = self.bare.sub(lambda m: self.words[m.group(1)], msg)
        if self.verbs is not None:
            msg = self.verbs.sub(lambda m: m.group(1) + " " + self.words[m.group(2)], msg)
        return msg


def in_collection_role(task):
    """Whether the task runs as part of one of this collection's roles."""
    role = getattr(task, "_role", None)
    if role is None:
        return False
    try:
        name = role.get_name()
    except Exception:  # pylint: disable=broad-except
        return False
    return str(name).startswith(ROLE_PREFIX) or str(getattr(role, "_role_path", "")).find("/flightctl/dr/roles/") >= 0


def reword_result(result, wording):
    """Rewrites msg and warnings of a module result in place."""
    if "msg" in result:
        result["msg"] = wording.translate(result["msg"])
    warnings = result.get("warnings")
    if isinstance(warnings, list):
        result["warnings"] = [wording.translate(w) for w in warnings]
    return result
