# Copyright: (c) 2026, flightctl.dr contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the build of a binary module that matches the target's architecture.

The collection ships its Go modules as one static binary per architecture,
``plugins/module_binaries/flightctl_dr_linux_amd64`` and
``plugins/module_binaries/flightctl_dr_linux_arm64`` (four separate binaries per architecture
would not fit Galaxy's 20 MB limit). They are not in ``plugins/modules/``: they are no modules
of their own, so neither ``ansible-doc`` nor ``ansible-test sanity`` takes them for
undocumented ones. A task names a module (``flightctl.dr.flightctl_backup``); the action
plugin of that name subclasses ``ArchDispatchAction``, asks the target (the delegated host
when there is one) what it is, adds ``plugins/module_binaries/`` to the module search path of
the task's worker and executes the matching binary through Ansible's module machinery (check
mode, async, become, the remote temporary directory) with the task's arguments unchanged and
``_ansible_module_name`` set to the module the task named, which the binary runs.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.six import string_types
from ansible.plugins.action import ActionBase

from ansible_collections.flightctl.dr.plugins.plugin_utils.option_words import Wording, in_collection_role, reword_result, role_words

try:
    import yaml
except ImportError:  # pragma: no cover - ansible-core requires PyYAML
    yaml = None

COLLECTION = "flightctl.dr"
BINARY = "flightctl_dr_linux_%s"
# plugins/<BINARY_DIR>/ holds the binaries; no plugin type of Ansible's has that name.
BINARY_DIR = "module_binaries"

# uname -m (and the architecture fact) spellings, mapped to Go's GOARCH.
GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
}

# A task variable that forces the architecture, for targets that cannot run uname.
ARCH_OVERRIDE_VAR = "flightctl_dr_target_arch"

# The modules' option names, read once from their sidecar documentation.
_OPTIONS = {}


def module_options(module_base):
    """The option names of a module, from plugins/modules/<module>.yml."""
    if module_base not in _OPTIONS:
        names = []
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modules", module_base + ".yml")
        try:
            with open(path) as f:
                doc = yaml.safe_load(f).get("DOCUMENTATION") or {}
            if isinstance(doc, string_types):
                doc = yaml.safe_load(doc) or {}
            names = sorted((doc.get("options") or {}).keys())
        except Exception:  # pylint: disable=broad-except
            names = []
        _OPTIONS[module_base] = names
    return _OPTIONS[module_base]


def binaries_dir():
    """The directory of the collection that holds the per-architecture binaries."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), BINARY_DIR)


def goarch_for(machine):
    """Maps a machine name as uname -m prints it to a GOARCH the collection ships, or None."""
    return GOARCH.get(to_text(machine).strip().lower())


class ArchDispatchAction(ActionBase):
    """Base of the per-module action plugins; subclasses set ``module_base``."""

    module_base = None
    # Modules with an estate_name option: under Ansible it defaults to the estate the roles
    # use (flightctl_dr_estate_name, else the inventory host name), so that a backup made by a
    # module task and a restore made by the role, or the other way round, agree.
    estate_option = False

    def _target_goarch(self, task_vars):
        override = task_vars.get(ARCH_OVERRIDE_VAR)
        if override:
            arch = goarch_for(override)
            if arch is None:
                raise AnsibleActionFail("%s=%s is not an architecture this collection ships (amd64, arm64)"
                                        % (ARCH_OVERRIDE_VAR, override))
            return arch

        # Gathered facts describe the inventory host; a delegated task runs elsewhere,
        # so only trust them when the task is not delegated.
        if not self._task.delegate_to:
            facts = task_vars.get("ansible_facts") or {}
            system = facts.get("system")
            machine = facts.get("architecture")
            if machine and system in (None, "Linux"):
                arch = goarch_for(machine)
                if arch is not None:
                    return arch

        res = self._low_level_execute_command("uname -sm", sudoable=False)
        out = to_text(res.get("stdout", "")).strip()
        if res.get("rc") != 0 or not out:
            raise AnsibleActionFail("cannot tell the target's architecture: 'uname -sm' failed (rc=%s): %s"
                                    % (res.get("rc"), to_text(res.get("stderr", "")).strip()))
        parts = out.split()
        system, machine = parts[0], parts[-1]
        if system != "Linux":
            raise AnsibleActionFail("%s.%s runs on Linux targets only; this target is %s"
                                    % (COLLECTION, self.module_base, out))
        arch = goarch_for(machine)
        if arch is None:
            raise AnsibleActionFail("%s.%s is built for x86_64 and aarch64 only; this target is %s"
                                    % (COLLECTION, self.module_base, machine))
        return arch

    def _find_binary(self, arch):
        """Makes the build for arch findable as a module and returns the name to execute it by.

        plugins/module_binaries/ is added to the module loader's search path (in the worker
        process that runs this task only); the name is an ansible.legacy one, which the
        loader looks up on that path and nowhere in a collection's plugins/modules/."""
        directory = binaries_dir()
        path = os.path.join(directory, BINARY % arch)
        if not os.path.isfile(path):
            raise AnsibleActionFail("%s.%s: this installation of the collection lacks its %s build (%s): "
                                    "install the collection from its release tarball (make collection builds one)"
                                    % (COLLECTION, self.module_base, arch, path))
        loader = self._shared_loader_obj.module_loader
        loader.add_directory(directory)
        name = "ansible.legacy." + BINARY % arch
        found = loader.find_plugin_with_context(name, mod_type="", collection_list=self._task.collections)
        resolved = getattr(found, "plugin_resolved_path", None)
        if not found.resolved or not resolved or os.path.realpath(resolved) != os.path.realpath(path):
            raise AnsibleActionFail("%s.%s: the module name %s resolves to %s, not to the collection's %s: "
                                    "rename or remove that file from the module search path (library/, ANSIBLE_LIBRARY)"
                                    % (COLLECTION, self.module_base, BINARY % arch, resolved, path))
        return name

    def _update_module_args(self, module_name, module_args, task_vars):
        super(ArchDispatchAction, self)._update_module_args(module_name, module_args, task_vars)
        # The binary holds every module and runs the one named here.
        module_args["_ansible_module_name"] = "%s.%s" % (COLLECTION, self.module_base)

    def _module_args(self, task_vars):
        """The arguments the binary gets: the task's, unchanged. Subclasses may transfer
        files first (into the task's temporary directory, removed after the task)."""
        # _execute_module adds the _ansible_* keys to the dict it is given: hand it a copy.
        args = dict(self._task.args)
        if self.estate_option and not args.get("estate_name"):
            estate = self._templar.template(task_vars.get("flightctl_dr_estate_name") or "") or task_vars.get("inventory_hostname")
            if estate:
                args["estate_name"] = to_text(estate)
        return args

    def _tmpdir(self):
        """The task's temporary directory on the target, created when needed."""
        if self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        return self._connection._shell.tmpdir

    def run(self, tmp=None, task_vars=None):
        if task_vars is None:
            task_vars = {}
        # ActionBase.__init__ sets both to False on the instance: set them here, before
        # ActionBase.run checks them. async runs the binary through Ansible's async wrapper.
        self._supports_check_mode = True
        self._supports_async = True
        result = super(ArchDispatchAction, self).run(tmp, task_vars)
        del tmp

        arch = self._target_goarch(task_vars)
        binary = self._find_binary(arch)
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        try:
            module_args = self._module_args(task_vars)
            result.update(self._execute_module(module_name=binary, module_args=module_args,
                                               task_vars=task_vars, wrap_async=wrap_async))
            # A role's user sets role variables, not module options: say those.
            if in_collection_role(self._task):
                words = role_words(module_options(self.module_base), task_vars.get("flightctl_dr_known_variables"))
                reword_result(result, Wording(words))
        finally:
            # An async job removes its own temporary directory when it ends.
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
