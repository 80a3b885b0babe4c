"""Stage 99: L2 away, the NVMe back to L1's nvme driver, L1 away, the run's files removed: ``STEPS``."""
from __future__ import annotations

from pathlib import Path

from .. import by_hand, execute, l0
from ..access import lab_credentials
from ..errors import RunbookError
from ..facts import pci
from ..nb import Stage
from ..ops import Change, did, no_change, teardown
from ..paths import paths
from ..steps import Action, Plan, Step, no_change_why
from ..virt import Virsh


def _l1_or_none(ctx: Stage):
    """L1 over SSH when it runs and answers, else None (nothing to do inside it)."""
    p = ctx.params
    if not l0.libvirt(p).is_active(p.l1.name):
        return None
    try:
        l1 = ctx.l1()
    except RunbookError:
        return None
    return l1 if teardown.l1_reachable(l1) else None


class RemoveL2(Step):
    """Stop and undefine L2 in L1; the managed hostdev goes back to L1's nvme driver."""
    label = "Remove L2"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if not p.teardown.l2:
            return self.no_change("teardown.l2 is false: L2 stays")
        l1 = _l1_or_none(ctx)
        if l1 is None:
            return self.no_change(f"L1 ({p.l1.name}) is not running: nothing to stop in it")
        lv, name = Virsh(l1), p.l2.name
        disk = paths(p).l2_disk if p.l2.image == "lab" else None
        bdf = (ctx.state.get("nvme") or {}).get("bdf_in_l1")
        todo = {"destroy": lv.is_active(name), "undefine": lv.exists(name),
                "disk": bool(disk) and l1.exists(disk), "bdf": bdf,
                "virtio": l1.exists(paths(p).l2_virtio)}
        todo["reattach"] = bool(bdf) and pci.driver_of(l1, bdf) == "vfio-pci"
        parts = by_hand.remove_l2_parts(name, disk if todo["disk"] else None, bdf if todo["reattach"] else None,
                                        running=todo["destroy"], defined=todo["undefine"],
                                        stuck=todo["reattach"] and not todo["destroy"],
                                        virtio=str(paths(p).l2_virtio) if todo["virtio"] else None)
        if not parts:
            return self.no_change(f"{name} is not defined in L1" + (f"; the NVMe {bdf} is on L1's nvme driver"
                                                                     if bdf else ""), todo)
        return Plan(self.label, [Action("L1", what, cmds) for what, cmds in parts], data=todo)

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        p, todo = ctx.params, plan.data
        if not plan.changes:
            return [no_change(f"remove {p.l2.name}", no_change_why(plan))]
        l1 = ctx.l1()
        where = Virsh(l1).where
        changes = []
        for action in plan.actions:
            execute.run(ctx, action)
        if todo["destroy"]:
            changes.append(did(f"stop {p.l2.name}", f"destroyed in {where}"))
        if todo["undefine"]:
            changes.append(did(f"undefine {p.l2.name}", f"removed from {where}"))
        if todo["disk"]:
            changes.append(did(f"remove {paths(p).l2_disk} in L1", "L2's overlay"))
        if todo.get("virtio"):
            changes.append(did(f"remove {paths(p).l2_virtio} in L1", "the virtio-blk disk's file"))
        if todo["bdf"]:  # wait for libvirt's reattach, then check nvme list
            back = teardown.return_nvme(p, l1, ctx.state)
            if not (todo["destroy"] or todo["reattach"]):
                back = [no_change(c.what, c.detail) for c in back]
            changes += back
        return changes or [no_change(f"remove {p.l2.name}", "nothing to do")]


class RemoveL1(Step):
    label = "Remove L1"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if not p.teardown.l1:
            return self.no_change("teardown.l1 is false: L1 stays")
        lv, name, uri = l0.libvirt(p), p.l1.name, p.host.libvirt_uri
        todo = {"destroy": lv.is_active(name), "undefine": lv.exists(name)}
        actions = ([Action("L0", f"stop {name}", [by_hand.virsh("destroy", name, uri=uri)])] if todo["destroy"] else []) \
            + ([Action("L0", f"undefine {name}", [by_hand.virsh("undefine", name, uri=uri)])] if todo["undefine"] else [])
        if not actions:
            return self.no_change(f"{name} is not defined in {uri}")
        return Plan(self.label, actions, data=todo)

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        name = ctx.params.l1.name
        if not plan.changes:
            return [no_change(f"remove {name}", no_change_why(plan))]
        lv = l0.libvirt(ctx.params)
        for action in plan.actions:
            execute.run(ctx, action)
        changes = ([did(f"stop {name}", f"destroyed in {lv.where}")] if plan.data["destroy"] else []) \
            + ([did(f"undefine {name}", f"removed from {lv.where}")] if plan.data["undefine"] else [])
        try:
            if not ctx.params.l1.lab_l2:  # (lab-l2: reached by its guest agent, no connection kept)
                ctx.l1().close()
        except RunbookError:
            pass
        return changes


class RemoveFiles(Step):
    """The files the runbook made that are still there; the backing file only with consent."""
    label = "Remove files"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if not p.teardown.l1:
            return self.no_change("teardown.l1 is false: the files stay with L1")
        backing, m = Path(p.nvme.backing_file), ctx.l0
        found = [f for f in teardown.file_candidates(p, ctx.state) if m.exists(str(f))]
        kept = [backing] if m.exists(str(backing)) and not p.nvme.remove_backing_file else []
        files = [f for f in found if f not in kept]
        dirs = [Path(d) for d in ctx.state.created("dirs") if m.is_dir(d)
                and all(Path(d) / x in files for x in m.listdir(d))]
        here = [f for f in lab_credentials(p) if f is not None and f.exists()] if l0.remote(p) else []
        actions = []
        if files:
            actions.append(Action("L0", "remove " + ", ".join(str(f) for f in files),
                                  by_hand.remove_files(files).commands))
        if here:
            actions.append(Action("this machine", "remove this machine's copies of L1's key and host key: "
                                  + ", ".join(map(str, here)), by_hand.remove_files(here).commands))
        if dirs:
            actions.append(Action("L0", "remove the folders the runbook made: " + ", ".join(map(str, dirs)),
                                  ["rmdir " + " ".join(by_hand.q(d) for d in dirs)]))
        note = f"; kept: {backing} (nvme.remove_backing_file is false)" if kept else ""
        if not actions:
            return self.no_change("none of the run's files is left" + note)
        return Plan(self.label, actions, reason=note.lstrip("; "), data=(files, dirs, here))

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        if not plan.changes:
            return [no_change("remove the run's files", no_change_why(plan))]
        files, dirs, here = plan.data
        for action in plan.actions:
            execute.run(ctx, action)
        for f in files:
            ctx.state.forget_created("files", str(f))
        for d in dirs:
            ctx.state.forget_created("dirs", str(d))
        return ([did(f"remove {f}") for f in files] + [did(f"remove {f} (this machine)") for f in here]
                + [did(f"remove {d}", "empty") for d in dirs])


from .host_nvme import GivenBack  # noqa: E402  (nvme.source host: the controller back on L0's nvme driver)

STEPS = [RemoveL2, RemoveL1, GivenBack, RemoveFiles]
