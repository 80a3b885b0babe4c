"""Stage 03: a kernel in L1 that has the driver of L1's vIOMMU.

A kernel argument cannot turn on a driver the kernel was built without. Debian's
cloud kernel (``linux-image-cloud-amd64``, the lab's L1 kernel) has
``CONFIG_INTEL_IOMMU=y`` but not ``CONFIG_AMD_IOMMU``: behind QEMU's amd-iommu it
prints ``Unknown kernel command line parameters "amd_iommu=on"`` and no ``AMD-Vi``
line at all, and ``/sys/kernel/iommu_groups`` stays empty. Distribution kernels
built for hardware (Debian's ``linux-image-amd64``, RHEL's ``kernel``) have both.

So: read ``/boot/config-<release>`` of the running kernel; when it lacks the driver,
make an installed kernel that has it the bootloader's default (grubby
``--set-default``, or ``GRUB_DEFAULT`` plus ``update-grub``); stage 03's reboot then
starts it. Nothing is downloaded: a kernel must already be installed (the lab's
image carries Debian's generic kernel beside the cloud one).
"""
from __future__ import annotations

import re

from ..errors import RunbookError
from ..guest import Guest
from . import Change, did, no_change
from .kernel_args import bootloader

KCONFIG = {"intel": "CONFIG_INTEL_IOMMU", "amd": "CONFIG_AMD_IOMMU"}
GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")


def has_driver(config_text: str | None, kind: str) -> bool | None:
    """Is the ``kind`` IOMMU driver built in, by a kernel's ``/boot/config-*`` text (None: no text)?"""
    if config_text is None:
        return None
    return re.search(rf"^{KCONFIG[kind]}=y\s*$", config_text, re.M) is not None


def running_kernel(guest: Guest) -> str:
    return guest.run("uname -r", timeout=30, check=True).out.strip()


def installed_kernels(guest: Guest) -> list[str]:
    """Releases with a ``/boot/vmlinuz-<release>``, newest name first."""
    return sorted((n.removeprefix("vmlinuz-") for n in guest.listdir("/boot") if n.startswith("vmlinuz-")),
                  reverse=True)


def grub_entry_id(cfg: str, release: str) -> str | None:
    """GRUB's id of the ``release`` entry in grub.cfg, as ``GRUB_DEFAULT`` takes it:
    ``<submenu id>><entry id>`` (Debian puts every kernel but the default in a submenu)."""
    entry = re.search(rf"menuentry '[^']*' [^\n]*\$menuentry_id_option '(gnulinux-{re.escape(release)}-advanced-[^']+)'",
                      cfg)
    if not entry:
        return None
    submenu = re.search(r"^submenu '[^']*' [^\n]*\$menuentry_id_option '([^']+)'", cfg, re.M)
    return f"{submenu.group(1)}>{entry.group(1)}" if submenu else entry.group(1)


def set_grub_default(text: str, value: str) -> str:
    """/etc/default/grub's text with ``GRUB_DEFAULT="value"``."""
    line = f'GRUB_DEFAULT="{value}"'
    if re.search(r"^GRUB_DEFAULT=.*$", text, re.M):
        return re.sub(r"^GRUB_DEFAULT=.*$", line, text, count=1, flags=re.M)
    return text.rstrip("\n") + f"\n{line}\n"


def missing_driver_error(release: str, kind: str) -> RunbookError:
    return RunbookError(
        f"L1's kernel {release} is built without {KCONFIG[kind]} and no other installed kernel has it: "
        f"the {kind} vIOMMU cannot be used in L1",
        hint="install the distribution's generic kernel in L1 (Debian: apt-get install linux-image-amd64, whose "
             "cloud kernel lacks the AMD IOMMU driver; RHEL: dnf install kernel), then rerun stage 03")


def ensure_iommu_kernel(guest: Guest, kind: str) -> tuple[Change, str | None]:
    """Make the next boot start a kernel with the ``kind`` IOMMU driver. Returns the change
    and the release to boot (None when the running kernel has the driver or cannot be read)."""
    what = f"a kernel with the {kind} IOMMU driver ({KCONFIG[kind]}=y)"
    release = running_kernel(guest)
    ok = has_driver(guest.read_text(f"/boot/config-{release}"), kind)
    if ok is None:
        return no_change(what, f"/boot/config-{release} is not readable: the kernel log after the reboot tells"), None
    if ok:
        return no_change(what, f"the running kernel {release} has it"), None
    target = next((k for k in installed_kernels(guest)
                   if k != release and has_driver(guest.read_text(f"/boot/config-{k}"), kind)), None)
    if target is None:
        raise missing_driver_error(release, kind)
    way = bootloader(guest)
    if way == "grubby":
        guest.run(["grubby", "--set-default", f"/boot/vmlinuz-{target}"], check=True)
        return did(what, f"{release} lacks it; grubby --set-default /boot/vmlinuz-{target}"), target
    if way != "grub":
        raise RunbookError(f"L1's kernel {release} lacks {KCONFIG[kind]}; {target} has it, but the runbook "
                           f"sets the default kernel with grub or grubby only (found {way})",
                           hint=f"make {target} the default boot entry by hand, then rerun stage 03")
    cfg = next((t for p in GRUB_CFGS if (t := guest.read_text(p))), "")
    entry = grub_entry_id(cfg, target)
    if entry is None:
        raise RunbookError(f"no GRUB menu entry for {target} in {' or '.join(GRUB_CFGS)}",
                           hint="run update-grub in L1, then rerun stage 03")
    text = guest.read_text("/etc/default/grub") or ""
    new = set_grub_default(text, entry)
    if new != text:
        guest.run("cat > /etc/default/grub", input=new, check=True)
        tool = "update-grub" if guest.which("update-grub") else "grub2-mkconfig -o /boot/grub2/grub.cfg"
        guest.run(tool, timeout=300, check=True)
        return did(what, f"{release} lacks it; GRUB_DEFAULT=\"{entry}\", then {tool}: the next boot starts {target}"), target
    return no_change(what, f"{release} lacks it; GRUB_DEFAULT already starts {target} at the next boot"), target
