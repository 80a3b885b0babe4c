"""What a check is, the facts it reads, and the registry the checks join."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..facts import cpu as cpu_facts
from ..facts import iommu as iommu_facts
from ..facts import kvm as kvm_facts
from ..facts import libvirt as libvirt_facts
from ..facts import system as system_facts
from ..params import Params
from .accel import KvmUsability, choose_accel, forced_accel, kvm_usability
from .smoke import Smoke

VERDICTS = ("pass", "warn", "fail", "skip")


@dataclass
class Check:
    """One judged fact. ``data`` carries what later code needs (not shown)."""

    name: str
    observed: str
    verdict: str
    fix: str = ""
    data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class HostFacts:
    """Everything the checks judge, read from one machine."""

    role: str
    cpu: cpu_facts.CPU
    topology: cpu_facts.Topology
    kvm: kvm_facts.KVM
    cmdline: kvm_facts.Cmdline
    smoke: Smoke
    iommu: iommu_facts.IOMMU
    libvirt: libvirt_facts.Libvirt
    qemu: libvirt_facts.Qemu
    memory: system_facts.Memory
    os: system_facts.OSRelease
    disk: system_facts.Disk | None = None
    kernel: str | None = None     # the running kernel's release


@dataclass
class Judging:
    """What every check of one machine sees: its facts, the parameters, and what follows
    from them once (where it is, who its guests are, and the accelerator they get)."""

    f: HostFacts
    p: Params
    role: str
    usability: KvmUsability
    accel: str
    accel_reason: str

    @classmethod
    def of(cls, f: HostFacts, p: Params, role: str) -> "Judging":
        u = kvm_usability(f)
        accel, why = choose_accel(u, forced_accel(p, role))
        return cls(f, p, role, u, accel, why)

    @property
    def where(self) -> str:
        return "on the host" if self.role == "l0" else "in L1"

    @property
    def guests(self) -> str:
        return "L1" if self.role == "l0" else "L2"

    @property
    def forced(self) -> str:
        return forced_accel(self.p, self.role)

    def no_kvm_verdict(self) -> str:
        return "fail" if self.forced == "kvm" else "warn"

    @property
    def qemu_version(self) -> str | None:
        return self.f.libvirt.qemu_version or self.f.qemu.version


CheckFn = Callable[[Judging], "Check | None"]
REGISTRY: list[tuple[str, CheckFn]] = []   # (name, function), in the order the table shows them


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check: ``fn(judging)`` returns its Check, or None where it does not apply."""
    def register(fn: CheckFn) -> CheckFn:
        if any(n == name for n, _ in REGISTRY):
            raise ValueError(f"a check named {name!r} is registered already")
        REGISTRY.append((name, fn))
        fn.check_name = name
        return fn
    return register


def version(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:3])
