# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for flightctl.dr.flightctl_drill: runs the flightctl_drill build for the target's architecture."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.flightctl.dr.plugins.plugin_utils.arch_dispatch import ArchDispatchAction


class ActionModule(ArchDispatchAction):
    module_base = "flightctl_drill"
