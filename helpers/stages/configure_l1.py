"""Stage 03: the IOMMU on in L1 (kernel arguments, reboot, dmesg), the
virtualization stack in L1, L1's own checks, and L2's accelerator."""
from __future__ import annotations

from .. import by_hand, checks
from ..errors import RunbookError
from ..facts import iommu as iommu_facts
from ..facts import system as system_facts
from ..nb import Stage
from ..ops import Change
from ..ops import iommu_kernel, kernel_args, l1_config
from ..paths import paths


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
    return kernel_args.iommu_args(iommu_kind(ctx), ctx.params.l1.iommu_pt,
                                  tcg=(ctx.state.get("l1") or {}).get("accel") == "tcg")


def distro(ctx: Stage) -> dict:
    osr = system_facts.os_release(ctx.l1())
    way = kernel_args.bootloader(ctx.l1())
    info = {"distro": osr.pretty_name or osr.id, "id": osr.id, "id_like": osr.id_like, "bootloader": way}
    ctx.state.update("l1", distro=info)
    return info


def boot_kernel(ctx: Stage) -> Change:
    """A kernel with the driver of L1's vIOMMU for the next boot (Debian's cloud kernel has no AMD IOMMU driver)."""
    change, release = iommu_kernel.ensure_iommu_kernel(ctx.l1(), iommu_kind(ctx))
    ctx.state.update("l1", boot_kernel=release)
    return change


def set_kernel_args(ctx: Stage) -> Change:
    return kernel_args.ensure_kernel_args(ctx.l1(), wanted_args(ctx))


def by_hand_kernel_args(ctx: Stage, args: list[str]) -> by_hand.ByHand:
    """``set_kernel_args`` as commands at L1's prompt (the way and ``args`` found in step 1)."""
    info = ctx.state.get("l1", {}).get("distro") or distro(ctx)
    debian = by_hand.package_manager(info.get("id", ""), info.get("id_like", "")) == "apt-get"
    mkconfig = "update-grub" if debian else "grub2-mkconfig -o /boot/grub2/grub.cfg"
    hand = by_hand.kernel_args(info["bootloader"], args, mkconfig)
    release = (ctx.state.get("l1") or {}).get("boot_kernel")
    if release:  # the running kernel lacks the vIOMMU's driver (AMD in Debian's cloud kernel)
        hand = by_hand.boot_kernel(release, info["bootloader"], iommu_kernel.KCONFIG[iommu_kind(ctx)]) + hand
    return hand


def by_hand_reboot(ctx: Stage, args: list[str]) -> by_hand.ByHand:
    return by_hand.reboot(args)


def by_hand_install(ctx: Stage) -> by_hand.ByHand:
    info = ctx.state.get("l1", {}).get("distro") or distro(ctx)
    return by_hand.install_virt(by_hand.package_manager(info.get("id", ""), info.get("id_like", "")),
                                ctx.params.l1.virt_packages)


def reboot(ctx: Stage) -> Change:
    return l1_config.reboot_if_needed(ctx.l1(), wanted_args(ctx), ctx.params.l1.boot_timeout_s,
                                      log=paths(ctx.params).l1_console,
                                      kernel=(ctx.state.get("l1") or {}).get("boot_kernel"))


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


def install_virt(ctx: Stage) -> Change:
    return l1_config.ensure_packages(ctx.l1(), ctx.params.l1.virt_packages)


def libvirtd(ctx: Stage) -> Change:
    return l1_config.ensure_libvirtd(ctx.l1())


def l1_checks(ctx: Stage) -> list[checks.Check]:
    """Stage 01's checks, inside L1, through SSH."""
    from .check_host import run_checks
    return run_checks(ctx, role="l1", guest=ctx.l1())


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
