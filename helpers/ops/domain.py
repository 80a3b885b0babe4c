"""Defining a domain, idempotently, on any ``virt.Libvirt``: ``plan_define`` (read only) says
what defining it would do; the steps show that as virsh commands (``by_hand.define``) and
``helpers.execute`` runs exactly those."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import RunbookError
from ..libvirt_xml.compare import differences
from ..virt import Libvirt


@dataclass
class DefinePlan:
    name: str
    xml: str
    how: str            # "" (no change), "new" or "replace"
    detail: str         # the Change's detail
    diff: list[str]
    running: bool = False


def plan_define(lv: Libvirt, name: str, xml: str, replace: bool = False) -> DefinePlan:
    """What defining ``name`` from ``xml`` would do. A different definition is replaced
    only when ``replace`` is True (the parameters' consent); otherwise the differences
    are reported, before anything changes."""
    current = lv.inactive_xml(name)
    if current is None:
        return DefinePlan(name, xml, "new", f"new domain in {lv.where}", [])
    diff = differences(xml, current)
    if not diff:
        return DefinePlan(name, xml, "", "the defined domain already matches", [])
    if not replace:
        raise RunbookError(
            f"{lv.where}: domain {name} exists with a different definition:\n  " + "\n  ".join(diff),
            hint="set replace: true for this guest in the parameters to replace it, "
                 "or give the new guest another name")
    return DefinePlan(name, xml, "replace", "replaced: " + "; ".join(diff), diff, lv.is_active(name))
