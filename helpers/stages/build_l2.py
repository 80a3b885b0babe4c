"""Stage 04: find the NVMe in L1, check it may go, measure it in L1, then
define and start L2 with it as a PCI hostdev, and check L1 gave it up."""
from __future__ import annotations

import time

from .. import by_hand
from ..bench import fio
from ..errors import RunbookError
from ..lab import sources as lab_layout  # where the lab image puts L2's files in L1
from ..facts import pci
from ..facts.pci import PciDevice
from ..guest import Agent
from ..libvirt_xml import CPU, OS, VCPU, Channel, Controller, Disk, Domain, Features, HostdevPCI, Memballoon, Serial
from ..nb import Stage
from ..ops import Change, did, domain, no_change
from ..ops import passthrough
from ..paths import paths
from ..virt import Virsh
from ..wait import wait_for


def devices(ctx: Stage) -> list[PciDevice]:
    """L1's PCI devices, with the fields libvirt's nodedev XML gives, read from sysfs and
    lspci in one round trip (no virsh process per device: seconds inside an emulated L1)."""
    return pci.pci_devices(ctx.l1())


def device_rows(devs: list[PciDevice]) -> list[tuple]:
    return [(d.name, d.bdf, f"{d.vendor} {d.product}".strip(), f"{d.pci_class:#08x}", d.driver or "-",
             d.iommu_group if d.iommu_group is not None else "-", d.numa_node if d.numa_node is not None else "-")
            for d in devs]


DEVICE_COLUMNS = ["node device", "BDF", "vendor / product", "class", "driver", "IOMMU group", "NUMA node"]


def select(ctx: Stage, devs: list[PciDevice]) -> PciDevice:
    """The NVMe the parameters mean; refused with the reason when it may not be passed through."""
    l1 = ctx.l1()
    recorded = ctx.state.get("nvme") or {}
    serials, models = {}, {}
    for d in devs:
        if d.is_nvme:
            serials[d.bdf] = pci.nvme_serial(l1, d.bdf)
            models[d.bdf] = pci.nvme_model(l1, d.bdf)
            if serials[d.bdf] is None and d.bdf == recorded.get("bdf_in_l1") and d.driver == "vfio-pci":
                serials[d.bdf] = recorded.get("serial")  # already passed through by an earlier run
                models[d.bdf] = recorded.get("model")
    dev = passthrough.select_nvme(devs, ctx.params.l2.select, serials, models)
    ready = passthrough.check_passable(l1, dev)
    ctx.state.set("nvme", {"bdf_in_l1": dev.bdf, "node_device": dev.name, "iommu_group": dev.iommu_group,
                           "serial": serials.get(dev.bdf), "model": models.get(dev.bdf),
                           "driver_before": dev.driver, "disks_in_l1": ready.disks,
                           "group_members": {k: v[0] for k, v in ready.group_members.items()}})
    return dev


def baseline(ctx: Stage, dev: PciDevice) -> list[dict] | Change:
    """fio on the NVMe in L1 before it goes to L2: the baseline for stage 05 (writes need consent)."""
    p = ctx.params
    if ctx.state.get("baseline"):
        return no_change("L1 baseline", "already measured in this run")
    if not p.l2.baseline_consent:
        return no_change("L1 baseline", "skipped: l2.baseline_consent is false (fio writes to the disk)")
    disks = (ctx.state.get("nvme") or {}).get("disks_in_l1") or []
    how = ("or set `l2.baseline_consent: false` in the parameters to go on without an L1 baseline "
           "(stage 05 then has no L2-versus-L1 table)")
    if dev.driver != "nvme":
        raise RunbookError(
            f"the L1 baseline cannot be measured: {dev.bdf} is on the {dev.driver or 'no'} driver in L1 now, "
            "not nvme (passed through by an earlier run that has no baseline recorded)",
            hint=f"resume the run that passed it through (`--from 04`), or tear down (`--stages 99`) and run again, {how}")
    if not disks:
        raise RunbookError(
            f"the L1 baseline cannot be measured: {dev.bdf} is on the nvme driver in L1 but no namespace "
            "block device of it was found (looked in its controller folder and its NVMe subsystem in sysfs)",
            hint=f"look at `nvme list` and `ls /sys/bus/pci/devices/{dev.bdf}/nvme/*/` in L1, {how}")
    b = p.bench
    rows = fio.run_profiles(ctx.l1(), "L1", f"/dev/{disks[0]}", list(b.profiles), b.repeats, b.runtime_s, b.size_mib)
    ctx.state.set("baseline", rows)
    return rows


def prepare_disk(ctx: Stage) -> Change:
    """The lab's L2 disk in L1: a qcow2 overlay on the L2 image baked into L1's image."""
    p = ctx.params
    disk = paths(p).l2_disk
    l1 = ctx.l1()
    if p.l2.image != "lab":
        if not l1.exists(disk):
            raise RunbookError(f"l2.image {disk} does not exist in L1", hint="copy your L2 image into L1 first")
        return no_change(f"L2 disk {disk}", "the image given in the parameters")
    if l1.exists(disk):
        return no_change(f"L2 disk {disk}", "exists")
    base = lab_layout.L2_ROOT_IN_L1
    l1.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, disk], check=True)
    return did(f"L2 disk {disk}", f"qcow2 overlay on {base} (qemu-img, from stage 03's qemu-utils)")


def l2_domain(ctx: Stage, dev: PciDevice) -> Domain:
    """The seed's L2 (virt-install --hostdev pci_0000_00_02_0), with the lab's direct kernel boot."""
    p = ctx.params
    accel = ctx.state["l2"]["accel"]
    ps = paths(p)
    if p.l2.image == "lab":
        os_ = OS(machine="q35", kernel=lab_layout.L2_KERNEL_IN_L1, initrd=lab_layout.L2_INITRD_IN_L1,
                 cmdline=lab_layout.L2_CMDLINE)
    else:
        os_ = OS(machine="q35", boot_dev="hd")
    return Domain(
        name=p.l2.name, type="kvm" if accel == "kvm" else "qemu", memory_mib=p.l2.memory_mib,
        vcpu=VCPU(count=p.l2.vcpus), os=os_,
        cpu=CPU(mode="host-passthrough" if accel == "kvm" else "maximum"),
        features=Features(acpi=True, apic=True),
        devices=[Disk(path=ps.l2_disk, format="qcow2", bus="virtio", cache="unsafe" if p.lab else "none"),
                 HostdevPCI.from_bdf(dev.bdf, managed=True),
                 Channel(), Serial(log_path=ps.l2_console), Memballoon(),
                 Controller(type="usb", model="none")],  # headless: no USB to probe at boot
        description="L2 of the nested NVMe runbook: the NVMe by VFIO")


def define(ctx: Stage, dom: Domain) -> Change:
    return domain.define(Virsh(ctx.l1()), ctx.params.l2.name, dom.to_xml(), replace=ctx.params.l2.replace)


def start(ctx: Stage) -> Change:
    """Start L2 unless it runs; a running L2 whose kernel crashed, or that booted and
    no longer answers, is started again."""
    from ..access import l2_crash, l2_stopped_answering
    lv = Virsh(ctx.l1())
    if lv.is_active(ctx.params.l2.name):
        panic = l2_crash(ctx.params, ctx.l1())
        why = (f"its kernel had crashed ({panic[:80]})" if panic else
               "it had stopped answering (its guest agent did not answer a ping in 10 s)"
               if l2_stopped_answering(ctx.params, ctx.l1()) else None)
        if why:
            lv.destroy(ctx.params.l2.name)
            lv.wait_stopped(ctx.params.l2.name)
            lv.start(ctx.params.l2.name)
            ctx.state.update("l2", started_at=time.time(), restarted_after=why)
            return did(f"start {ctx.params.l2.name}", f"restarted: {why}")
    ch = domain.start(lv, ctx.params.l2.name)
    if ch.changed:
        ctx.state.update("l2", started_at=time.time())
    return ch


def given_up(ctx: Stage, dev: PciDevice) -> dict:
    """In L1: driver vfio-pci, /dev/vfio/<group>, and the disk gone from `nvme list`."""
    res = passthrough.check_given_up(ctx.l1(), dev, ctx.state["nvme"].get("serial"))
    ctx.state.update("nvme", **{"after": res})
    return res


def wait(ctx: Stage) -> float:
    """Wait until L2's guest agent answers through L1's libvirt."""
    p = ctx.params
    l1 = ctx.l1()
    agent: Agent = ctx.l2()
    console = paths(p).l2_console

    def console_tail() -> str:
        """L2's console log in L1"""
        return l1.run(["tail", "-n", "30", console]).out

    t0 = time.monotonic()
    wait_for(lambda: agent.ping(timeout=5), f"{p.l2.name}: guest agent through L1", p.l2.boot_timeout_s,
             interval=1, log=console_tail, hint=f"read L2's console log in L1: {console}")
    took = round(time.monotonic() - t0, 1)
    ctx.state.update("l2", agent_wait_s=took)
    return took


def by_hand_baseline(ctx: Stage) -> by_hand.ByHand:
    """The L1 baseline as one fio command at L1's prompt (the same one ``baseline`` runs)."""
    b = ctx.params.bench
    disks = (ctx.state.get("nvme") or {}).get("disks_in_l1") or ["nvme0n1"]
    target = f"/dev/{disks[0]}"
    return by_hand.fio(target, fio.fio_command(target, list(b.profiles), b.runtime_s, b.size_mib), b.repeats,
                       "root@L1")


def by_hand_disk(ctx: Stage) -> by_hand.ByHand:
    p = ctx.params
    if p.l2.image != "lab":
        return by_hand.ByHand("root@L1", [f"# L2's image {paths(p).l2_disk}: yours, copied into L1 beforehand"])
    return by_hand.l2_disk(lab_layout.L2_ROOT_IN_L1, paths(p).l2_disk)


def by_hand_l2(ctx: Stage, dev: PciDevice) -> by_hand.ByHand:
    """``define`` and ``start`` in L1, with the ``nodedev-detach`` libvirt does for a managed hostdev."""
    name = ctx.params.l2.name
    return by_hand.l2_define_start(name, f"{name}.xml", dev.bdf, dev.iommu_group)
