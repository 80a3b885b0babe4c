"""The tiny base every libvirt part builds on: an element out, XML text out.

In the style of virt-manager's virtinst: one small class per part of a
libvirt definition, typed fields in, ``xml.etree.ElementTree`` elements out.
No string templates: ElementTree does the quoting and escaping.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Iterable, Optional

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


class XMLPart:
    """One part of a libvirt definition: ``to_element()`` builds it, ``to_xml()`` prints it."""

    def to_element(self) -> ET.Element:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def to_xml(self) -> str:
        """The part as indented XML text (no XML declaration, as virsh prints it)."""
        element = self.to_element()
        ET.indent(element, space="  ")
        return ET.tostring(element, encoding="unicode") + "\n"


def sub(parent: ET.Element, tag: str, text: Optional[str] = None, **attrs: object) -> ET.Element:
    """Add child ``tag`` to ``parent``; attributes whose value is None are left out."""
    child = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = str(text)
    return child


def on_off(value: Optional[bool]) -> Optional[str]:
    """True -> 'on', False -> 'off', None -> None (attribute left out)."""
    return None if value is None else ("on" if value else "off")


def yes_no(value: Optional[bool]) -> Optional[str]:
    """True -> 'yes', False -> 'no', None -> None (attribute left out)."""
    return None if value is None else ("yes" if value else "no")


def one_of(what: str, value: object, allowed: Iterable[object]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, naming the field and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
