"""The runbook's parameters: one typed schema for all stages, loaded from YAML.

Loading refuses, before anything runs, a file that is not a parameter file
(a folder, not UTF-8, empty, a notebook, a key given twice), a wrong type, an
unknown key (naming the nearest valid one), a missing or impossible value, a
path that cannot be meant, and settings that contradict each other: one line a
problem, naming the file, the line, the key and what to do. A value under a key
that looks like a secret is never printed back. ``helpers.params.fit`` adds
what only the host can tell.

- ``fields``: ParamsError, the limits, ``F`` and the checks of one value (paths, names);
- ``schema``: the sections and ``Params``, and the settings that contradict each other;
- ``messages``: one line for a validation error (the nearest key, secrets never shown);
- ``loading``: ``load``, the YAML with each key's line;
- ``fit``: the checks against this host (CPUs, memory, files, free space, SSH port, bridge).
"""
from __future__ import annotations

from .fields import (BDF_RE, CPUSET_RE, KERNEL_TREES, LAB_L2_IMAGE, LONGEST_SUFFIX, MAX_CPU, NAME_MAX, SYSTEM_DIRS,
                     F, ParamsError, check_domain_name, check_file_path, check_guest_path, check_workdir,
                     parse_cpuset)
from .loading import _parse, _read, load
from .messages import KEY_MATERIAL, README, SECRET_RE, error_key, explain, looks_secret
from .schema import (EMULATED_ONLY, L1, L2, NVMe, Bench, Host, HostNVMeSelect, HostSSH, Network, Params, Section,
                     Select, SSHAccess, Teardown, Verify, conflicts, lab_conflicts)

__all__ = ["BDF_RE", "CPUSET_RE", "KERNEL_TREES", "LAB_L2_IMAGE", "LONGEST_SUFFIX", "MAX_CPU", "NAME_MAX", "SYSTEM_DIRS",
           "F", "ParamsError", "check_domain_name", "check_file_path", "check_guest_path", "check_workdir",
           "parse_cpuset", "_parse", "_read", "load", "KEY_MATERIAL", "README", "SECRET_RE", "error_key", "explain",
           "looks_secret", "EMULATED_ONLY", "L1", "L2", "NVMe", "Bench", "Host", "HostNVMeSelect", "HostSSH",
           "Network", "Params", "Section", "Select", "SSHAccess", "Teardown", "Verify", "conflicts", "lab_conflicts"]
