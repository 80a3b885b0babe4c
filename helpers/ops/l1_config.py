"""Stage 03: reboot when needed, packages, libvirtd inside L1."""
from __future__ import annotations

import shlex
import time

from ..errors import RunbookError
from ..guest import Guest
from ..wait import wait_for
from . import Change, did, no_change
from .kernel_args import missing_args


def boot_id(guest: Guest) -> str | None:
    r = guest.run("cat /proc/sys/kernel/random/boot_id", timeout=20)
    return r.out.strip() if r.ok else None


def reboot_if_needed(guest: Guest, wanted: list[str], timeout: float, log=None, kernel: str | None = None) -> Change:
    """Reboot when the running kernel lacks ``wanted`` (or is not release ``kernel``);
    wait until it is back with them."""
    cmdline = guest.run("cat /proc/cmdline", check=True).out
    lacking = missing_args(cmdline, wanted)
    running = guest.run("uname -r", check=True).out.strip() if kernel else None
    if not lacking and running == kernel:
        return no_change(f"reboot {guest.name}", f"the running kernel{f' {kernel}' if kernel else ''} "
                                                 f"already has {' '.join(wanted)}")
    before = boot_id(guest)
    guest.run("nohup sh -c 'sleep 1; systemctl reboot || reboot' >/dev/null 2>&1 &", timeout=20)
    t0 = time.monotonic()
    wait_for(lambda: (b := boot_id(guest)) is not None and b != before,
             f"{guest.name}: reboot", timeout, interval=1, log=log,
             hint=f"{guest.name} did not come back: read its console log {log}")
    after = guest.run("cat /proc/cmdline", check=True).out
    still = missing_args(after, wanted)
    if still:
        raise RunbookError(f"{guest.name} rebooted but its kernel command line lacks {' '.join(still)}: {after.strip()}",
                           hint="the bootloader did not take the change: check /etc/default/grub and grub.cfg")
    if kernel and (now := guest.run("uname -r", check=True).out.strip()) != kernel:
        raise RunbookError(f"{guest.name} rebooted into kernel {now}, not {kernel}",
                           hint="the bootloader's default entry did not take: check GRUB_DEFAULT in "
                                "/etc/default/grub and grub.cfg (or grubby --default-kernel)")
    return did(f"reboot {guest.name}", f"back after {time.monotonic() - t0:.0f} s with {' '.join(wanted)}"
                                       + (f", kernel {kernel}" if kernel else ""))


def package_manager(guest: Guest) -> str:
    for pm in ("apt-get", "dnf", "yum"):
        if guest.which(pm):
            return pm
    raise RunbookError(f"{guest.name}: no apt-get, dnf or yum", hint="install libvirt and QEMU by hand")


def missing_packages(guest: Guest, pm: str, packages: list[str]) -> list[str]:
    """Those of ``packages`` not installed (apt: one dpkg-query for all of them)."""
    if pm == "apt-get":
        r = guest.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages])
        ok = {line.split()[0] for line in r.out.splitlines() if line.endswith(" install ok installed")}
        return [p for p in packages if p not in ok]
    return [p for p in packages if not guest.run(["rpm", "-q", "--whatprovides", p]).ok]


def ensure_packages(guest: Guest, packages: list[str], timeout: float = 1800) -> Change:
    """Install what is missing of ``packages`` with the guest's package manager."""
    pm = package_manager(guest)
    missing = missing_packages(guest, pm, packages)
    what = f"packages in {guest.name} ({pm})"
    if not missing:
        return no_change(what, "found installed: " + ", ".join(packages))
    if pm == "apt-get":
        cmd = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
               + shlex.join(missing))
    else:
        cmd = f"{pm} install -y -q " + shlex.join(missing)
    r = guest.run(cmd, timeout=timeout)
    if not r.ok:
        tail = "\n".join((r.err or r.out).strip().splitlines()[-5:])
        raise RunbookError(f"{guest.name}: `{cmd}` failed:\n{tail}",
                           hint="check the guest's package sources (the lab's L1 uses its local repository)")
    found = [p for p in packages if p not in missing]
    return did(what, f"installed {', '.join(missing)}" + (f"; found {', '.join(found)}" if found else ""))


def ensure_libvirtd(guest: Guest, uri: str = "qemu:///system", timeout: float = 120) -> Change:
    """libvirtd (or the modular virtqemud) enabled and answering at ``uri``."""
    what = f"libvirt in {guest.name}"
    if guest.run(["virsh", "-c", uri, "version"], timeout=60).ok:
        return no_change(what, f"{uri} answers")
    unit = "libvirtd" if guest.run("systemctl cat libvirtd.service").ok else "virtqemud"
    guest.run(f"systemctl enable --now {unit}", timeout=120, check=True)
    wait_for(lambda: guest.run(["virsh", "-c", uri, "version"], timeout=60).ok,
             f"{guest.name}: {uri}", timeout, interval=1)
    return did(what, f"systemctl enable --now {unit}; {uri} answers")
