"""PCI devices with the fields libvirt gives them (``virsh nodedev-dumpxml``), read
from sysfs and lspci in one round trip, and the NVMe facts around them: serial,
namespaces, mounts, IOMMU group members."""
from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..guest import Guest
from . import holders

NVME_CLASS = 0x010802
BRIDGE_CLASSES = (0x0604, 0x0600)  # PCI bridges and host bridges do not count against group viability


@dataclass
class PciDevice:
    """One PCI function, with the fields the seed reads off ``nodedev-dumpxml``."""

    name: str             # libvirt's node device name, pci_0000_00_02_0
    bdf: str              # 0000:00:02.0
    pci_class: int        # 0x010802
    vendor_id: str = ""
    vendor: str = ""
    product_id: str = ""
    product: str = ""
    driver: str | None = None
    iommu_group: int | None = None
    group_members: list[str] = field(default_factory=list)
    numa_node: int | None = None

    @property
    def is_nvme(self) -> bool:
        return self.pci_class == NVME_CLASS

    @property
    def is_bridge(self) -> bool:
        return (self.pci_class >> 8) in BRIDGE_CLASSES

    @property
    def ids(self) -> str:
        return f"{self.vendor_id.removeprefix('0x')}:{self.product_id.removeprefix('0x')}"


def bdf_fields(bdf: str) -> dict[str, str]:
    """0000:00:02.0 -> domain, bus, device (slot), function: the seed's table."""
    dom, bus, rest = bdf.split(":")
    dev, fn = rest.split(".")
    return {"domain": dom, "bus": bus, "device": dev, "function": fn}


def _addr(a: ET.Element) -> str:
    return (f"{int(a.get('domain'), 16):04x}:{int(a.get('bus'), 16):02x}:"
            f"{int(a.get('slot'), 16):02x}.{int(a.get('function'), 16):x}")


def parse_nodedev(xml: str) -> PciDevice | None:
    """A PciDevice from one ``virsh nodedev-dumpxml`` document (None if not PCI)."""
    root = ET.fromstring(xml)
    cap = root.find("capability[@type='pci']")
    if cap is None:
        return None
    num = lambda tag: int(cap.findtext(tag, "0"), 0)  # noqa: E731
    bdf = f"{num('domain'):04x}:{num('bus'):02x}:{num('slot'):02x}.{num('function'):x}"
    vendor, product = cap.find("vendor"), cap.find("product")
    group = cap.find("iommuGroup")
    numa = cap.find("numa")
    return PciDevice(
        name=root.findtext("name", ""), bdf=bdf, pci_class=int(cap.findtext("class", "0"), 0),
        vendor_id=vendor.get("id", "") if vendor is not None else "",
        vendor=(vendor.text or "") if vendor is not None else "",
        product_id=product.get("id", "") if product is not None else "",
        product=(product.text or "") if product is not None else "",
        driver=root.findtext("driver/name"),
        iommu_group=int(group.get("number")) if group is not None else None,
        group_members=[_addr(a) for a in group.findall("address")] if group is not None else [],
        numa_node=int(numa.get("node")) if numa is not None else None)


LSPCI_SEP = "----lspci----"

# One POSIX sh script, one round trip: a line per /sys/bus/pci/devices/* entry, then
# the separator, then `lspci -Dmmnn` for the names. Builtins only for the sysfs part
# (read, cd -P, globs, printf): no process per device, which matters in an emulated L1.
SYSFS_SCRIPT = r"""for p in /sys/bus/pci/devices/*; do
  [ -r "$p/class" ] || continue
  c=; v=; i=; n=; drv=; grp=; mem=
  read -r c 2>/dev/null <"$p/class"
  read -r v 2>/dev/null <"$p/vendor"
  read -r i 2>/dev/null <"$p/device"
  read -r n 2>/dev/null <"$p/numa_node"
  if cd -P "$p/driver" 2>/dev/null; then drv=${PWD##*/}; fi
  if cd -P "$p/iommu_group" 2>/dev/null; then grp=${PWD##*/}; fi
  for m in "$p"/iommu_group/devices/*; do [ -e "$m" ] && mem=$mem${mem:+,}${m##*/}; done
  printf '%s class=%s vendor=%s device=%s driver=%s iommu_group=%s numa_node=%s members=%s\n' \
    "${p##*/}" "$c" "$v" "$i" "$drv" "$grp" "$n" "$mem"
done
echo '""" + LSPCI_SEP + r"""'
lspci -Dmmnn 2>/dev/null || true
"""

_ID_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{4}\]$")


def node_device_name(bdf: str) -> str:
    """libvirt's node device name for a BDF: 0000:00:02.0 -> pci_0000_00_02_0."""
    return "pci_" + bdf.replace(":", "_").replace(".", "_")


def _lspci_name(field: str, placeholder: str) -> str:
    """'Red Hat, Inc. [1b36]' -> 'Red Hat, Inc.'. lspci prints 'Device [0d57]' (or
    'Vendor [...]') when pci.ids has no name; libvirt leaves the name empty then."""
    name = _ID_SUFFIX.sub("", field).strip()
    return "" if name == placeholder else name


def _lspci_names(text: str) -> dict[str, tuple[str, str]]:
    """BDF -> (vendor, product) from ``lspci -Dmmnn``."""
    names = {}
    for line in text.splitlines():
        try:
            fields = shlex.split(line)
        except ValueError:  # an unbalanced quote: take the quoted fields as they are
            slot = line.split(None, 1)[0] if line.strip() else ""
            fields = [slot, *re.findall(r'"([^"]*)"', line)]
        if len(fields) >= 4:
            names[fields[0]] = (_lspci_name(fields[2], "Vendor"), _lspci_name(fields[3], "Device"))
    return names


def parse_sysfs_listing(text: str) -> list[PciDevice]:
    """PciDevices, ordered by BDF, from the output of ``SYSFS_SCRIPT``: the same values
    ``parse_nodedev`` reads off libvirt's XML. Without the lspci part, names are empty."""
    sysfs, _, lspci = text.partition(LSPCI_SEP)
    names = _lspci_names(lspci)
    devs = []
    for line in sysfs.splitlines():
        bdf, _, rest = line.strip().partition(" ")
        if not bdf:
            continue
        f = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
        numa = int(f["numa_node"]) if f.get("numa_node") else -1
        vendor, product = names.get(bdf, ("", ""))
        devs.append(PciDevice(
            name=node_device_name(bdf), bdf=bdf, pci_class=int(f.get("class") or "0", 16),
            vendor_id=f.get("vendor", ""), vendor=vendor, product_id=f.get("device", ""), product=product,
            driver=f.get("driver") or None,
            iommu_group=int(f["iommu_group"]) if f.get("iommu_group") else None,
            group_members=sorted(m for m in f.get("members", "").split(",") if m),
            numa_node=numa if numa >= 0 else None))  # libvirt omits <numa> for -1
    return sorted(devs, key=lambda d: d.bdf)


def pci_devices(guest: Guest) -> list[PciDevice]:
    """Every PCI device on ``guest``, as libvirt would describe it, from sysfs and lspci
    in one round trip (``virsh nodedev-dumpxml`` per device costs seconds in an emulated L1)."""
    return parse_sysfs_listing(guest.run(SYSFS_SCRIPT, timeout=60, check=True).out)


def nvme_serial(guest: Guest, bdf: str) -> str | None:
    """The controller's serial from sysfs (present only while bound to nvme)."""
    r = guest.run(f"cat /sys/bus/pci/devices/{bdf}/nvme/nvme*/serial 2>/dev/null | head -1")
    return r.out.strip() or None


def nvme_model(guest: Guest, bdf: str) -> str | None:
    r = guest.run(f"cat /sys/bus/pci/devices/{bdf}/nvme/nvme*/model 2>/dev/null | head -1")
    return r.out.strip() or None


# The namespaces' block devices of the controller(s) at one BDF. Without native NVMe
# multipath they sit in the controller's folder (nvme0/nvme0n1). With it (the kernel's
# nvme_core.multipath=Y, which QEMU >= 8's NVMe subsystem model brings out), the
# controller's folder holds only the hidden path device nvme0c0n1 and the block device
# nvme0n1 belongs to the subsystem (/sys/class/nvme-subsystem/nvme-subsys0/), which
# links the controller: look in both places.
BLOCK_SCRIPT = r"""for c in {sys}/bus/pci/devices/{bdf}/nvme/nvme*; do
  [ -d "$c" ] || continue
  ls -1 "$c"
  for s in {sys}/class/nvme-subsystem/*; do [ -e "$s/${{c##*/}}" ] && ls -1 "$s"; done
done 2>/dev/null"""
NAMESPACE_BLOCK = re.compile(r"^nvme\d+n\d+$")


def parse_block_listing(text: str) -> list[str]:
    """nvme0n1, ... from the folder listings of BLOCK_SCRIPT (path devices nvme0c0n1 are
    not block devices one can open)."""
    return sorted({name for name in text.split() if NAMESPACE_BLOCK.match(name)})


def block_devices(guest: Guest, bdf: str, sysfs: str = "/sys") -> list[str]:
    """Block devices (namespaces) of the NVMe controller at ``bdf``: nvme0n1, ..."""
    return parse_block_listing(guest.run(BLOCK_SCRIPT.format(sys=sysfs, bdf=bdf)).out)


def driver_of(guest: Guest, bdf: str) -> str | None:
    link = guest.readlink(f"/sys/bus/pci/devices/{bdf}/driver")
    return link.rsplit("/", 1)[-1] if link else None


def group_drivers(guest: Guest, group: int) -> dict[str, tuple[str | None, int]]:
    """Each device of an IOMMU group -> (driver, PCI class), read from sysfs."""
    out = {}
    for bdf in guest.listdir(f"/sys/kernel/iommu_groups/{group}/devices"):
        cls = guest.read_text(f"/sys/bus/pci/devices/{bdf}/class") or "0"
        out[bdf] = (driver_of(guest, bdf), int(cls.strip(), 16))
    return out


def nvme_list(guest: Guest) -> list[dict]:
    """``nvme list -o json``'s devices (empty when there are none)."""
    r = guest.run("nvme list -o json", timeout=60)
    if not r.ok or not r.out.strip():
        return []
    return json.loads(r.out).get("Devices", [])


@dataclass
class Readiness:
    """What stage 04 keeps of the proof that a device may be passed through (read before
    touching it): its block devices, what is mounted on them, the machine's root disk, its
    IOMMU group's members (each with its driver and PCI class), and the whole description
    and checks (``checks.passthrough.prove_free``)."""

    disks: list[str]
    mounts: list[str]
    root_disk: str | None
    group_members: dict[str, tuple[str | None, int]]
    description: "DeviceDescription | None" = None
    checks: list = field(default_factory=list)


@dataclass
class Handover:
    """After L2 started: the device's driver in L1, VFIO's node for its group, and `nvme list` in L1."""

    driver: str | None
    vfio_node: str
    vfio_node_exists: bool
    listed: list[dict]


def handover(guest: Guest, dev: PciDevice) -> Handover:
    node = f"/dev/vfio/{dev.iommu_group}"
    return Handover(driver_of(guest, dev.bdf), node, guest.exists(node), nvme_list(guest))


# --- one NVMe controller described, with everything that uses it ---------------------------------

DESCRIBE_SEP = "----describe----"

# After SYSFS_SCRIPT (every PCI device, lspci's names), in the same round trip: for each
# controller in $bdfs (empty: every NVMe controller) its reset methods, its nvme controllers'
# serial, model and firmware, its namespaces (under the controller and, with native NVMe
# multipath, under its nvme-subsystem) and their character devices; the NUMA nodes' CPUs;
# the interrupt remapping seen in /proc/interrupts; then ``holders.USES_SCRIPT``.
CONTROLLER_SCRIPT = r"""
cd /
if [ -z "$bdfs" ]; then
  for p in {sys}/bus/pci/devices/*; do c=; read -r c 2>/dev/null <"$p/class"; [ "$c" = 0x010802 ] && bdfs="$bdfs ${{p##*/}}"; done
fi
blocks=; chars=
for b in $bdfs; do
  p={sys}/bus/pci/devices/$b
  [ -e "$p" ] || {{ printf 'absent\t%s\n' "$b"; continue; }}
  printf 'device\t%s\n' "$b"
  m=; h=no; [ -e "$p/reset" ] && h=yes
  if [ -e "$p/reset_method" ]; then read -r m 2>/dev/null <"$p/reset_method"; h="$h method"; fi
  printf 'reset\t%s\t%s\t%s\n' "$b" "$h" "$m"
  for c in "$p"/nvme/nvme*; do
    [ -d "$c" ] || continue
    k=${{c##*/}}; chars="$chars $k"; printf 'ctrl\t%s\t%s\n' "$b" "$k"
    for a in serial model firmware_rev state; do
      v=; read -r v 2>/dev/null <"$c/$a"; printf 'attr\t%s\t%s\t%s\n' "$k" "$a" "$v"
    done
    for d in "$c" {sys}/class/nvme-subsystem/*; do
      [ "$d" = "$c" ] || [ -e "$d/$k" ] || continue
      for e in "$d"/nvme* "$d"/ng*; do
        e=${{e##*/}}
        case "$e" in
          nvme*c*n*) ;;
          nvme*n*) case " $blocks " in *" $e "*) ;; *) blocks="$blocks $e";; esac; printf 'ns\t%s\t%s\n' "$k" "$e";;
          ng*n*) case " $chars " in *" $e "*) ;; *) chars="$chars $e";; esac; printf 'ng\t%s\t%s\n' "$k" "$e";;
        esac
      done
    done
  done
done
for n in {sys}/devices/system/node/node[0-9]*; do
  [ -r "$n/cpulist" ] || continue; l=; read -r l 2>/dev/null <"$n/cpulist"; printf 'node\t%s\t%s\n' "${{n##*/node}}" "$l"
done
ir=0; while IFS= read -r l; do case "$l" in *IR-*) ir=$((ir+1));; esac; done <{proc}/interrupts 2>/dev/null
a=; read -r a 2>/dev/null <{sys}/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
i=0; for x in {sys}/class/iommu/*; do [ -e "$x" ] && i=$((i+1)); done
printf 'irq\t%s\t%s\t%s\n' "$ir" "$a" "$i"
"""


@dataclass
class Namespace:
    """A namespace's block device: its size, block size and what it holds."""

    name: str                      # nvme0n1
    controller: str                # nvme0
    nsid: int | None = None
    size_bytes: int | None = None
    logical_block: int | None = None
    partitions: list[str] = field(default_factory=list)   # nvme0n1p1, ...


@dataclass
class DeviceDescription:
    """An NVMe controller at one BDF on one machine, as that machine shows it now: the PCI
    function (vendor:device, driver, NUMA node, IOMMU group and its members), the nvme
    controller (model, serial, firmware), its namespaces with sizes, its reset methods, the
    machine's interrupt remapping, other devices of the same vendor:device, and what uses
    its namespaces (``uses``). Read, never judged: ``checks.passthrough.judge_free`` judges."""

    pci: PciDevice
    machine: str = ""                                  # the Guest's name: l0, l1
    controllers: list[str] = field(default_factory=list)   # nvme0 (while on the nvme driver)
    serial: str | None = None
    model: str | None = None
    firmware: str | None = None
    namespaces: list[Namespace] = field(default_factory=list)
    generic: list[str] = field(default_factory=list)   # the namespaces' character devices: ng0n1
    group: list[PciDevice] = field(default_factory=list)   # the IOMMU group's members (this one too)
    reset_methods: list[str] | None = None             # ['flr', 'bus']; [] none at all; None unknown (no reset_method file)
    nodes: dict[int, list[int]] = field(default_factory=dict)   # NUMA node -> CPUs, every node of the machine
    same_ids: list[PciDevice] = field(default_factory=list)     # other devices with this vendor:device
    irq_remapped: int = 0                              # interrupt chips with IR- in /proc/interrupts
    allow_unsafe_interrupts: bool | None = None        # vfio_iommu_type1's parameter (None: module not loaded)
    iommus: int = 0                                    # /sys/class/iommu entries
    uses: holders.Uses = field(default_factory=holders.Uses)

    @property
    def bdf(self) -> str:
        return self.pci.bdf

    @property
    def is_nvme(self) -> bool:
        return self.pci.is_nvme

    @property
    def disks(self) -> list[str]:
        return [n.name for n in self.namespaces]

    @property
    def node_cpus(self) -> list[int]:
        """The CPUs of the device's NUMA node (empty when it reports none)."""
        return self.nodes.get(self.pci.numa_node, []) if self.pci.numa_node is not None else []

    def rows(self) -> list[tuple[str, str]]:
        """The description as (what, value) rows of words and units, for a table."""
        d = self.pci
        named = f" ({d.vendor} {d.product})".replace("( ", "(") if (d.vendor or d.product) else ""
        rows = [("BDF", d.bdf), ("vendor:device", f"{d.ids}{named}"),
                ("driver", d.driver or "none"),
                ("model", self.model or "-"), ("serial", self.serial or "-"), ("firmware", self.firmware or "-"),
                ("controller", ", ".join(self.controllers) or "none (not on the nvme driver)")]
        if not self.namespaces:
            rows.append(("namespaces", "none visible" + ("" if d.driver == "nvme" else
                                                           f" (driver {d.driver or 'none'}, not nvme)")))
        for ns in self.namespaces:
            parts = [human_bytes(ns.size_bytes)]
            if ns.logical_block:
                parts.append(f"{ns.logical_block}-byte blocks")
            if ns.nsid is not None:
                parts.append(f"namespace id {ns.nsid}")
            for p in ns.partitions:
                dev = self.uses.devices.get(p)
                parts.append(f"partition {p} {human_bytes(dev.size_bytes if dev else None)}")
            sig = self.uses.signature(ns.name)
            if sig:
                parts.append(f"signature {sig}")
            rows.append((f"namespace /dev/{ns.name}", ", ".join(parts)))
        if self.generic:
            rows.append(("character devices", ", ".join(f"/dev/{c}" for c in self.controllers + self.generic)))
        rows.append(("NUMA node", "none reported (one node)" if d.numa_node is None else
                     f"{d.numa_node} (CPUs {format_cpus(self.node_cpus) or 'unknown'})"))
        if d.iommu_group is None:
            rows.append(("IOMMU group", "none (the IOMMU is off)"))
        else:
            members = ", ".join(f"{m.bdf} ({m.driver or 'no driver'}{', bridge' if m.is_bridge else ''})"
                                for m in self.group) or d.bdf
            rows.append(("IOMMU group", f"{d.iommu_group}: {members}"))
        rows.append(("reset method", "unknown (the kernel has no reset_method file)" if self.reset_methods is None
                     else ", ".join(self.reset_methods) if self.reset_methods else "none (no function-level reset)"))
        rows.append(("interrupt remapping", f"yes ({self.irq_remapped} IR- interrupt chips in /proc/interrupts)"
                     if self.irq_remapped else "no (no IR- interrupt chip in /proc/interrupts)"))
        rows.append(("same vendor:device", ", ".join(f"{o.bdf} ({o.driver or 'no driver'})" for o in self.same_ids)
                     or "no other device"))
        return rows


def format_cpus(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    from ..numa import format_cpuset
    return format_cpuset(cpus) if cpus else ""


def human_bytes(n: int | None) -> str:
    """1073741824 -> '1.00 GiB (1,073,741,824 bytes)'."""
    if n is None:
        return "size unknown"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):  # 1023.999 MiB: 1.00 GiB
        if n >= size * 0.9995:
            return f"{n / size:.2f} {unit} ({n:,} bytes)"
    return f"{n} bytes"


def describe_script(bdfs: list[str] | None, root: str = "") -> str:
    """The one command that describes the controllers at ``bdfs`` (None: every NVMe
    controller) with every PCI device and everything that uses their namespaces. ``root``
    prefixes /sys, /proc and /dev: a fixture tree in tests, empty on a machine."""
    paths = {"sys": f"{root}/sys", "proc": f"{root}/proc", "dev": f"{root}/dev"}
    return (SYSFS_SCRIPT.replace("/sys/bus/pci/devices/*", f"{root}/sys/bus/pci/devices/*")
            + f"echo '{DESCRIBE_SEP}'\n"
            + "bdfs=" + shlex.quote(" ".join(bdfs or [])) + "\n"
            + CONTROLLER_SCRIPT.format(**paths) + holders.USES_SCRIPT.format(**paths))


@dataclass
class _ControllerRecords:
    """The records of ``CONTROLLER_SCRIPT``, read: which devices, in order, and what each has."""

    order: list[str] = field(default_factory=list)
    ctrl_of: dict[str, str] = field(default_factory=dict)                  # nvme0 -> bdf
    attrs: dict[str, dict[str, str]] = field(default_factory=dict)
    ns_of: dict[str, list[str]] = field(default_factory=dict)              # nvme0 -> [nvme0n1]
    ng_of: dict[str, list[str]] = field(default_factory=dict)
    resets: dict[str, list[str] | None] = field(default_factory=dict)
    nodes: dict[int, list[int]] = field(default_factory=dict)
    irq: tuple[int, bool | None, int] = (0, None, 0)   # remapped chips, allow_unsafe_interrupts, IOMMUs


def _read_reset(r: list[str]) -> list[str] | None:
    """A 'reset' record: the kernel's reset methods, [] for none, None for no reset_method file."""
    has_reset, has_file = r[2].startswith("yes"), "method" in r[2]
    methods = (r[3] if len(r) > 3 else "").split()
    return methods if has_file else ([] if not has_reset else None)


def _read_irq(r: list[str]) -> tuple[int, bool | None, int]:
    return (int(r[1]) if r[1].isdigit() else 0,
            {"Y": True, "N": False, "1": True, "0": False}.get(r[2].strip()) if r[2].strip() else None,
            int(r[3]) if r[3].isdigit() else 0)


def _read_controller_records(records: list[list[str]]) -> _ControllerRecords:
    from ..facts.cpu import parse_cpulist
    c = _ControllerRecords()
    for r in records:
        tag = r[0]
        if tag == "device" and len(r) > 1:
            c.order.append(r[1])
        elif tag == "reset" and len(r) > 2:
            c.resets[r[1]] = _read_reset(r)
        elif tag == "ctrl" and len(r) > 2:
            c.ctrl_of[r[2]] = r[1]
        elif tag == "attr" and len(r) > 3:
            c.attrs.setdefault(r[1], {})[r[2]] = r[3].strip()
        elif tag == "ns" and len(r) > 2:
            c.ns_of.setdefault(r[1], []).append(r[2])
        elif tag == "ng" and len(r) > 2:
            c.ng_of.setdefault(r[1], []).append(r[2])
        elif tag == "node" and len(r) > 2 and r[1].isdigit():
            c.nodes[int(r[1])] = parse_cpulist(r[2])
        elif tag == "irq" and len(r) > 3:
            c.irq = _read_irq(r)
    return c


def _namespaces(names: list[str], ctrls: list[str], c: _ControllerRecords, uses: holders.Uses) -> list[Namespace]:
    out = []
    for n in names:
        b = uses.devices.get(n)
        parts = sorted(p for p, dev in uses.devices.items() if dev.kind == "partition" and n in dev.on)
        out.append(Namespace(n, next((x for x in ctrls if n in c.ns_of.get(x, [])), ""),
                             b.nsid if b else None, b.size_bytes if b else None,
                             b.logical_block if b else None, parts))
    return out


def _description(d: PciDevice, devices: dict[str, PciDevice], c: _ControllerRecords, uses: holders.Uses,
                 machine: str) -> DeviceDescription:
    """The description of ``d`` from the records read and the uses of every device."""
    bdf = d.bdf
    ctrls = sorted(x for x, b in c.ctrl_of.items() if b == bdf)
    first = c.attrs.get(ctrls[0], {}) if ctrls else {}
    names = sorted({n for x in ctrls for n in c.ns_of.get(x, [])})
    generic = sorted({n for x in ctrls for n in c.ng_of.get(x, [])})
    return DeviceDescription(
        pci=d, machine=machine, controllers=ctrls, serial=first.get("serial") or None,
        model=first.get("model") or None, firmware=first.get("firmware_rev") or None,
        namespaces=_namespaces(names, ctrls, c, uses), generic=generic,
        group=[devices[m] for m in d.group_members if m in devices],
        reset_methods=c.resets.get(bdf), nodes=c.nodes,
        same_ids=[o for o in devices.values() if o.bdf != bdf and o.ids == d.ids],
        irq_remapped=c.irq[0], allow_unsafe_interrupts=c.irq[1], iommus=c.irq[2],
        uses=uses.of(names, ctrls + generic))


def parse_description(text: str, machine: str = "") -> dict[str, DeviceDescription]:
    """BDF -> DeviceDescription from the output of ``describe_script`` (BDFs that are not
    there are left out)."""
    listing, _, rest = text.partition(DESCRIBE_SEP)
    devices = {d.bdf: d for d in parse_sysfs_listing(listing)}
    records = [line.split("\t") for line in rest.splitlines() if line.strip()]
    c = _read_controller_records(records)
    uses = holders.parse_uses(records)
    return {bdf: _description(devices[bdf], devices, c, uses, machine) for bdf in c.order if bdf in devices}


def describe_all(guest: Guest, bdfs: list[str] | None = None, *, root: str = ""
                 ) -> tuple[list[PciDevice], dict[str, DeviceDescription]]:
    """Every PCI device of ``guest``, and the description of each controller at ``bdfs``
    (None: of every NVMe controller), in one round trip. ``root``: see ``describe_script``."""
    text = guest.run(describe_script(bdfs, root), timeout=120, check=True).out
    return parse_sysfs_listing(text.partition(DESCRIBE_SEP)[0]), parse_description(text, guest.name)


def describe(guest: Guest, bdf: str, *, root: str = "") -> DeviceDescription | None:
    """The controller at ``bdf`` on ``guest``, described (None when there is no PCI device there)."""
    return describe_all(guest, [bdf], root=root)[1].get(bdf)


def numa_node_cpus(guest: Guest, node: int) -> list[int]:
    """The CPUs of NUMA node ``node`` on ``guest`` (empty when the node is not there)."""
    from .cpu import parse_cpulist
    return parse_cpulist(guest.read_text(f"/sys/devices/system/node/node{node}/cpulist"))
