"""Distribution knowledge, in one place: how a system takes kernel arguments and
installs packages. Rule: each platform difference is one small class chosen once
(``detect``), whose ``plan`` says exactly what it would run and ``apply`` runs that.

- ``boot``: kernel arguments: ``Grubby`` (RHEL family, the seed's CentOS 7),
  ``DefaultGrub`` (/etc/default/grub, then update-grub or grub2-mkconfig),
  ``KernelInstall`` (systemd-boot/BLS: /etc/kernel/cmdline, then kernel-install);
- ``packages``: ``Apt``, ``Dnf``, ``Yum``.

Each class also gives the ``fix`` text the checks print (how to do it by hand there).
A plan is a ``DistroPlan``: the edits it would make (``Edit``: what, the exact
commands, a file's diff) or, when there is none, the reason; ``data`` is what apply
needs, computed once by plan.
"""
from __future__ import annotations

from .base import DistroPlan, Edit
from .boot import (BOOTLOADERS, Bootloader, DefaultGrub, Grubby, KernelInstall, bootloader, boot_fix,
                   edit_default_grub, grubby_args, iommu_args, missing_args)
from .packages import MANAGERS, Apt, Dnf, PackageManager, Yum, install_fix, package_manager

__all__ = ["DistroPlan", "Edit", "BOOTLOADERS", "Bootloader", "DefaultGrub", "Grubby", "KernelInstall",
           "bootloader", "boot_fix", "edit_default_grub", "grubby_args", "iommu_args", "missing_args",
           "MANAGERS", "Apt", "Dnf", "PackageManager", "Yum", "install_fix", "package_manager"]
