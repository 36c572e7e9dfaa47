#!/usr/bin/env python3
# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory script: the sandbox estate's variables, once create has started it.

molecule links this file into its inventory before create runs, so it must exist from the
start (molecule refuses a link to a missing file). It reads the inventory the sandbox writes
($MOLECULE_EPHEMERAL_DIRECTORY/sandbox/inventory.yml) when there is one; before create, and
after destroy, it gives the platform with no variables.
"""

import json
import os
import sys

import yaml


def main():
    hostvars = {}
    path = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "sandbox", "inventory.yml")
    if os.path.isfile(path):
        with open(path) as f:
            inv = yaml.safe_load(f) or {}
        hosts = inv.get("all", {}).get("children", {}).get("flightctl_servers", {}).get("hosts", {})
        hostvars = hosts.get("sandbox") or {}
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        json.dump(hostvars if sys.argv[2:] == ["sandbox"] else {}, sys.stdout)
        return
    json.dump({"flightctl_servers": {"hosts": ["sandbox"]}, "_meta": {"hostvars": {"sandbox": hostvars}}}, sys.stdout)


if __name__ == "__main__":
    main()
