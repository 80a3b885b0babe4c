"""IOMMU facts: ACPI DMAR/IVRS tables, kernel log lines, /sys/class/iommu,
IOMMU groups and the IOMMU flags on the kernel command line."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

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


def log_lines(text: str) -> list[str]:
    """The DMAR/AMD-Vi/IOMMU lines of a kernel log, without timestamps or the command line."""
    lines = [_message(ln) for ln in text.splitlines() if RELEVANT.search(ln)]
    return [ln for ln in lines if not ln.startswith(("Command line:", "Kernel command line:"))]


def iommu(guest: Guest, cmd: Cmdline | None = None) -> IOMMU:
    log = kernel_log(guest)
    lines = log_lines(log.text)
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


# What the kernel says when each kind is on, for the messages below
ENABLED_LINE = {"intel": "DMAR: IOMMU enabled / Intel(R) Virtualization Technology for Directed I/O",
                "amd": "AMD-Vi: Found IOMMU / AMD IOMMUv2"}
IRQ_REMAP_LINE = {"intel": "DMAR-IR: Enabled IRQ remapping", "amd": "AMD-Vi: Interrupt remapping enabled"}
TABLE = {"intel": "DMAR", "amd": "IVRS"}


def missing_on(f: IOMMU, kind: str) -> list[str]:
    """What an L1 with the ``kind`` vIOMMU (intel or amd) still lacks once its kernel has
    the IOMMU on: its ACPI table, its enabled line, interrupt remapping, IOMMU groups."""
    other = "amd" if kind == "intel" else "intel"
    missing = []
    if TABLE[kind] not in f.tables:
        seen = f" (L1 has {', '.join(f.tables)}: the {other} vIOMMU)" if f.tables else ""
        missing.append(f"the ACPI {TABLE[kind]} table of the {kind} vIOMMU{seen}")
    if not [ln for ln in f.enabled_lines if ("AMD" in ln) == (kind == "amd")] and not f.class_iommu:
        missing.append(f"the IOMMU enabled line ({ENABLED_LINE[kind]})")
    if not [ln for ln in f.irq_remap_lines if ("AMD-Vi" in ln) == (kind == "amd")]:
        missing.append(f"interrupt remapping ({IRQ_REMAP_LINE[kind]})")
    if not f.groups:
        missing.append("IOMMU groups in /sys/kernel/iommu_groups")
    return missing


def l1_hint(kind: str) -> str:
    """What to check when L1's kernel does not show its IOMMU on, for each kind."""
    if kind == "amd":
        return ("check /proc/cmdline in L1 (no amd_iommu=off, no intremap=off) and that L1's domain has the "
                "AMD vIOMMU with interrupt remapping: <iommu model='amd'><driver intremap='on'/></iommu> "
                "(libvirt >= 11.5) or -device amd-iommu,intremap=on in <qemu:commandline>, "
                "with <ioapic driver='qemu'/>; rerun stage 02")
    return ("check /proc/cmdline in L1 and that L1's domain has the intel IOMMU with intremap on "
            "and <ioapic driver='qemu'/>; rerun stage 02")


# Lines that tell one IOMMU state from another, in the order the kernel prints them:
# (what the line proves, the pattern). Shown as a table under the kernel log in stages 02 and 03.
MARKERS = (
    ("the firmware offers an Intel IOMMU (ACPI DMAR table)", re.compile(r"ACPI: DMAR ")),
    ("intel_iommu=on was read from the kernel command line", re.compile(r"DMAR: IOMMU enabled")),
    ("intel_iommu=off: DMA remapping refused", re.compile(r"DMAR: IOMMU disabled")),
    ("interrupt remapping is on (no intel_iommu=on needed)", IRQ_REMAP),
    ("the IOMMU has no EIM: interrupts go to APIC IDs < 256 only (xAPIC mode)", re.compile(r"does not support EIM")),
    ("how the host's own devices are mapped (iommu=pt: Passthrough)", re.compile(r"iommu: Default domain type")),
    ("caching mode: the IOMMU is emulated, so each mapping is flushed at once",
     re.compile(r"IOMMU batching disallowed due to virtualization")),
    ("DMA remapping is on: devices are put in IOMMU groups", re.compile(r"Adding to iommu group")),
    ("DMA remapping is on: the VT-d driver finished starting",
     re.compile(r"Intel\(R\) Virtualization Technology for Directed I/O")),
    ("DMA remapping is on (AMD)", re.compile(r"AMD-Vi: Found IOMMU|AMD-Vi: AMD IOMMUv2")),
)


def markers(lines: list[str], kind: str | None = "intel") -> list[tuple[str, str]]:
    """(what it proves, the first matching line or "absent") for each of ``MARKERS``;
    several matches are counted. The AMD row is left out for an Intel IOMMU."""
    rows = []
    for meaning, rx in MARKERS:
        if kind == "intel" and "AMD" in meaning:
            continue
        found = [ln for ln in lines if rx.search(ln)]
        seen = found[0] if found else "absent"
        if len(found) > 1:
            seen += f"  (and {len(found) - 1} more like it)"
        rows.append((meaning, seen))
    return rows


MARKER_COLUMNS = ["what the line proves", "line in the kernel log"]


def excerpt(lines: list[str], limit: int = 25, devices: Sequence[str] = ()) -> list[str]:
    """At most about ``limit`` lines of the log in their order, always with the lines of
    ``MARKERS`` (the ones the text asks you to look for) and the "Adding to iommu group" line of
    each of ``devices`` (BDFs: the NVMe's own); each gap says how many lines it hides."""
    keep = {i for i, ln in enumerate(lines) if any(rx.search(ln) for _, rx in MARKERS)}
    # repeated lines (one "Adding to iommu group" per device): the first few are enough
    groups = [i for i in sorted(keep) if "Adding to iommu group" in lines[i]
              and not any(f"{d} " in lines[i] or f"{d}:" in lines[i] for d in devices)]
    keep -= set(groups[3:])
    for i in range(len(lines)):
        if len(keep) >= limit:
            break
        if i not in groups[3:]:
            keep.add(i)
    out, last = [], -1
    for i in sorted(keep):
        if i > last + 1:
            out.append(f"[... {i - last - 1} lines not shown ...]")
        out.append(lines[i])
        last = i
    if last < len(lines) - 1:
        out.append(f"[... {len(lines) - 1 - last} lines not shown ...]")
    return out
