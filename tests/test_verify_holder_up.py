"""Stage 05's plans ask whether L2 runs (a `virsh` in L1 each time) once a minute at most: no step
of stage 05 starts or stops a guest."""
from types import SimpleNamespace

from helpers.stages import build_l2, verify_benchmark


def ctx_with_l2():
    return SimpleNamespace(params=SimpleNamespace(nvme=SimpleNamespace(in_l2=True)), seen={})


def test_l2_seen_running_stands_for_the_next_plans_within_a_minute(monkeypatch):
    asked = []
    monkeypatch.setattr(build_l2, "_l2_not_up", lambda ctx: asked.append(1))
    ctx = ctx_with_l2()
    assert [verify_benchmark._l2_not_up(ctx) for _ in range(4)] == [None] * 4
    assert len(asked) == 1
    ctx.seen["holder_up_at"] -= verify_benchmark.UP_FOR_S + 1  # a minute later: asked again
    assert verify_benchmark._l2_not_up(ctx) is None and len(asked) == 2


def test_l2_not_running_is_asked_again_at_every_plan(monkeypatch):
    asked = []
    monkeypatch.setattr(build_l2, "_l2_not_up", lambda ctx: asked.append(1) or "L2 (nvmetest) runs in L1")
    ctx = ctx_with_l2()
    assert verify_benchmark._l2_not_up(ctx) == verify_benchmark._l2_not_up(ctx) == "L2 (nvmetest) runs in L1"
    assert len(asked) == 2 and "holder_up_at" not in ctx.seen
