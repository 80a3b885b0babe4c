"""The KVM smoke verdict: does an ordinary kernel boot under KVM here? Judged from
what ``facts.kvm.smoke_boot`` saw, and kept in /run for the rest of the machine's
boot (keyed by boot id, kernel, QEMU, timeout and accelerator) so reruns do not boot again."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from ..errors import RunbookError
from ..facts import kvm as kvm_facts
from ..facts.kvm import ANSI, SmokeBoot, last_line
from ..guest import Guest

CACHE = "/run/nested-nvme-kvm-smoke.json"


@dataclass
class Smoke:
    """Result of the smoke boot: 'usable', 'not usable' or 'not tested'."""

    status: str
    reason: str
    seconds: float | None = None
    last_line: str = ""
    kernel: str | None = None
    accel: str = "kvm"
    cached: bool = False  # measured earlier in this boot, not again now

    @property
    def usable(self) -> bool:
        return self.status == "usable"

    @property
    def tested(self) -> bool:
        return self.status != "not tested"


def verdict(guest_name: str, b: SmokeBoot) -> Smoke:
    """Judge one smoke boot. A guest that stopped answering during it (the command's
    own time ran out, not QEMU's) is an error, not a verdict about KVM."""
    if b.qemu is None:
        return Smoke("not tested", "QEMU is not installed (qemu-system-x86_64)", kernel=b.kernel, accel=b.accel)
    if b.kernel is None:
        return Smoke("not tested", "no kernel /boot/vmlinuz-* to boot", accel=b.accel)
    seconds = b.seconds or 0.0
    if b.rc == 124 and b.waited is not None and seconds >= b.waited - 5:
        raise RunbookError(f"{guest_name} stalled during the KVM smoke boot: no answer within {seconds:.0f} s "
                           f"({last_line(b.err) or 'no output'})",
                           hint="the guest itself stopped answering (in the lab: L1's vCPUs stalled under TCG "
                                "emulation); tear down with `--stages 99` and run again")
    out = ANSI.sub("", b.out)
    seen = last_line(b.out)
    if "Kernel panic" in out or ("Linux version" in out and "panic" in out):
        return Smoke("usable", f"the kernel booted to its expected panic in {seconds:.1f} s",
                     b.seconds, seen, b.kernel, b.accel)
    if b.rc == 124:
        return Smoke("not usable", f"hung: no kernel panic within {b.timeout} s "
                     f"(last line: {seen or 'nothing'!r})", b.seconds, seen, b.kernel, b.accel)
    err = last_line(b.err) or f"exit code {b.rc}"
    if re.search(r"could not load kernel|No such file|Permission denied.*vmlinuz", b.err, re.I):
        return Smoke("not tested", f"QEMU could not load {b.kernel}: {err}", b.seconds, seen, b.kernel, b.accel)
    return Smoke("not usable", f"QEMU failed: {err}", b.seconds, seen or err, b.kernel, b.accel)


def _cached(guest: Guest, key: dict) -> Smoke | None:
    """The verdict reached earlier in this same boot of ``guest``, if any."""
    text = guest.read_text(CACHE)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not data or data.get("key") != key:
        return None
    sm = Smoke(**data["smoke"])
    sm.cached = True
    return sm


def kvm_smoke(guest: Guest, timeout: int = 20, accel: str = "kvm", keep: bool = True) -> Smoke:
    """The smoke verdict for ``guest``: kept from earlier in this boot, or a new smoke boot judged
    (and kept, unless ``keep`` is false: check mode writes nothing, not even to /run)."""
    key = {"boot_id": kvm_facts.boot_id(guest), "kernel": kvm_facts.newest_kernel(guest),
           "qemu": kvm_facts.find_qemu(guest), "timeout": timeout, "accel": accel}
    if key["boot_id"] and (cached := _cached(guest, key)):
        return cached
    sm = verdict(guest.name, kvm_facts.smoke_boot(guest, timeout, accel))
    if keep and key["boot_id"] and sm.tested:
        guest.run(f"cat > {CACHE}", input=json.dumps({"key": key, "smoke": dataclasses.asdict(sm)}))
    return sm
