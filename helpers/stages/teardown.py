"""Stage 99: L2 away, the NVMe back to L1's nvme driver, L1 away, the run's files removed."""
from __future__ import annotations

from ..errors import RunbookError
from ..nb import Stage
from ..ops import Change, teardown
from ..virt import PyLibvirt


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
    changes = teardown.remove_l1(ctx.params, PyLibvirt(ctx.params.host.libvirt_uri))
    l1 = _l1_or_none(ctx)
    if l1 is not None:
        l1.close()
    return changes


def files(ctx: Stage) -> list[Change]:
    if not ctx.params.teardown.l1:
        return []
    return teardown.remove_files(ctx.params, ctx.state)
