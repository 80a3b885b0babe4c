"""Stage 01: read the host, judge it, choose the accelerator."""
from __future__ import annotations

from .. import checks
from ..errors import RunbookError
from ..nb import Stage


def run_checks(ctx: Stage, role: str = "l0", guest=None) -> list[checks.Check]:
    """Every check on the host (or, with role 'l1', inside L1), recorded in the run state
    with the machine's environment (kernel, QEMU, libvirt, CPU) for the results."""
    guest = guest or ctx.l0
    facts = checks.gather(guest, ctx.params, role)
    found = checks.judge(facts, ctx.params, role)
    ctx.state.update("environment", **{role.upper(): checks.environment(facts)})  # for results.json
    accel, why = checks.choose_accel(found, ctx.params.host.accel if role == "l0" else ctx.params.l2.accel)
    key = "host" if role == "l0" else "l1_checks"
    ctx.state.set(key, {"accel": accel, "accel_reason": why,
                        "checks": [{"name": c.name, "observed": c.observed, "verdict": c.verdict, "fix": c.fix}
                                   for c in found]})
    if role == "l0":
        ctx.state.set("accel", accel)
    return found


def accel(ctx: Stage) -> tuple[str, str]:
    h = ctx.state["host"]
    return h["accel"], h["accel_reason"]


def assert_passed(found: list[checks.Check], where: str = "the host") -> None:
    """Stop the run when a check failed, listing each failure with its fix."""
    failed = [c for c in found if c.verdict == "fail"]
    if failed:
        lines = "\n".join(f"- {c.name}: {c.observed}. Fix: {c.fix}" for c in failed)
        raise RunbookError(f"{len(failed)} check(s) failed on {where}:\n{lines}",
                           hint="apply the fixes listed, then run this stage again")
    print(f"no check failed on {where} "
          f"({sum(c.verdict == 'pass' for c in found)} pass, {sum(c.verdict == 'warn' for c in found)} warn, "
          f"{sum(c.verdict == 'skip' for c in found)} skip)")
