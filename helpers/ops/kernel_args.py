"""Stage 03: kernel arguments the distro's way, added only when missing.

- RHEL family (the seed's CentOS 7): ``grubby --update-kernel ALL --args ...``;
- Debian family: ``GRUB_CMDLINE_LINUX`` in /etc/default/grub, then ``update-grub``
  (or ``grub2-mkconfig`` where that is the tool);
- systems booted by systemd-boot/BLS without grub: ``/etc/kernel/cmdline`` and
  ``kernel-install``.
"""
from __future__ import annotations

import re
import shlex

from ..errors import RunbookError
from ..guest import Guest
from . import Change, did, no_change


def iommu_args(kind: str, passthrough: bool, tcg: bool = False) -> list[str]:
    """``intel_iommu=on`` (the seed) for Intel, plus ``iommu=pt`` when asked.

    AMD has no ``on``: the AMD driver starts by itself whenever the firmware has an
    IVRS table, and ``amd_iommu=`` takes only options such as ``off``, ``fullflush``
    or ``force_isolation`` (drivers/iommu/amd/init.c, parse_amd_iommu_options, logs
    ``AMD-Vi: Unknown option - 'on'``). So for AMD only ``iommu=pt``, when asked."""
    args = ["intel_iommu=on"] if kind == "intel" else []
    args += ["iommu=pt"] if passthrough else []
    if kind == "amd" and tcg:
        # L1 under TCG behind QEMU's amd-iommu: Linux's check that the 8254 timer reaches it
        # through the IO-APIC fails ("..MP-BIOS bug: 8254 timer not connected to IO-APIC" even
        # without the AMD driver), and with interrupt remapping on it may not fall back, so it
        # panics: "timer doesn't work through Interrupt-remapped IO-APIC" (io_apic.c,
        # check_timer). no_timer_check skips that test; L1 keeps its local APIC timer.
        args.append("no_timer_check")
    return args


def missing_args(current: str, wanted: list[str]) -> list[str]:
    """The wanted ``key=value`` arguments the command line lacks (same key, other value counts as missing)."""
    have = shlex.split(current)
    return [w for w in wanted if w not in have]


def edit_default_grub(text: str, wanted: list[str]) -> tuple[str, list[str]]:
    """Add the missing arguments to GRUB_CMDLINE_LINUX in /etc/default/grub's text.
    Returns the new text and what was added (nothing: unchanged text)."""
    m = re.search(r'^GRUB_CMDLINE_LINUX=(["\']?)(.*?)\1\s*$', text, re.M)
    if m is None:
        add = wanted
        return text.rstrip("\n") + f'\nGRUB_CMDLINE_LINUX="{" ".join(add)}"\n', add
    current = m.group(2)
    # an argument set in GRUB_CMDLINE_LINUX_DEFAULT counts as present
    d = re.search(r'^GRUB_CMDLINE_LINUX_DEFAULT=(["\']?)(.*?)\1\s*$', text, re.M)
    add = missing_args(current + " " + (d.group(2) if d else ""), wanted)
    if not add:
        return text, []
    # a same-key argument with another value (intel_iommu=off) is replaced
    keys = {a.split("=")[0] for a in add}
    kept = [a for a in shlex.split(current) if a.split("=")[0] not in keys]
    new = " ".join(kept + add)
    line = f'GRUB_CMDLINE_LINUX="{new}"'
    return text[: m.start()] + line + text[m.end():], add


def grubby_args(info: str) -> dict[str, str]:
    """kernel path -> args, from ``grubby --info=ALL``."""
    out, kernel = {}, None
    for line in info.splitlines():
        k, _, v = line.partition("=")
        v = v.strip().strip('"')
        if k == "kernel":
            kernel = v
        elif k == "args" and kernel:
            out[kernel] = v
    return out


def bootloader(guest: Guest) -> str:
    """Which way this system takes kernel arguments: grubby, grub, or kernel-install."""
    if guest.which("grubby"):
        return "grubby"
    if guest.exists("/etc/default/grub"):
        return "grub"
    if guest.exists("/etc/kernel/cmdline") or guest.which("kernel-install"):
        return "kernel-install"
    raise RunbookError(f"{guest.name}: no grubby, /etc/default/grub or kernel-install found",
                       hint="add the kernel arguments with your bootloader's tool by hand, then rerun stage 03")


def ensure_kernel_args(guest: Guest, wanted: list[str]) -> Change:
    """Make the next boot's kernel command line carry ``wanted``, the distro's way."""
    if not wanted:
        return no_change("kernel arguments", "none to add")
    way = bootloader(guest)
    what = f"kernel arguments {' '.join(wanted)} ({way})"
    if way == "grubby":
        info = guest.run("grubby --info=ALL", check=True).out
        lacking = {k: missing_args(a, wanted) for k, a in grubby_args(info).items()}
        add = sorted({a for v in lacking.values() for a in v})
        if not add:
            return no_change(what, "every kernel entry has them")
        guest.run(["grubby", "--update-kernel", "ALL", "--args", " ".join(add)], check=True)
        return did(what, f"grubby --update-kernel ALL --args \"{' '.join(add)}\"")
    if way == "grub":
        text = guest.read_text("/etc/default/grub") or ""
        new, add = edit_default_grub(text, wanted)
        if not add:
            return no_change(what, "/etc/default/grub has them")
        guest.run("cp /etc/default/grub /etc/default/grub.before-runbook", check=True)
        guest.run("cat > /etc/default/grub", input=new, check=True)
        tool = "update-grub" if guest.which("update-grub") else "grub2-mkconfig -o /boot/grub2/grub.cfg"
        guest.run(tool, timeout=300, check=True)
        return did(what, f"added {' '.join(add)} to GRUB_CMDLINE_LINUX, then {tool}")
    text = (guest.read_text("/etc/kernel/cmdline") or guest.read_text("/proc/cmdline") or "").strip()
    add = missing_args(text, wanted)
    if not add:
        return no_change(what, "/etc/kernel/cmdline has them")
    guest.run("cat > /etc/kernel/cmdline", input=" ".join(shlex.split(text) + add) + "\n", check=True)
    guest.run('kernel-install add "$(uname -r)" "/lib/modules/$(uname -r)/vmlinuz"', timeout=300, check=True)
    return did(what, f"added {' '.join(add)} to /etc/kernel/cmdline, then kernel-install")
