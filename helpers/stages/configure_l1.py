"""Stage 03: the IOMMU on in L1 (kernel arguments, reboot, dmesg), the virtualization stack
in L1, L1's own checks, and L2's accelerator: ``STEPS``. The distribution's ways (bootloader,
package manager) are ``helpers.distro`` classes, chosen once by the first step."""
from __future__ import annotations

from dataclasses import dataclass

from .. import checks, l0
from .. import distro as distros
from ..errors import RunbookError
from ..facts import iommu as iommu_facts
from ..facts import system as system_facts
from ..nb import Stage
from ..ops import l1 as l1_ops
from ..ops import l1_config, no_change
from ..paths import nvme_bdf_in_l1, paths
from ..steps import Action, Plan, Step, no_change_why

URI = "qemu:///system"   # libvirt inside L1, as the seed's `virsh` uses it


def iommu_kind(ctx: Stage) -> str:
    """intel or amd: what stage 02 decided and built L1 with; for an L1 built before that was
    recorded, the parameter, or what L1's firmware tables show (DMAR or IVRS), never the CPU vendor."""
    decided = (ctx.state.get("l1") or {}).get("iommu_kind")
    if decided:
        return decided
    if ctx.params.l1.iommu != "auto":
        return ctx.params.l1.iommu
    l1 = ctx.l1()
    if l1.exists("/sys/firmware/acpi/tables/IVRS"):
        return "amd"
    if l1.exists("/sys/firmware/acpi/tables/DMAR"):
        return "intel"
    raise RunbookError("L1 shows no DMAR or IVRS ACPI table: it has no virtual IOMMU",
                       hint="L1 needs a vIOMMU in its definition (<iommu model='intel'>, or QEMU's amd-iommu): "
                            "rerun stage 02")


def wanted_args(ctx: Stage) -> list[str]:
    return distros.iommu_args(iommu_kind(ctx), ctx.params.l1.iommu_pt,
                              tcg=(ctx.state.get("l1") or {}).get("accel") == "tcg")


def distro(ctx: Stage) -> dict:
    """L1's distribution and the classes that do its kernel arguments and packages (kept in
    ``ctx.seen`` for the later steps), and the arguments the IOMMU needs."""
    l1 = ctx.l1()
    osr = system_facts.os_release(l1)
    boot, pm = distros.bootloader(l1), distros.package_manager(l1)
    ctx.seen.update(boot=boot, pm=pm, args=wanted_args(ctx))
    info = {"distro": osr.pretty_name or osr.id, "id": osr.id, "id_like": osr.id_like, "bootloader": boot.name,
            "package_manager": pm.name}
    ctx.state.update("l1", distro=info)
    return {**info, "args": ctx.seen["args"]}


def iommu_lines(ctx: Stage) -> iommu_facts.IOMMU:
    """The kernel log of L1 must now say the IOMMU and IRQ remapping are on, and groups exist."""
    f = iommu_facts.iommu(ctx.l1())
    kind = iommu_kind(ctx)
    missing = iommu_facts.missing_on(f, kind)
    if missing:
        raise RunbookError("L1's kernel does not show " + ", ".join(missing),
                           hint=iommu_facts.l1_hint(kind))
    ctx.state.update("l1", iommu={"kind": kind, "groups": f.groups, "lines": f.lines[:10],
                            "enabled_lines": f.enabled_lines[:5], "irq_remap_lines": f.irq_remap_lines[:3]})
    return f


def before_after(ctx: Stage, f: iommu_facts.IOMMU) -> list[tuple[str, str, str]]:
    """Each line that tells the IOMMU's state: in stage 02 (before ``intel_iommu=on``) and now."""
    before = ctx.state.get("l1", {}).get("iommu_before") or {}
    return [(what, before.get(what, "not recorded"), now)
            for what, now in iommu_facts.markers(f.lines, f.kind or "intel")]


def l1_checks(ctx: Stage) -> list[checks.Check]:
    """Stage 01's checks, inside L1, through SSH."""
    from .check_host import run_checks
    found = run_checks(ctx, role="l1", guest=ctx.l1())
    ctx.seen["l1_checks"] = found
    return found


def l2_accel(ctx: Stage) -> tuple[str, str]:
    """KVM for L2 when a kernel booted under KVM inside L1 (step 5's smoke test), TCG otherwise."""
    judged = ctx.state.get("l1_checks")
    if not judged:
        l1_checks(ctx)
        judged = ctx.state["l1_checks"]
    accel, why = judged["accel"], judged["accel_reason"]
    if ctx.params.l2.accel == "kvm" and accel != "kvm":
        raise RunbookError(f"l2.accel is kvm but KVM does not work inside L1: {why}",
                           hint="enable nested KVM on the host (kvm_intel nested=1), or set l2.accel: auto")
    ctx.state.update("l2", accel=accel, accel_reason=why)
    return accel, why


@dataclass
class BootChoice:
    """What step 'A kernel with the vIOMMU's driver' plans: the kernel L1 is to boot (None: the
    running one) and the bootloader's plan to make it the default (None: nothing to do)."""
    kernel: str | None
    plan: object | None


def kernel_or_refuse(choice, kind: str):
    """The kernel choice, or the refusal when no installed kernel has the vIOMMU's driver."""
    if choice.lacking:
        raise RunbookError(
            f"{choice.reason}: the {kind} vIOMMU cannot be used in L1",
            hint="install the distribution's generic kernel in L1 (Debian: apt-get install linux-image-amd64, whose "
                 "cloud kernel lacks the AMD IOMMU driver; RHEL: dnf install kernel), then rerun stage 03")
    return choice


# --- the steps ---------------------------------------------------------------------------------

DISTRO = "L1's distribution and bootloader"
NOT_READ = f"L1's distribution is read (step '{DISTRO}': L1 runs)"


def _from_distro(plan, label: str, unchanged: str = "") -> Plan:
    """A ``helpers.distro`` plan as the step's Plan: its edits as actions in L1, or no change."""
    if plan.changes:
        return Plan(label, [Action("L1", e.what, list(e.commands), e.content) for e in plan.edits], data=plan)
    return Plan(label, [], reason=f"no change: {plan.reason or unchanged}", data=plan)


def _not_ready(ctx: Stage) -> str | None:
    from .build_l1 import l1_not_up
    if why := l1_not_up(ctx):
        return why
    return None if "boot" in ctx.seen else NOT_READ


class Distro(Step):
    """Which distribution L1 runs, its bootloader tool and package manager, the IOMMU arguments."""
    label = DISTRO
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        from .build_l1 import l1_not_up
        if why := l1_not_up(ctx):
            return self.unknown(why)
        return self.reads("L1's /etc/os-release, its bootloader tool (grubby, /etc/default/grub or kernel-install), "
                          "its package manager (apt-get, dnf or yum) and its ACPI IOMMU table (DMAR or IVRS)")

    def apply(self, ctx: Stage, plan: Plan) -> dict:
        return distro(ctx)

    def show(self, plan: Plan, info: dict) -> None:
        from .. import ui
        ui.show_table([(info["distro"], info["bootloader"], info["package_manager"], " ".join(info["args"]))],
                      ["L1 distribution", "kernel arguments set with", "packages installed with", "arguments"])


class BootKernel(Step):
    """A kernel with the driver of L1's vIOMMU for the next boot: the running one when it has
    it; else an installed one made the bootloader's default (Debian's cloud kernel, the lab's
    L1 kernel, has no AMD IOMMU driver)."""
    label = "A kernel with the vIOMMU's driver"

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        from ..facts import kernel
        kind = iommu_kind(ctx)
        choice = kernel_or_refuse(kernel.kernel_for(ctx.l1(), kind), kind)
        if choice.boot is None:
            return self.no_change(choice.reason, BootChoice(None, None))
        planned = ctx.seen["boot"].plan_default_kernel(ctx.l1(), choice.boot)
        done = _from_distro(planned, self.label)
        done.data = BootChoice(choice.boot, planned)
        if not done.changes:  # the default is set already (a rerun before the reboot)
            done.reason = f"no change: {choice.reason}; {planned.reason}"
        return done

    def apply(self, ctx: Stage, plan: Plan) -> list:
        if plan.data.kernel:  # what L1 is to boot, for the reboot's check and the report
            ctx.state.update("l1", boot_kernel=plan.data.kernel)
        if plan.data.plan is None:
            return [no_change(self.label, no_change_why(plan))]
        return [ctx.seen["boot"].apply_default_kernel(ctx.l1(), plan.data.plan)]


class KernelArgs(Step):
    """The IOMMU arguments for the next boot, the distribution's way (``helpers.distro.boot``)."""
    label = "Set kernel arguments"

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        return _from_distro(ctx.seen["boot"].plan(ctx.l1(), ctx.seen["args"]), self.label)

    def apply(self, ctx: Stage, plan: Plan) -> list:
        return [ctx.seen["boot"].apply(ctx.l1(), plan.data)]


class Reboot(Step):
    """Reboot L1 when its running kernel lacks the arguments; wait until it is back with them."""
    label = "Reboot L1"

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        boot = ctx.planned(BootKernel)
        args, kernel = ctx.seen["args"], boot.data.kernel if boot is not None and boot.data else None
        lacking = l1_config.running_lacks(ctx.l1(), args)
        other = kernel is not None and l1_config.running_kernel(ctx.l1()) != kernel
        if not (lacking or other):
            return self.no_change(f"the running kernel has {' '.join(args) or 'what it needs'} (/proc/cmdline)")
        why = " and ".join(([f"its running kernel lacks {' '.join(lacking)}"] if lacking else [])
                           + ([f"kernel {kernel} is to start"] if other else []))
        checks_ = [f"cat /proc/cmdline   # check: it has {' '.join(args)}"] if args else []
        checks_ += [f"uname -r   # check: {kernel}"] if other else []
        return Plan(self.label, [Action("L1", f"reboot L1: {why}; wait until it is back "
                                              f"(up to {ctx.params.l1.boot_timeout_s} s)",
                                        [l1_config.REBOOT, "# ... log in again, then:"] + checks_)],
                    data=(args, kernel if other else None))

    def apply(self, ctx: Stage, plan: Plan) -> list:
        if not plan.changes:
            return [no_change(f"reboot {ctx.l1().name}", no_change_why(plan))]
        args, kernel = plan.data
        agent = l1_ops.l1_agent(l0.libvirt(ctx.params), ctx.params.l1.name)
        done = l1_config.reboot(ctx.l1(), args, ctx.params.l1.boot_timeout_s,
                                log=l0.Log(ctx.l0, paths(ctx.params).l1_console), kernel=kernel,
                                agent_up=lambda: agent.ping(timeout=2))
        return [done]


@dataclass
class IommuNow:
    """What step 'L1's IOMMU after the reboot' read: the kernel log's facts, and each line that
    tells the IOMMU's state in stage 02 (before) and now (``before_after``)."""
    facts: iommu_facts.IOMMU
    rows: list[tuple[str, str, str]]


class IommuOn(Step):
    """After the reboot: the kernel log shows DMA and interrupt remapping, and IOMMU groups exist."""
    label = "L1's IOMMU after the reboot"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        if ctx.pending(Reboot):
            return self.unknown("L1 is rebooted with the arguments (step 'Reboot L1')")
        return self.reads("L1's kernel log (DMAR, IOMMU, AMD-Vi lines) and /sys/kernel/iommu_groups",
                          data=nvme_bdf_in_l1(ctx.params))  # data: the NVMe whose own group line show keeps

    def apply(self, ctx: Stage, plan: Plan) -> IommuNow:
        f = iommu_lines(ctx)
        return IommuNow(f, before_after(ctx, f))

    def show(self, plan: Plan, now: IommuNow) -> None:
        from .. import ui
        f = now.facts
        ui.show_output("dmesg | grep -E 'DMAR|IOMMU|AMD-Vi'", "\n".join(iommu_facts.excerpt(f.lines, devices=[plan.data])),
                       prompt="root@L1")
        ui.show_table(now.rows, ["what the line proves", "stage 02 (before)", "now"])
        print(f"IOMMU groups in L1: {f.groups}; interrupt remapping: {'on' if f.irq_remapping else 'off'}")


class InstallVirt(Step):
    """libvirt and QEMU in L1 (l1.virt_packages), with L1's package manager (``helpers.distro.packages``)."""
    label = "Install the virtualization stack"

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        planned = ctx.seen["pm"].plan(ctx.l1(), list(ctx.params.l1.virt_packages))
        return _from_distro(planned, self.label)

    def apply(self, ctx: Stage, plan: Plan) -> list:
        done = ctx.seen["pm"].apply(ctx.l1(), plan.data)
        return [done]


class StartLibvirt(Step):
    """libvirtd (or virtqemud) enabled and qemu:///system answering inside L1."""
    label = "Start libvirt in L1"

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        if ctx.pending(InstallVirt):
            return self.unknown("the packages are installed (step 'Install the virtualization stack')")
        l1 = ctx.l1()
        if l1_config.libvirt_answers(l1, URI):
            return self.no_change(f"{URI} answers in L1 (virsh version)")
        unit = l1_config.libvirt_unit(l1)
        return Plan(self.label, [Action("L1", f"enable and start {unit}; wait until {URI} answers",
                                        [f"systemctl enable --now {unit}", "virsh version   # check: libvirt answers"])],
                    data=unit)

    def apply(self, ctx: Stage, plan: Plan) -> list:
        if not plan.changes:
            return [no_change(f"libvirt in {ctx.l1().name}", no_change_why(plan))]
        done = l1_config.start_libvirtd(ctx.l1(), plan.data, URI)
        return [done]


class L1Checks(Step):
    """Stage 01's checks, inside L1 (role 'l1': L2 is the guest to come)."""
    label = "Stage 01's checks in L1"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _not_ready(ctx):
            return self.unknown(why)
        for pending, until in ((Reboot, "L1 is rebooted with the arguments (step 'Reboot L1')"),
                               (InstallVirt, "libvirt and QEMU are installed in L1 (step 'Install the "
                                             "virtualization stack')"),
                               (StartLibvirt, "libvirt answers in L1 (step 'Start libvirt in L1')")):
            if ctx.pending(pending):
                return self.unknown(until)
        from .check_host import what_is_read
        return self.reads(what_is_read(ctx, "L1, through SSH", "L2"))

    def apply(self, ctx: Stage, plan: Plan) -> list[checks.Check]:
        return l1_checks(ctx)

    def show(self, plan: Plan, found) -> None:
        from .. import ui
        ui.show_checks(found)


class L2Accel(Step):
    """KVM for L2 when a kernel boots under KVM inside L1, TCG otherwise (or what l2.accel forces)."""
    label = "L2's accelerator"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if "l1_checks" not in ctx.seen:
            return self.unknown("L1's own checks ran (step \"Stage 01's checks in L1\")")
        return self.reads("the accelerator the checks in L1 chose for L2 (run state)")

    def apply(self, ctx: Stage, plan: Plan) -> tuple[str, str]:
        return l2_accel(ctx)

    def show(self, plan: Plan, choice) -> None:
        accel, why = choice
        print(f"L2 will run under {accel.upper()}: {why}")


from .host_nvme import NothingForTarget  # noqa: E402  (nvme.target l1: one line, then the run goes on)

STEPS = [NothingForTarget, Distro, BootKernel, KernelArgs, Reboot, IommuOn, InstallVirt, StartLibvirt, L1Checks, L2Accel]
