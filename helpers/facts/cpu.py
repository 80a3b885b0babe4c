"""CPU facts: vendor, model, virtualization flag, online CPUs, NUMA topology."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from helpers.guest import Guest

CPUINFO = "/proc/cpuinfo"
ONLINE = "/sys/devices/system/cpu/online"
NODES = "/sys/devices/system/node"
# What these facts read, for Guest.snapshot (one round trip instead of one per file)
READS = (CPUINFO, ONLINE, NODES, f"{NODES}/node*/cpulist", f"{NODES}/node*/meminfo",
         "/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list")


def parse_cpulist(text: str | None) -> list[int]:
    """Kernel cpulist '0-11,24-35' -> [0, ..., 11, 24, ..., 35]; '' or None -> []."""
    cpus: list[int] = []
    for part in (text or "").strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(cpus))


@dataclass
class CPU:
    """What /proc/cpuinfo and the online list say."""

    vendor: str | None            # GenuineIntel, AuthenticAMD
    model: str | None             # model name
    flags: set[str] = field(default_factory=set)
    online: list[int] = field(default_factory=list)

    @property
    def virt_flag(self) -> str | None:
        """'vmx' (Intel VT-x), 'svm' (AMD-V) or None."""
        return "vmx" if "vmx" in self.flags else "svm" if "svm" in self.flags else None


def cpu(guest: Guest) -> CPU:
    """Vendor, model name and flags of the first CPU; the online CPU list."""
    info = guest.read_text(CPUINFO) or ""
    first: dict[str, str] = {}
    count = 0
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "processor":
            count += 1
        if count <= 1 and key not in first:
            first[key] = value.strip()
    online = parse_cpulist(guest.read_text(ONLINE)) or list(range(count))
    return CPU(vendor=first.get("vendor_id"), model=first.get("model name"),
               flags=set(first.get("flags", "").split()), online=online)


@dataclass
class Topology:
    """NUMA nodes -> CPUs, CPU -> its thread siblings (itself included), node memory."""

    nodes: dict[int, list[int]]
    siblings: dict[int, list[int]]
    memory_mib: dict[int, int] = field(default_factory=dict)

    def node_of(self, cpu: int) -> int | None:
        return next((n for n, cpus in self.nodes.items() if cpu in cpus), None)

    @property
    def threads_per_core(self) -> int:
        return max((len(s) for s in self.siblings.values()), default=1)


def topology(guest: Guest, online: list[int] | None = None) -> Topology:
    """Nodes from /sys/devices/system/node/node*/cpulist (one node holding every
    online CPU when the kernel shows none) and siblings from
    /sys/devices/system/cpu/cpuN/topology/thread_siblings_list."""
    if online is None:
        online = cpu(guest).online
    nodes: dict[int, list[int]] = {}
    memory: dict[int, int] = {}
    for name in guest.listdir(NODES):
        m = re.fullmatch(r"node(\d+)", name)
        if not m:
            continue
        n = int(m.group(1))
        nodes[n] = parse_cpulist(guest.read_text(f"{NODES}/{name}/cpulist"))
        mem = re.search(r"MemTotal:\s+(\d+)\s*kB", guest.read_text(f"{NODES}/{name}/meminfo") or "")
        if mem:
            memory[n] = int(mem.group(1)) // 1024
    nodes = {n: c for n, c in sorted(nodes.items()) if c}  # memory-only nodes hold no CPU
    if not nodes:
        nodes = {0: list(online)}
    siblings = {}
    for c in online:
        sib = parse_cpulist(guest.read_text(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"))
        siblings[c] = sib or [c]
    return Topology(nodes=nodes, siblings=siblings, memory_mib=memory)
