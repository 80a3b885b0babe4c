"""Define and start a domain, idempotently, on any ``virt.Libvirt``: each as a plan
(``plan_define``, ``plan_start``: read only) and its apply (``apply_define``, ``apply_start``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import RunbookError
from ..libvirt_xml.compare import differences
from ..virt import Libvirt
from . import Change, did, no_change


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


def apply_define(lv: Libvirt, plan: DefinePlan) -> Change:
    if not plan.how:
        return no_change(f"define {plan.name}", plan.detail)
    if plan.how == "replace":
        if lv.is_active(plan.name):
            lv.destroy(plan.name)
            lv.wait_stopped(plan.name)
        lv.undefine(plan.name)
    lv.define(plan.xml)
    return did(f"define {plan.name}", plan.detail)


def define(lv: Libvirt, name: str, xml: str, replace: bool = False) -> Change:
    """Define ``name`` from ``xml`` unless the same definition is there (plan, then apply)."""
    return apply_define(lv, plan_define(lv, name, xml, replace))


def start(lv: Libvirt, name: str) -> Change:
    """Start ``name`` unless it runs."""
    if lv.is_active(name):
        return no_change(f"start {name}", "already running")
    lv.start(name)
    return did(f"start {name}", f"started in {lv.where}")


def remove(lv: Libvirt, name: str) -> list[Change]:
    """Stop and undefine ``name``; each step says if there was nothing to do."""
    changes = []
    if lv.is_active(name):
        lv.destroy(name)
        lv.wait_stopped(name)
        changes.append(did(f"stop {name}", f"destroyed in {lv.where}"))
    else:
        changes.append(no_change(f"stop {name}", "not running"))
    if lv.exists(name):
        lv.undefine(name)
        changes.append(did(f"undefine {name}", f"removed from {lv.where}"))
    else:
        changes.append(no_change(f"undefine {name}", "not defined"))
    return changes
