"""Packages, the distribution's way: one class per package manager, chosen once by ``package_manager(guest)``."""
from __future__ import annotations

import shlex

from ..errors import RunbookError
from ..guest import Guest
from ..ops import Change, did, no_change
from .base import DistroPlan, Edit


class PackageManager:
    """One package manager: what is missing, the install command, and the fix text."""

    name = ""
    qemu = ""         # the package that brings qemu-system-x86_64 (or qemu-kvm)

    @classmethod
    def detect(cls, guest: Guest) -> "PackageManager | None":
        return cls() if guest.which(cls.name) else None

    def missing(self, guest: Guest, packages: list[str]) -> list[str]:
        """Those of ``packages`` not installed."""
        return [p for p in packages if not guest.run(["rpm", "-q", "--whatprovides", p]).ok]

    def install_command(self, packages: list[str]) -> str:
        return f"{self.name} install -y -q " + shlex.join(packages)

    def plan(self, guest: Guest, packages: list[str]) -> DistroPlan:
        what = f"packages in {guest.name} ({self.name})"
        missing = self.missing(guest, packages)
        if not missing:
            return DistroPlan(what, reason="found installed: " + ", ".join(packages))
        found = [p for p in packages if p not in missing]
        cmd = self.install_command(missing)
        return DistroPlan(what, [Edit(f"install {', '.join(missing)}"
                                      + (f" (found installed: {', '.join(found)})" if found else ""), [cmd])],
                          data={"command": cmd, "missing": missing, "found": found})

    def apply(self, guest: Guest, plan: DistroPlan, timeout: float = 1800) -> Change:
        if not plan.changes:
            return no_change(plan.what, plan.reason)
        cmd = plan.data["command"]
        r = guest.run(cmd, timeout=timeout)
        if not r.ok:
            tail = "\n".join((r.err or r.out).strip().splitlines()[-5:])
            raise RunbookError(f"{guest.name}: `{cmd}` failed:\n{tail}",
                               hint="check the guest's package sources (the lab's L1 uses its local repository)")
        found = plan.data["found"]
        return did(plan.what, f"installed {', '.join(plan.data['missing'])}"
                   + (f"; found {', '.join(found)}" if found else ""))

    @classmethod
    def fix(cls, packages: list[str]) -> str:
        """The command to type, for a check's fix."""
        return f"{cls.name} install " + " ".join(packages)


class Apt(PackageManager):
    """Debian and Ubuntu."""

    name = "apt-get"
    qemu = "qemu-system-x86"

    def missing(self, guest, packages):
        """One dpkg-query for all of them."""
        r = guest.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages])
        ok = {line.split()[0] for line in r.out.splitlines() if line.endswith(" install ok installed")}
        return [p for p in packages if p not in ok]

    def install_command(self, packages):
        return "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends " + shlex.join(packages)


class Dnf(PackageManager):
    """Fedora, RHEL 8 and later."""

    name = "dnf"
    qemu = "qemu-kvm"


class Yum(PackageManager):
    """RHEL/CentOS 7 (the seed: ``yum install libvirt qemu-kvm virt-install``)."""

    name = "yum"
    qemu = "qemu-kvm"


MANAGERS: tuple[type[PackageManager], ...] = (Apt, Dnf, Yum)  # in the order detect tries them


def package_manager(guest: Guest) -> PackageManager:
    for cls in MANAGERS:
        found = cls.detect(guest)
        if found is not None:
            return found
    raise RunbookError(f"{guest.name}: no apt-get, dnf or yum", hint="install libvirt and QEMU by hand")


def install_fix(what: str, where: str) -> str:
    """How to install ``what`` ('qemu' for now) on either family, for a check's fix."""
    if what != "qemu":
        raise ValueError(f"no install fix for {what!r}")
    return f"install QEMU {where}: {Apt.fix([Apt.qemu])} (Debian) or {Dnf.fix([Dnf.qemu])} (RHEL)"
