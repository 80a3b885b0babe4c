"""Stage 03: reboot when needed and libvirtd inside L1 (kernel arguments and packages: ``helpers.distro``)."""
from __future__ import annotations

import time

from ..errors import RunbookError
from ..guest import Guest
from ..wait import wait_for
from . import Change, did, no_change
from ..distro import missing_args


def boot_id(guest: Guest) -> str | None:
    r = guest.run("cat /proc/sys/kernel/random/boot_id", timeout=20)
    return r.out.strip() if r.ok else None


def reboot_if_needed(guest: Guest, wanted: list[str], timeout: float, log=None) -> Change:
    """Reboot when the running kernel lacks ``wanted``; wait until it is back with them."""
    cmdline = guest.run("cat /proc/cmdline", check=True).out
    lacking = missing_args(cmdline, wanted)
    if not lacking:
        return no_change(f"reboot {guest.name}", f"the running kernel already has {' '.join(wanted)}")
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
    return did(f"reboot {guest.name}", f"back after {time.monotonic() - t0:.0f} s with {' '.join(wanted)}")


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
