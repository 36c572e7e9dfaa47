# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for flightctl.dr.flightctl_restore: runs the flightctl_restore build for the target's architecture.

With ``src`` (an archive on the controller) the archive and its ``.sha256`` are put in the
task's temporary directory on the server, which Ansible removes when the task ends, and the
module restores (or, in check mode, plans) from there: check mode shows the real plan from an
archive that is not on the server, and leaves nothing behind.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.flightctl.dr.plugins.plugin_utils.arch_dispatch import ArchDispatchAction


class ActionModule(ArchDispatchAction):
    module_base = "flightctl_restore"
    estate_option = True

    def _module_args(self, task_vars):
        args = super(ActionModule, self)._module_args(task_vars)
        src = args.pop("src", None)
        if not src:
            return args
        if args.get("path"):
            raise AnsibleActionFail("flightctl.dr.flightctl_restore: give src (an archive on the controller) or path (an archive on the server), not both")
        local = os.path.expanduser(to_text(src))
        checksum = args.get("checksum_file") or local + ".sha256"
        for f in (local, checksum):
            if not os.path.isfile(f):
                raise AnsibleActionFail("flightctl.dr.flightctl_restore: %s is not a file on the controller: "
                                        "src needs the archive and its .sha256 beside it" % f)
        tmpdir = self._tmpdir()
        remote = self._connection._shell.join_path(tmpdir, os.path.basename(local))
        remote_sum = remote + ".sha256"
        self._transfer_file(local, remote)
        self._transfer_file(checksum, remote_sum)
        sent = [remote, remote_sum]
        # The signature travels with them when there is one (trusted keys check it).
        signature = args.get("signature_file") or local + ".sig"
        if os.path.isfile(signature):
            remote_sig = remote + ".sig"
            self._transfer_file(signature, remote_sig)
            sent.append(remote_sig)
            args["signature_file"] = remote_sig
        elif args.get("signature_file"):
            raise AnsibleActionFail("flightctl.dr.flightctl_restore: signature_file %s is not a file on the controller" % signature)
        self._fixup_perms2(sent)
        args["path"] = remote
        args["checksum_file"] = remote_sum
        return args
