# -*- coding: utf-8 -*-
# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""flightctl.dr.flightctl_archive_verify: documentation only.

The module runs inside the collection's Go program, shipped for each architecture as
plugins/module_binaries/flightctl_dr_linux_amd64 and flightctl_dr_linux_arm64. The action plugin
of the same name (plugins/action/flightctl_archive_verify.py) picks the build that matches the target
and tells it which module to run; this file only gives Ansible a module of this name to
find, and its documentation is in flightctl_archive_verify.yml.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type
