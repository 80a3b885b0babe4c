"""What one parameter value may be: the error a parameter file raises, the patterns and
limits, ``F`` (a field with its meaning), and the checks of paths and names the schema's
validators share."""
from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field

BDF_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$")
CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class ParamsError(ValueError):
    """A parameter file that cannot be used, with what to change."""


def parse_cpuset(text: str) -> list[int]:
    """'16-23,40-47' -> [16, ..., 23, 40, ..., 47]."""
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


LAB_L2_IMAGE = "lab-l2"             # l1.image: the lab's L2 image, in the lab's own L1 acting as L0
MAX_CPU = 8191                      # Linux's highest CPU number (NR_CPUS is at most 8192)
NAME_MAX = 255                      # the longest file name Linux filesystems take
LONGEST_SUFFIX = "-console.log"     # the longest suffix the runbook adds to a domain name in a file name
KERNEL_TREES = ("/proc", "/sys", "/dev")
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib",
    "/usr/local", "/usr/sbin", "/usr/share", "/var", "/var/cache", "/var/lib", "/var/log", "/var/run",
    "/var/tmp", "/var/lib/libvirt", "/var/lib/libvirt/images", "/var/lib/libvirt/qemu", "/etc/libvirt"})


def F(default, doc: str, example=None, consent: str | None = None, **kw):
    """A field with its meaning (forms' tooltips, parameters/README.md), an
    example, and for a consent key what it allows."""
    extra = {k: v for k, v in (("example", example), ("consent", consent)) if v is not None}
    return Field(default, description=doc, json_schema_extra=extra or None, **kw)


def kernel_tree(p: str) -> str | None:
    return next((t for t in KERNEL_TREES if p == t or p.startswith(t + "/")), None)


def check_file_path(v, example: str):
    """A file on L0: absolute (``~`` is expanded), not in the kernel's trees, not a folder."""
    if v is None:
        return v
    p = Path(v).expanduser()
    if not p.is_absolute():
        raise ValueError(f"`{v}` is a relative path: give an absolute one, e.g. {example}")
    p = Path(os.path.normpath(p))
    if tree := kernel_tree(str(p)):
        raise ValueError(f"{p} is under {tree}, where the kernel shows devices and its own state: "
                         f"give a file on a disk, e.g. {example}")
    if p.is_dir():
        raise ValueError(f"{p} is a folder: give the path of a file, e.g. {example}")
    return p


def check_workdir(v):
    """host.workdir: absolute, a folder of the runbook's own (teardown removes what it made there)."""
    p = Path(v).expanduser()
    if not p.is_absolute():
        raise ValueError(f"`{v}` is a relative path: give an absolute one, e.g. /var/lib/nested-nvme")
    p = Path(os.path.normpath(p))
    if str(p) in SYSTEM_DIRS or kernel_tree(str(p)):
        raise ValueError(f"{p} is a system folder: teardown removes what the runbook made in host.workdir, "
                         "so give a folder of the runbook's own, e.g. /var/lib/nested-nvme")
    if p.exists() and not p.is_dir():
        raise ValueError(f"{p} is a file: give a folder (it is created if missing), e.g. /var/lib/nested-nvme")
    return p


def check_guest_path(v: str, what: str, example: str) -> str:
    """A path inside a guest: absolute, and for a folder not one of the system's."""
    if not v.startswith("/"):
        raise ValueError(f"`{v}` is a relative path: give an absolute one {what}, e.g. {example}")
    return os.path.normpath(v)


def check_domain_name(v: str) -> str:
    """A libvirt domain name the runbook's file names can carry."""
    if not v[0].isalnum():
        raise ValueError(f"`{v}` starts with `{v[0]}`: start the name with a letter or a digit")
    longest = NAME_MAX - len(LONGEST_SUFFIX)
    if len(v) > longest:
        raise ValueError(f"{len(v)} characters make the runbook's file <name>{LONGEST_SUFFIX} "
                         f"{len(v) + len(LONGEST_SUFFIX)} characters long, more than the {NAME_MAX} a file name "
                         f"may have: use at most {longest}")
    return v
