"""Is a defined domain still the one we want? Compare desired XML with libvirt's.

libvirt normalizes what it stores: it adds defaults (MAC and PCI addresses,
controllers, ``check='none'``, ``dies='1'``, ``<boot dev='hd'/>``...), reorders
devices and expands the machine alias (``q35`` -> ``pc-q35-7.2``). So the
question asked is one-sided: is every element and attribute the *desired* XML
sets present with the same value in the *actual* one? Devices are paired by
kind and a key, never by position. Two things are also reported the other
way: a disk, hostdev, interface, channel or filesystem that only the actual
has (libvirt never adds those by itself), and ``<qemu:commandline>``, whose
argument lists are compared as a whole.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Optional

from .base import QEMU_NS

_Q = f"{{{QEMU_NS}}}"
_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
              "m": 1024, "mib": 1024, "mb": 1e6 / 1024, "g": 1024**2, "gib": 1024**2,
              "gb": 1e9 / 1024, "t": 1024**3, "tib": 1024**3, "tb": 1e12 / 1024}
_MACHINE_ALIASES = {"q35": re.compile(r"^pc-q35-[\d.]+$"), "pc": re.compile(r"^pc-i440fx-[\d.]+$")}
# Devices libvirt never adds on its own: one only the actual has was put there by someone.
_USER_ONLY_KINDS = ("disk", "hostdev", "interface", "channel", "filesystem")


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def _same(desired: Optional[str], actual: Optional[str]) -> bool:
    """Equal as text, or as numbers written differently (``0x02`` and ``2``)."""
    if desired == actual:
        return True
    a, b = _int(desired), _int(actual)
    return a is not None and a == b


def _kib(element: ET.Element) -> Optional[float]:
    value = _int((element.text or "").strip())
    if value is None:
        return None
    return value * _UNITS_KIB.get(element.get("unit", "KiB").lower(), 1)


def _text(element: ET.Element) -> str:
    return (element.text or "").strip()


def _bdf(address: Optional[ET.Element]) -> str:
    if address is None:
        return "?"
    parts = [_int(address.get(k, "0")) or 0 for k in ("domain", "bus", "slot", "function")]
    return "{:04x}:{:02x}:{:02x}.{:x}".format(*parts)


def _device_key(element: ET.Element) -> str:
    """The label two device elements are paired by: kind and what tells it apart."""
    tag = element.tag
    target = element.find("target")
    if tag == "disk":
        return f"disk[{target.get('dev') if target is not None else '?'}]"
    if tag == "hostdev":
        return f"hostdev[source/address={_bdf(element.find('source/address'))}]"
    if tag == "interface":
        return f"interface[type={element.get('type')}]"
    if tag == "channel":
        return f"channel[{target.get('name') if target is not None else element.get('type')}]"
    if tag in ("serial", "console", "parallel"):
        return f"{tag}[port={target.get('port', '0') if target is not None else '0'}]"
    if tag == "controller":
        return f"controller[type={element.get('type')},index={element.get('index', '0')}]"
    if tag in ("iommu", "memballoon", "rng", "watchdog", "video", "sound", "tpm"):
        return f"{tag}[model={element.get('model')}]"
    return tag


def _keyed(elements: list[ET.Element]) -> dict[str, ET.Element]:
    """Key -> element; a key seen twice (two bridge NICs) gets ``#2``, ``#3`` in document order."""
    out: dict[str, ET.Element] = {}
    seen: dict[str, int] = {}
    for element in elements:
        key = _device_key(element)
        seen[key] = seen.get(key, 0) + 1
        out[key if seen[key] == 1 else f"{key}#{seen[key]}"] = element
    return out


def _compare(desired: ET.Element, actual: ET.Element, path: str, out: list[str]) -> None:
    """Every attribute, text and child of ``desired`` must be in ``actual`` (children paired by tag, in order)."""
    for name, value in desired.attrib.items():
        got = actual.get(name)
        if name == "machine" and desired.tag == "type" and value in _MACHINE_ALIASES \
                and got is not None and _MACHINE_ALIASES[value].match(got):
            continue
        if got is None:
            out.append(f"{path}@{name}: {value} -> (missing)")
        elif not _same(value, got):
            out.append(f"{path}@{name}: {value} -> {got}")
    want, got_text = _text(desired), _text(actual)
    if want and not _same(want, got_text):
        out.append(f"{path}: {want} -> {got_text or '(empty)'}")
    used: dict[str, int] = {}
    for child in desired:
        tag = child.tag
        index = used.get(tag, 0)
        used[tag] = index + 1
        candidates = actual.findall(tag)
        label = f"{path}/{tag}" if index == 0 else f"{path}/{tag}[{index + 1}]"
        if index >= len(candidates):
            out.append(f"{label}: missing")
            continue
        _compare(child, candidates[index], label, out)


def _compare_devices(desired: Optional[ET.Element], actual: Optional[ET.Element], out: list[str]) -> None:
    want = _keyed(list(desired) if desired is not None else [])
    have = _keyed(list(actual) if actual is not None else [])
    for key, element in want.items():
        if key not in have:
            out.append(f"devices/{key}: missing")
        else:
            _compare(element, have[key], f"devices/{key}", out)
    for key, element in have.items():
        if key not in want and element.tag in _USER_ONLY_KINDS:
            out.append(f"devices/{key}: not in desired")


def _qemu_args(root: ET.Element) -> Optional[list[str]]:
    commandline = root.find(f"{_Q}commandline")
    if commandline is None:
        return None
    return [arg.get("value", "") for arg in commandline.findall(f"{_Q}arg")]


def differences(desired_xml: str, actual_xml: str) -> list[str]:
    """Human-readable lines where ``actual_xml`` departs from ``desired_xml``; ``[]`` means same definition.

    >>> differences("<domain type='kvm'><vcpu>2</vcpu></domain>", "<domain type='kvm'><vcpu>4</vcpu></domain>")
    ['vcpu: 2 -> 4']
    """
    desired, actual = ET.fromstring(desired_xml), ET.fromstring(actual_xml)
    out: list[str] = []
    if desired.tag != actual.tag:
        return [f"root: <{desired.tag}> -> <{actual.tag}>"]
    for name, value in desired.attrib.items():
        if not _same(value, actual.get(name)):
            out.append(f"domain@{name}: {value} -> {actual.get(name, '(missing)')}")
    used: dict[str, int] = {}
    for child in desired:
        tag = child.tag
        if tag == "devices" or tag.startswith(_Q):
            continue
        if tag in ("memory", "currentMemory", "maxMemory"):
            other = actual.find(tag)
            if other is None:
                out.append(f"{tag}: missing")
            elif _kib(child) != _kib(other):
                out.append(f"{tag}: {_kib(child):.0f} KiB -> {_kib(other):.0f} KiB")
            continue
        index = used.get(tag, 0)
        used[tag] = index + 1
        candidates = actual.findall(tag)
        if index >= len(candidates):
            out.append(f"{tag}: missing")
        else:
            _compare(child, candidates[index], tag, out)
    _compare_devices(desired.find("devices"), actual.find("devices"), out)
    want_args, have_args = _qemu_args(desired), _qemu_args(actual)
    if want_args is not None and have_args is None:
        out.append("qemu:commandline: missing")
    elif want_args is not None and want_args != have_args:
        out.append(f"qemu:commandline: {' '.join(want_args)} -> {' '.join(have_args or [])}")
    elif want_args is None and have_args:
        out.append(f"qemu:commandline: not in desired ({' '.join(have_args)})")
    return out
