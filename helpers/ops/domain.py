"""Define and start a domain, idempotently, on any ``virt.Libvirt``."""
from __future__ import annotations

from ..errors import RunbookError
from ..libvirt_xml.compare import differences
from ..virt import Libvirt
from . import Change, did, no_change


def define(lv: Libvirt, name: str, xml: str, replace: bool = False) -> Change:
    """Define ``name`` from ``xml`` unless the same definition is there.

    A different definition is replaced only when ``replace`` is True (the
    parameters' consent); otherwise the differences are reported and nothing
    changes."""
    current = lv.inactive_xml(name)
    if current is None:
        lv.define(xml)
        return did(f"define {name}", f"new domain in {lv.where}")
    diff = differences(xml, current)
    if not diff:
        return no_change(f"define {name}", "the defined domain already matches")
    if not replace:
        raise RunbookError(
            f"{lv.where}: domain {name} exists with a different definition:\n  " + "\n  ".join(diff),
            hint="set replace: true for this guest in the parameters to replace it, "
                 "or give the new guest another name")
    if lv.is_active(name):
        lv.destroy(name)
        lv.wait_stopped(name)
    lv.undefine(name)
    lv.define(xml)
    return did(f"define {name}", "replaced: " + "; ".join(diff))


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
