"""IOMMU facts: ACPI DMAR/IVRS tables, kernel log lines, /sys/class/iommu,
IOMMU groups and the IOMMU flags on the kernel command line."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from helpers.facts.kvm import Cmdline, cmdline
from helpers.guest import Guest

DMESG = "dmesg"
JOURNAL = "journalctl -k -b --no-pager"
TABLES = {"DMAR": "intel", "IVRS": "amd"}
READS = (*(f"/sys/firmware/acpi/tables/{t}" for t in TABLES), "/sys/class/iommu", "/sys/kernel/iommu_groups")
# Lines that show DMA remapping at work ("iommu: Default domain type" is not
# one: every kernel prints it, with or without an IOMMU).
ENABLED = re.compile(r"DMAR: IOMMU enabled|Intel\(R\) Virtualization Technology for Directed I/O"
                     r"|AMD-Vi: Found IOMMU|AMD-Vi: AMD IOMMUv2|perf/amd_iommu: Detected AMD IOMMU")
IRQ_REMAP = re.compile(r"DMAR-IR: Enabled IRQ remapping|AMD-Vi: Interrupt remapping enabled")
RELEVANT = re.compile(r"DMAR|AMD-Vi|IOMMU|iommu")
CMDLINE_FLAGS = ("intel_iommu", "amd_iommu", "iommu")


@dataclass
class KernelLog:
    """The kernel log and where it came from ('dmesg' or 'journalctl')."""

    source: str
    text: str
    error: str = ""


def kernel_log(guest: Guest) -> KernelLog:
    """``dmesg``, falling back to ``journalctl -k -b --no-pager``."""
    errors = []
    for source, cmd in (("dmesg", DMESG), ("journalctl", JOURNAL)):
        r = guest.run(cmd, timeout=60)
        if r.ok and r.out.strip() and "-- No entries --" not in r.out:
            return KernelLog(source, r.out)
        said = (r.err or r.out).strip().splitlines()
        errors.append(f"{cmd}: {said[-1] if said else f'exit code {r.rc}'}")
    return KernelLog("", "", "; ".join(errors))


@dataclass
class IOMMU:
    """What says whether an IOMMU is there and on."""

    tables: list[str]                    # ACPI tables present: DMAR, IVRS
    enabled_lines: list[str]             # log lines showing DMA remapping on
    irq_remap_lines: list[str]           # log lines showing interrupt remapping on
    lines: list[str]                     # every DMAR/AMD-Vi/IOMMU log line
    class_iommu: list[str]               # /sys/class/iommu entries: dmar0, ivhd0
    groups: int                          # /sys/kernel/iommu_groups entries
    cmdline_flags: dict[str, str] = field(default_factory=dict)  # intel_iommu, amd_iommu, iommu
    log_source: str = ""
    log_error: str = ""

    @property
    def kind(self) -> str | None:
        """'intel' or 'amd' by what is present (tables, then sysfs, then log), never by CPU vendor."""
        for t in self.tables:
            return TABLES[t]
        for name in self.class_iommu:
            if name.startswith("dmar"):
                return "intel"
            if name.startswith("ivhd"):
                return "amd"
        text = " ".join(self.lines)
        return "intel" if "DMAR" in text else "amd" if "AMD-Vi" in text else None

    @property
    def enabled(self) -> bool:
        return bool(self.enabled_lines or self.class_iommu)

    @property
    def irq_remapping(self) -> bool:
        return bool(self.irq_remap_lines)


def _message(line: str) -> str:
    """A log line without its '[ 0.123456] ' or journal prefix."""
    line = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
    return re.sub(r"^\w{3} \d+ [\d:]+ \S+ kernel: ", "", line)


def iommu(guest: Guest, cmd: Cmdline | None = None) -> IOMMU:
    log = kernel_log(guest)
    lines = [_message(ln) for ln in log.text.splitlines() if RELEVANT.search(ln)]
    lines = [ln for ln in lines if not ln.startswith(("Command line:", "Kernel command line:"))]
    cmd = cmd or cmdline(guest)
    return IOMMU(
        tables=[t for t in TABLES if guest.exists(f"/sys/firmware/acpi/tables/{t}")],
        enabled_lines=[ln for ln in lines if ENABLED.search(ln)],
        irq_remap_lines=[ln for ln in lines if IRQ_REMAP.search(ln)],
        lines=lines,
        class_iommu=[n for n in guest.listdir("/sys/class/iommu") if not n.startswith(".")],
        groups=len([g for g in guest.listdir("/sys/kernel/iommu_groups") if g.isdigit()]),
        cmdline_flags={f: v for f in CMDLINE_FLAGS if (v := cmd.get(f)) is not None},
        log_source=log.source, log_error=log.error)
