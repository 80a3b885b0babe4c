"""Stage 01: read the host, judge it, choose the accelerator: ``STEPS``, each of which only reads
(the verdicts and the accelerator go into the run state, for stage 02)."""
from __future__ import annotations

from .. import checks
from ..errors import RunbookError
from ..nb import Stage
from ..steps import Plan, Step


def run_checks(ctx: Stage, role: str = "l0", guest=None) -> list[checks.Check]:
    """Every check on the host (or, with role 'l1', inside L1), recorded in the run state
    with the machine's environment (kernel, QEMU, libvirt, CPU) for the results."""
    guest = guest or ctx.l0
    facts = checks.gather(guest, ctx.params, role, keep_smoke=not ctx.check)
    found = checks.judge(facts, ctx.params, role)
    ctx.state.update("environment", **{role.upper(): checks.environment(facts)})  # for results.json
    accel, why = checks.choose_accel(found, checks.forced_accel(ctx.params, role))
    key = "host" if role == "l0" else "l1_checks"
    ctx.state.set(key, {"accel": accel, "accel_reason": why,
                        "checks": [{"name": c.name, "observed": c.observed, "verdict": c.verdict, "fix": c.fix}
                                   for c in found]})
    if role == "l0":
        ctx.state.set("accel", accel)
    return found


def what_is_read(ctx: Stage, where: str = "the host", guests: str = "L1") -> str:
    """What stage 01 (or, for guests L2, stage 03 in L1) reads and records."""
    p = ctx.params
    memory, vcpus = (p.l1.memory_mib, p.l1.vcpus) if guests == "L1" else (p.l2.memory_mib, p.l2.vcpus)
    smoke = p.host.kvm_smoke_timeout_s if guests == "L1" else max(p.host.kvm_smoke_timeout_s, checks.L1_SMOKE_MIN_S)
    return (f"{where}: CPU flags, /dev/kvm and its modules, nested, ACPI DMAR/IVRS, the kernel log, IOMMU groups, "
            f"the kernel command line, libvirt and QEMU, memory, NUMA and free disk; a test kernel boots under "
            f"-accel kvm (at most {smoke} s) when /dev/kvm is there; judged against {guests}'s {memory} MiB and "
            f"{vcpus} vCPUs, the verdicts and {guests}'s accelerator written into the run state {ctx.state.path}")


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


def verdict(ctx: Stage) -> list[checks.Check]:
    """Stop the run when a check recorded by step 1 failed (see assert_passed). Check mode
    says so and goes on, so that the later stages' plans are still shown."""
    found = [checks.Check(c["name"], c["observed"], c["verdict"], c.get("fix", ""))
             for c in _recorded(ctx)["checks"]]
    if ctx.check:
        failed = [c for c in found if c.verdict == "fail"]
        if failed:
            print(f"check mode: {len(failed)} check(s) fail on the host; a run stops here:\n"
                  + "\n".join(f"- {c.name}: {c.observed}. Fix: {c.fix}" for c in failed))
            return found
    assert_passed(found)
    return found


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


class ReadHost(Step):
    """Read the host's facts and judge each (``helpers.checks``)."""
    label = "Read and judge the host"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        return self.reads(what_is_read(ctx))

    def apply(self, ctx: Stage, plan: Plan) -> list[checks.Check]:
        return run_checks(ctx)

    def show(self, plan: Plan, found) -> None:
        from .. import ui
        ui.show_checks(found)


class Accelerator(Step):
    """L1's accelerator, as step 1 chose it (``checks.accel``)."""
    label = "Show the accelerator"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        return self.reads("the accelerator step 1 chose for L1 (run state)")

    def apply(self, ctx: Stage, plan: Plan) -> tuple[str, str]:
        return accel(ctx)

    def show(self, plan: Plan, choice) -> None:
        say_accel(choice)


class Verdict(Step):
    """Stop when a check failed (check mode: say so and go on)."""
    label = "Verdict"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        return self.reads("the verdicts of step 1 (run state)")

    def apply(self, ctx: Stage, plan: Plan) -> list[checks.Check]:
        return verdict(ctx)

    def show(self, plan: Plan, result) -> None:
        pass


from .host_nvme import ChooseHostNVMe  # noqa: E402  (nvme.source host: the controller of L0, proven free)

STEPS = [ReadHost, Accelerator, Verdict, ChooseHostNVMe]
