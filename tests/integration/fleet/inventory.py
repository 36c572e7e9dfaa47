#!/usr/bin/env python3
# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writes one inventory holding two sandbox estates as hosts site-a and site-b.

usage: inventory.py OUT SITE=SANDBOX_DIR...

Each sandbox writes an inventory with its host called sandbox; here every host keeps its
own variables and gets its own directories on the "server" (the sandboxes share this
machine), so that nothing but the controller's backup directory is shared.
"""

import os
import sys

import yaml


def main():
    out, sites = sys.argv[1], sys.argv[2:]
    hosts = {}
    for arg in sites:
        name, sandbox = arg.split("=", 1)
        with open(os.path.join(sandbox, "inventory.yml")) as f:
            inv = yaml.safe_load(f)
        host = inv["all"]["children"]["flightctl_servers"]["hosts"]["sandbox"]
        server = os.path.join(sandbox, "server")
        host.update({
            "flightctl_dr_backup_remote_dir": os.path.join(server, "backups"),
            "flightctl_dr_restore_remote_dir": os.path.join(server, "restore"),
            "flightctl_dr_state_dir": os.path.join(server, "state"),
        })
        hosts[name] = host
    inv = {"all": {"children": {"flightctl_servers": {"hosts": hosts}}}}
    with open(out, "w") as f:
        yaml.safe_dump(inv, f, default_flow_style=False)
    os.chmod(out, 0o600)


if __name__ == "__main__":
    main()
