"""libvirt and QEMU facts, through ``virsh -c URI`` and the QEMU binary run by the guest."""
from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from helpers.guest import Guest

DEFAULT_URI = "qemu:///system"


def virsh(uri: str, *args: str) -> str:
    """The virsh command line the facts run (fixtures record these)."""
    return shlex.join(["virsh", "-c", uri, *args])


@dataclass
class Libvirt:
    """What libvirt at ``uri`` offers; ``reachable`` False with virsh's own error otherwise."""

    uri: str
    reachable: bool
    error: str = ""
    libvirt_version: str | None = None
    qemu_version: str | None = None          # "Running hypervisor: QEMU x.y.z"
    domain_types: list[str] = field(default_factory=list)   # for x86_64 hvm: qemu, kvm
    machines: list[str] = field(default_factory=list)       # names and canonical names
    emulator: str | None = None
    host_iommu: str | None = None            # capabilities' <iommu support='yes|no'/>

    @property
    def q35(self) -> bool:
        return any(m == "q35" or m.startswith("pc-q35") for m in self.machines)


def _error(r) -> str:
    lines = [ln.strip() for ln in (r.err or r.out).splitlines() if ln.strip()]
    return " ".join(lines[-2:]) if lines else f"exit code {r.rc}"


def parse_capabilities(xml: str, arch: str = "x86_64") -> dict:
    """Domain types, machines and emulator for ``arch`` hvm guests."""
    root = ET.fromstring(xml)
    found = {"domain_types": [], "machines": [], "emulator": None, "host_iommu": None}
    io = root.find("host/iommu")
    if io is not None:
        found["host_iommu"] = io.get("support")
    for guest in root.findall("guest"):
        a = guest.find("arch")
        if guest.findtext("os_type") != "hvm" or a is None or a.get("name") != arch:
            continue
        found["emulator"] = a.findtext("emulator")
        for m in a.iter("machine"):
            for name in (m.text, m.get("canonical")):
                if name and name not in found["machines"]:
                    found["machines"].append(name.strip())
        for d in a.iter("domain"):
            if d.get("type") not in found["domain_types"]:
                found["domain_types"].append(d.get("type"))
    return found


def libvirt(guest: Guest, uri: str = DEFAULT_URI) -> Libvirt:
    """``virsh version`` and ``virsh capabilities``."""
    r = guest.run(virsh(uri, "version"), timeout=90)
    if not r.ok:
        why = _error(r)
        return Libvirt(uri, False, f"virsh not found: {why}" if r.rc == 127 else why)
    lib = re.search(r"Using library: libvirt (\S+)", r.out)
    hyp = re.search(r"Running hypervisor: QEMU (\S+)", r.out)
    info = Libvirt(uri, True, libvirt_version=lib.group(1) if lib else None,
                   qemu_version=hyp.group(1) if hyp else None)
    c = guest.run(virsh(uri, "capabilities"), timeout=90)
    if not c.ok:
        info.error = f"virsh capabilities: {_error(c)}"
        return info
    try:
        for key, value in parse_capabilities(c.out).items():
            setattr(info, key, value)
    except ET.ParseError as e:
        info.error = f"virsh capabilities: unreadable XML ({e})"
    return info


@dataclass
class Qemu:
    """The QEMU binary: its version and the devices it offers (``-device help``)."""

    binary: str
    available: bool
    error: str = ""
    version: str | None = None
    devices: set[str] = field(default_factory=set)
    properties: dict[str, dict[str, str] | None] = field(default_factory=dict)  # device -> its properties

    def offers(self, device: str) -> bool:
        return device in self.devices


def qemu(guest: Guest, binary: str = "qemu-system-x86_64") -> Qemu:
    """``BINARY --version`` and ``BINARY -device help``."""
    q = shlex.quote(binary)
    v = guest.run(f"{q} --version", timeout=60)
    if not v.ok:
        return Qemu(binary, False, _error(v))
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", v.out)
    d = guest.run(f"{q} -device help", timeout=60)
    return Qemu(binary, True, "" if d.ok else f"-device help: {_error(d)}",
                version=m.group(1) if m else None,
                devices=set(re.findall(r'^name "([^"]+)"', d.out, re.M)))


_PROP_RE = re.compile(r'^\s+([\w.-]+)=<[^>]*>.*?(?:\(default: "?([^")]*)"?\))?\s*$')


def device_properties_command(binary: str, device: str) -> str:
    return f"{shlex.quote(binary)} -device {shlex.quote(device + ',help')}"


def parse_device_properties(text: str) -> dict[str, str]:
    """``-device DEV,help`` -> {property: default ('' when none is shown)}. QEMU 7.2 prints
    ``pt=<bool>  -  (default: true)``, 10.0 ``pt=<bool>  - on/off (default: on)``."""
    found = {}
    for line in text.splitlines():
        m = _PROP_RE.match(line)
        if m:
            found[m.group(1)] = (m.group(2) or "").strip()
    return found


def device_properties(guest: Guest, binary: str, device: str) -> dict[str, str] | None:
    """The properties QEMU's ``device`` offers (``BINARY -device DEVICE,help``), read on
    ``guest`` (L0's command interface: local or SSH); None when they cannot be read."""
    r = guest.run(device_properties_command(binary, device), timeout=60)
    if not r.ok:
        return None
    props = parse_device_properties(r.out)
    return props or None
