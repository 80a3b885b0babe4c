"""Judging a machine's facts. Rule: checks only judge facts already read; each is a small
registered function returning Check(name, observed, verdict, fix); the accelerator is chosen
in one place (``accel``).

``host_checks(guest, params, role)`` reads the facts (``gather``) and judges
them (``judge``: every function of the registry, in order). The same checks run on
the host (role 'l0', stage 01) and in L1 (role 'l1', stage 03): at L0 the guests
to come are L1, in L1 they are L2. The IOMMU is judged by what is there (ACPI
DMAR/IVRS table, kernel log, /sys/class/iommu), never by the CPU vendor: the lab's
L1 is an AMD-flavoured TCG CPU with an emulated Intel IOMMU.

- ``base``: Check, HostFacts, the registry (``@check(name)``)
- ``accel``: KVM usability and the accelerator choice
- ``smoke``: the KVM smoke verdict and its cache for the machine's boot
- ``host``: the host and L1 checks, in table order
- ``passthrough``: choosing the NVMe in L1 and judging whether it may go to L2, and whether it went
"""
from __future__ import annotations

from typing import Iterable

from ..facts import cpu as cpu_facts
from ..facts import iommu as iommu_facts
from ..facts import kvm as kvm_facts
from ..facts import libvirt as libvirt_facts
from ..facts import system as system_facts
from ..guest import Guest
from ..params import Params
from . import host as _host  # noqa: F401  (registers the checks)
from .accel import KvmUsability, choose_accel, forced_accel, kvm_usability
from .base import REGISTRY, VERDICTS, Check, HostFacts, Judging, check
from .host import (CMDLINE, CPU_VIRT, CPUS, DEV_KVM, DISK, DOMAIN_TYPES, GIB, IOMMU_GROUPS, IOMMU_ON,
                   IOMMU_TABLE, IRQ_REMAP, KVM_HW, LIBVIRT, LIBVIRT_VERSION, MACHINE_Q35, MEMORY,
                   MEMORY_HEADROOM_MIB, MIN_LIBVIRT, MIN_LIBVIRT_TCG, NESTED, NUMA, QEMU_VERSION, TCG_RACE,
                   TCG_RACE_FIXED_IN, AMD_VIOMMU, qemu_device_check, viommu_device)
from .smoke import Smoke, kvm_smoke

L1_SMOKE_MIN_S = 60            # in L1 (itself under TCG in the lab) a nested boot is slower

__all__ = ["Check", "HostFacts", "Judging", "KvmUsability", "Smoke", "REGISTRY", "VERDICTS", "check",
           "choose_accel", "forced_accel", "kvm_usability", "kvm_smoke", "gather", "judge", "host_checks", "environment",
           "by_name", "format_table", "qemu_device_check", "viommu_device"]


def gather(guest: Guest, params: Params, role: str = "l0", smoke: bool = True,
           keep_smoke: bool = True) -> HostFacts:
    """Read every fact the checks need. The smoke boot runs only when /dev/kvm
    is there, acceleration is not forced to TCG and ``smoke`` is true; its
    timeout is host.kvm_smoke_timeout_s (at least 60 s in L1). ``keep_smoke``
    false (check mode): a new smoke verdict is not written to the machine's /run."""
    if role not in ("l0", "l1"):
        raise ValueError("role must be 'l0' (the host) or 'l1'")
    from .smoke import CACHE
    with guest.snapshot(*cpu_facts.READS, *kvm_facts.READS, CACHE, *iommu_facts.READS, *system_facts.READS):
        return _gather(guest, params, role, smoke, keep_smoke)


def _gather(guest: Guest, params: Params, role: str, smoke: bool, keep_smoke: bool = True) -> HostFacts:
    c = cpu_facts.cpu(guest)
    cmd = kvm_facts.cmdline(guest)
    k = kvm_facts.kvm(guest)
    forced = forced_accel(params, role)
    if not k.dev_kvm:
        sm = Smoke("not tested", "no /dev/kvm")
    elif forced == "tcg":
        sm = Smoke("not tested", "acceleration forced to tcg")
    elif not smoke:
        sm = Smoke("not tested", "smoke test turned off")
    else:
        timeout = params.host.kvm_smoke_timeout_s
        sm = kvm_smoke(guest, timeout if role == "l0" else max(timeout, L1_SMOKE_MIN_S), keep=keep_smoke)
    lv = libvirt_facts.libvirt(guest, params.host.libvirt_uri)
    binary = lv.emulator or kvm_facts.find_qemu(guest) or "qemu-system-x86_64"
    io = iommu_facts.iommu(guest, cmd)
    q = libvirt_facts.qemu(guest, binary)
    if role == "l0" and q.offers("amd-iommu"):
        from .viommu import decide_iommu_kind
        if decide_iommu_kind(params, io.tables, c.vendor)[0] == "amd":  # its hazards: check 'AMD vIOMMU'
            q.properties["amd-iommu"] = libvirt_facts.device_properties(guest, binary, "amd-iommu")
    return HostFacts(
        role=role, cpu=c, topology=cpu_facts.topology(guest, c.online), kvm=k, cmdline=cmd,
        smoke=sm, iommu=io, libvirt=lv,
        qemu=q, memory=system_facts.memory(guest),
        os=system_facts.os_release(guest),
        disk=system_facts.free_disk(guest, str(params.nvme.backing_file)) if role == "l0" else None,
        kernel=system_facts.kernel_release(guest))


def environment(f: HostFacts) -> dict:
    """What a benchmark's figures depend on, from one machine's facts: kernel, QEMU,
    libvirt, CPU, distribution, and whether the machine is itself a guest."""
    return {"kernel": f.kernel, "qemu": f.libvirt.qemu_version or f.qemu.version,
            "libvirt": f.libvirt.libvirt_version, "cpu_model": f.cpu.model, "cpu_vendor": f.cpu.vendor,
            "distro": f.os.pretty_name or f.os.id or None, "virtualized": "hypervisor" in f.cpu.flags}


def judge(f: HostFacts, params: Params, role: str | None = None) -> list[Check]:
    """The checks for facts read by ``gather``: each registered check that applies, in order."""
    j = Judging.of(f, params, role or f.role)
    out = []
    for name, fn in REGISTRY:
        c = fn(j)
        if c is None:
            continue
        if c.name != name:
            raise AssertionError(f"check {fn.__name__} is registered as {name!r} but returned {c.name!r}")
        out.append(c)
    return out


def host_checks(guest: Guest, params: Params, role: str = "l0", smoke: bool = True) -> list[Check]:
    """Read a machine's facts through ``guest`` and judge them.
    role 'l0': the host that runs L1; role 'l1': L1, which runs L2."""
    return judge(gather(guest, params, role, smoke), params, role)


def by_name(checks: Iterable[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def format_table(checks: Iterable[Check]) -> str:
    """The checks as a plain text table: verdict, name, observed, fix."""
    rows = [(c.verdict.upper(), c.name, c.observed, c.fix) for c in checks]
    w0 = max((len(r[0]) for r in rows), default=4)
    w1 = max((len(r[1]) for r in rows), default=4)
    out = []
    for v, n, o, fix in rows:
        out.append(f"{v:<{w0}}  {n:<{w1}}  {o}")
        if fix:
            out.append(f"{'':<{w0}}  {'':<{w1}}  fix: {fix}")
    return "\n".join(out)
