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


def preview(ctx: Stage) -> str:
    """What step 1 does, said before an interactive run does it: it overwrites the
    verdicts and the accelerator that stage 02 builds L1 with."""
    return (f"read the host (and boot a test kernel under -accel kvm, at most "
            f"{ctx.params.host.kvm_smoke_timeout_s} s, when /dev/kvm is there), judge it against "
            f"L1's {ctx.params.l1.memory_mib} MiB and {ctx.params.l1.vcpus} vCPUs, and write the verdicts "
            f"and L1's accelerator into the run state {ctx.state.path}")


def _recorded(ctx: Stage) -> dict:
    h = ctx.state.get("host")
    if not h:
        raise RunbookError("the host has not been checked yet in this run state",
                           hint="run step 1 (in JupyterLab: its button, then Confirm) first")
    return h


def accel(ctx: Stage) -> tuple[str, str]:
    h = _recorded(ctx)
    return h["accel"], h["accel_reason"]


def say_accel(choice: tuple[str, str]) -> None:
    accel, why = choice
    print(f"L1 will run under {accel.upper()}: {why}")


def verdict(ctx: Stage) -> None:
    """Stop the run when a check recorded by step 1 failed (see assert_passed)."""
    assert_passed([checks.Check(c["name"], c["observed"], c["verdict"], c.get("fix", ""))
                   for c in _recorded(ctx)["checks"]])


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
