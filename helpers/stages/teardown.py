"""Stage 99: L2 away, the NVMe back to L1's nvme driver, L1 away, the run's files removed."""
from __future__ import annotations

from pathlib import Path

from .. import by_hand, l0
from ..errors import RunbookError
from ..nb import Stage
from ..ops import Change, teardown
from ..paths import paths


def _l1_or_none(ctx: Stage):
    try:
        return ctx.l1()
    except RunbookError:
        return None


def l2(ctx: Stage) -> list[Change]:
    if not ctx.params.teardown.l2:
        return []
    l1 = _l1_or_none(ctx)
    return teardown.remove_l2(ctx.params, l1, ctx.state) + teardown.return_nvme(ctx.params, l1, ctx.state)


def l1(ctx: Stage) -> list[Change]:
    if not ctx.params.teardown.l1:
        return []
    changes = teardown.remove_l1(ctx.params, l0.libvirt(ctx.params))
    l1 = _l1_or_none(ctx)
    if l1 is not None:
        l1.close()
    return changes


def files(ctx: Stage) -> list[Change]:
    if not ctx.params.teardown.l1:
        return []
    return teardown.remove_files(ctx.params, ctx.state, ctx.l0)


def by_hand_l2(ctx: Stage) -> by_hand.ByHand:
    """L2 away in L1, and the NVMe back on L1's nvme driver, as commands at L1's prompt."""
    p = ctx.params
    if not p.teardown.l2:
        return by_hand.ByHand("root@L1", ["# teardown.l2 is false: L2 stays"])
    bdf = (ctx.state.get("nvme") or {}).get("bdf_in_l1")
    return by_hand.remove_l2(p.l2.name, paths(p).l2_disk if p.l2.image == "lab" else None, bdf)


def by_hand_l1(ctx: Stage) -> by_hand.ByHand:
    if not ctx.params.teardown.l1:
        return by_hand.ByHand("root@L0", ["# teardown.l1 is false: L1 stays"])
    return by_hand.remove_l1(ctx.params.l1.name, ctx.params.host.libvirt_uri)


def by_hand_files(ctx: Stage) -> by_hand.ByHand:
    """The files the runbook made that are still there, and the folders it created."""
    p = ctx.params
    if not p.teardown.l1:
        return by_hand.ByHand("root@L0", ["# teardown.l1 is false: the files stay with L1"])
    found = [f for f in teardown.file_candidates(p, ctx.state) if ctx.l0.exists(str(f))]
    backing = Path(p.nvme.backing_file)
    kept = [backing] if ctx.l0.exists(str(backing)) and not p.nvme.remove_backing_file else []
    cmds = by_hand.remove_files([f for f in found if f not in kept], kept)
    dirs = [d for d in ctx.state.created("dirs") if ctx.l0.is_dir(d)]
    if dirs:
        cmds.commands.append("rmdir " + " ".join(dirs) + "   # only if empty")
    return cmds
