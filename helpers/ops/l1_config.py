"""Stage 03: reboot L1 when its running kernel lacks the arguments, and libvirtd inside L1
(kernel arguments and packages: ``helpers.distro``). Each job has a read-only part that
says what would happen and a part that does it."""
from __future__ import annotations

import time
from typing import Callable

from ..distro import missing_args
from ..errors import RunbookError
from ..guest import Guest
from ..wait import wait_for
from . import Change, did

# detached, so the SSH session that asks for it ends cleanly before the machine goes down
REBOOT = "nohup sh -c 'sleep 1; systemctl reboot || reboot' >/dev/null 2>&1 &"


def boot_id(guest: Guest) -> str | None:
    r = guest.read("cat /proc/sys/kernel/random/boot_id", timeout=20)
    return r.out.strip() if r.ok else None


def running_lacks(guest: Guest, wanted: list[str]) -> list[str]:
    """Read only: the arguments of ``wanted`` the running kernel's command line lacks."""
    return missing_args(guest.read("cat /proc/cmdline").check().out, wanted)


def running_kernel(guest: Guest) -> str:
    """Read only: the running kernel's release (``uname -r``)."""
    return guest.read("uname -r", timeout=30).check().out.strip()


def reboot(guest: Guest, wanted: list[str], timeout: float, log=None, kernel: str | None = None,
           agent_up: Callable[[], bool] | None = None) -> Change:
    """Reboot and wait until the kernel is back with ``wanted`` on its command line (and,
    when ``kernel`` is given, is that release). ``agent_up`` (the machine's guest agent answers,
    asked of its host's libvirt) spares SSH attempts while the machine is down: through QEMU's
    user-mode network such an attempt hangs until its connect timeout, and would go on hanging
    past the moment sshd is back."""
    before = boot_id(guest)
    gate = agent_up if agent_up is not None and agent_up() else None  # (no agent: SSH alone)
    guest.run(REBOOT, timeout=20)
    t0 = time.monotonic()

    def back() -> bool:
        if gate is not None and not gate():
            return False
        return (b := boot_id(guest)) is not None and b != before
    wait_for(back, f"{guest.name}: reboot", timeout, interval=0.5, log=log,
             hint=f"{guest.name} did not come back: read its console log {log}")
    after = guest.read("cat /proc/cmdline").check().out
    still = missing_args(after, wanted)
    if still:
        raise RunbookError(f"{guest.name} rebooted but its kernel command line lacks {' '.join(still)}: {after.strip()}",
                           hint="the bootloader did not take the change: check /etc/default/grub and grub.cfg")
    if kernel and (now := guest.read("uname -r").check().out.strip()) != kernel:
        raise RunbookError(f"{guest.name} rebooted into kernel {now}, not {kernel}",
                           hint="the bootloader's default entry did not take: check GRUB_DEFAULT in "
                                "/etc/default/grub and grub.cfg (or grubby --default-kernel)")
    return did(f"reboot {guest.name}", f"back after {time.monotonic() - t0:.0f} s with {' '.join(wanted)}"
                                       + (f", kernel {kernel}" if kernel else ""))


def libvirt_answers(guest: Guest, uri: str = "qemu:///system") -> bool:
    """Read only: does ``virsh -c uri version`` answer?"""
    from ..virt import Virsh
    return Virsh(guest, uri).read("version", timeout=60).ok


def libvirt_unit(guest: Guest) -> str:
    """Read only: libvirtd, or the modular daemons' virtqemud where libvirtd is not installed."""
    return "libvirtd" if guest.read("systemctl cat libvirtd.service").ok else "virtqemud"


def start_libvirtd(guest: Guest, unit: str, uri: str = "qemu:///system", timeout: float = 120) -> Change:
    """``systemctl enable --now unit``, then wait until ``uri`` answers."""
    guest.run(f"systemctl enable --now {unit}", timeout=120, check=True)
    wait_for(lambda: libvirt_answers(guest, uri), f"{guest.name}: {uri}", timeout, interval=1)
    return did(f"libvirt in {guest.name}", f"systemctl enable --now {unit}; {uri} answers")
