"""Stage 04: find the NVMe in L1, check it may go, measure it in L1, then
define and start L2 with it as a PCI hostdev, and check L1 gave it up: ``STEPS``."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from .. import by_hand, execute
from ..bench import fio
from ..checks import passthrough
from ..errors import RunbookError
from ..lab import sources as lab_layout  # where the lab image puts L2's files in L1
from ..facts import pci
from ..facts.pci import PciDevice
from ..guest import Agent
from ..libvirt_xml import CPU, OS, VCPU, Channel, Controller, Disk, Domain, Features, HostdevPCI, Memballoon, Serial
from ..nb import Stage
from ..ops import Change, did, domain, no_change
from ..steps import Action, Plan, Step, no_change_why
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
                 *([virtio_disk(p)] if p.bench.emulated else []),
                 HostdevPCI.from_bdf(dev.bdf, managed=True),
                 Channel(), Serial(log_path=ps.l2_console), Memballoon(),
                 Controller(type="usb", model="none")],  # headless: no USB to probe at boot
        description="L2 of the nested NVMe runbook: the NVMe by VFIO")


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
             interval=0.3, log=console_tail, hint=f"read L2's console log in L1: {console}")
    took = round(time.monotonic() - t0, 1)
    ctx.state.update("l2", agent_wait_s=took)
    return took


# --- the steps ---------------------------------------------------------------------------------

def _l1_not_up(ctx: Stage) -> str | None:
    from .build_l1 import l1_not_up
    return l1_not_up(ctx)


def _l2_running(ctx: Stage) -> bool:
    return Virsh(ctx.l1()).is_active(ctx.params.l2.name)


def select_text(select) -> str:
    """l2.select for a reader: 'serial 1234', 'bdf 0000:00:10.0 and model X'."""
    return " and ".join(f"{k} {v}" for k, v in select.model_dump(exclude_none=True).items()) or "the only NVMe"


NO_DEVICE = "the NVMe is chosen in L1 (step 'Choose the NVMe': L1 runs)"


class Devices(Step):
    """L1's PCI devices, from sysfs and lspci in one round trip."""
    label = "L1's PCI devices"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l1_not_up(ctx):
            return self.unknown(why)
        return self.reads("L1's PCI devices (sysfs and lspci -nn, one command)")

    def apply(self, ctx: Stage, plan: Plan) -> list[PciDevice]:
        ctx.seen["devices"] = devices(ctx)
        return ctx.seen["devices"]

    def show(self, plan: Plan, devs) -> None:
        from .. import ui
        ui.show_table(device_rows(devs), DEVICE_COLUMNS)


@dataclass
class ChosenNVMe(PciDevice):
    """The NVMe chosen in L1, with the serial read for it (through L1, or as an earlier run recorded it)."""
    serial: str | None = None


class SelectNVMe(Step):
    """The NVMe the parameters mean; refused with the reason when it may not be passed through."""
    label = "Choose the NVMe"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if "devices" not in ctx.seen:
            return self.unknown("L1's PCI devices are read (step 'L1's PCI devices': L1 runs)")
        return self.reads(f"serial and model of each NVMe in L1, its IOMMU group and mounts "
                          f"(l2.select: {select_text(ctx.params.l2.select)})")

    def apply(self, ctx: Stage, plan: Plan) -> ChosenNVMe:
        dev = select(ctx, ctx.seen["devices"])
        ctx.seen["dev"] = ChosenNVMe(**vars(dev), serial=ctx.state["nvme"]["serial"])
        return ctx.seen["dev"]

    def show(self, plan: Plan, dev: ChosenNVMe) -> None:
        print(f"selected {dev.bdf}: {dev.vendor} {dev.product}, IOMMU group {dev.iommu_group}, serial {dev.serial}")


def show_nvme(ctx: Stage, run) -> None:
    """The chosen NVMe's BDF fields, ``lspci -k`` and its node device XML in L1 (when it was chosen)."""
    from .. import ui
    if not run.applied:
        return
    dev = run.result
    f = pci.bdf_fields(dev.bdf)
    ui.show_table([(dev.bdf, f["domain"], f["bus"], f["device"], f["function"], dev.driver, dev.iommu_group,
                    ", ".join(dev.group_members))],
                  ["BDF", "domain", "bus", "device", "function", "driver", "IOMMU group", "group members"])
    ui.show_output(f"lspci -k -s {dev.bdf}", ctx.l1().run(["lspci", "-k", "-s", dev.bdf]).out, prompt="root@L1")
    ui.show_output(f"virsh nodedev-dumpxml {dev.name}", Virsh(ctx.l1()).nodedev_xml(dev.name), prompt="root@L1")


def l1_iommu_mode(p) -> str:
    """How L1's IOMMU treats DMA of a device L1's own driver holds: iommu=pt maps it 1:1 (passthrough)."""
    return "passthrough" if p.l1.iommu_pt else "translated"


class Baseline(Step):
    """fio on the NVMe's namespace in L1 before it goes to L2: the baseline for stage 05.
    Read profiles always (reading a raw device destroys nothing); write profiles only with
    ``l2.baseline_consent``."""
    label = "Measure the L1 baseline"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if ctx.state.get("baseline"):
            return self.no_change("already measured in this run")
        dev = ctx.seen.get("dev")
        if dev is None:
            return self.unknown(NO_DEVICE)
        disks = (ctx.state.get("nvme") or {}).get("disks_in_l1") or []
        how = "or tear down (`--stages 99`) and run again (stage 05 then has no L2-versus-L1 comparison)"
        if dev.driver != "nvme":
            raise RunbookError(
                f"the L1 baseline cannot be measured: {dev.bdf} is on the {dev.driver or 'no'} driver in L1 now, "
                "not nvme (passed through by an earlier run that has no baseline recorded)",
                hint=f"resume the run that passed it through (`--from 04`), {how}")
        if not disks:
            raise RunbookError(
                f"the L1 baseline cannot be measured: {dev.bdf} is on the nvme driver in L1 but no namespace "
                "block device of it was found (looked in its controller folder and its NVMe subsystem in sysfs)",
                hint=f"look at `nvme list` and `ls /sys/bus/pci/devices/{dev.bdf}/nvme/*/` in L1, {how}")
        b = p.bench
        run, left_out = fio.split_by_consent(b.profiles, p.l2.baseline_consent)
        target = f"/dev/{disks[0]}"
        cmd = by_hand.fio(target, fio.fio_command(target, run, b.runtime_s, b.size_mib), b.repeats,
                          "root@L1").commands
        writes = "reads and WRITES to the disk" if any(map(fio.is_write, run)) else "reads only"
        what = (f"run fio on the raw namespace {target} ({dev.bdf}) in L1, its first {b.size_mib} MiB: {writes} "
                f"({', '.join(run)}, {b.repeats} times)")
        if left_out:
            what += f"; left out: {', '.join(left_out)} (they write: l2.baseline_consent is false)"
        return Plan(self.label, [Action("L1", what, cmd)], data=(target, run))

    def apply(self, ctx: Stage, plan: Plan):
        if not plan.changes:
            return [no_change("L1 baseline", no_change_why(plan))]
        b, (target, run) = ctx.params.bench, plan.data
        rows = fio.run_profiles(ctx.l1(), "L1", target, run, b.repeats, b.runtime_s, b.size_mib,
                                accel=ctx.state.get("accel"), iommu=l1_iommu_mode(ctx.params))
        ctx.state.set("baseline", rows)
        return rows

    def show(self, plan: Plan, rows) -> None:
        from .. import ui
        ui.show_fio_rows(rows)


VIRTIO_SERIAL = "runbook-virtio"   # how L2 finds the emulated disk: /sys/block/vdX/serial (20 characters at most)


def virtio_disk(p) -> Disk:
    """The emulated disk for the comparison: a raw file in L1 of the namespace's size, virtio-blk,
    no host page cache (cache='none': O_DIRECT in L1, as a production virtio disk is set up)."""
    return Disk(path=paths(p).l2_virtio, format="raw", bus="virtio", target_dev="vdb", cache="none",
                serial=VIRTIO_SERIAL)


class PrepareVirtioDisk(Step):
    """The virtio-blk disk of the passthrough-vs-emulated comparison: a sparse raw file in L1,
    of the namespace's size (``bench.emulated``)."""
    label = "Prepare the emulated disk"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if not p.bench.emulated:
            return self.no_change("bench.emulated is false: no virtio-blk disk to compare with")
        if why := _l1_not_up(ctx):
            return self.unknown(why)
        f = paths(p).l2_virtio
        if ctx.l1().exists(f):
            return self.no_change(f"{f} exists in L1")
        size = by_hand.size_arg(p.nvme.size_gib)
        cmd = ["qemu-img", "create", "-q", "-f", "raw", f, size]
        return Plan(self.label, [Action("L1", f"create {f}: a sparse raw file of {p.nvme.size_gib} GiB "
                                              f"({int(p.nvme.size_gib * 2**30):,} bytes, the namespace's size), "
                                              "L2's virtio-blk disk for the comparison", [shlex.join(cmd)])],
                    data=cmd)

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        f = paths(ctx.params).l2_virtio
        if not plan.changes:
            return [no_change(f"virtio-blk file {f}", no_change_why(plan))]
        execute.run(ctx, plan.actions[0])
        ctx.state.update("l2", virtio_file=f)
        return [did(f"virtio-blk file {f}", f"sparse raw file, {plan.data[-1]}")]


class PrepareL2Disk(Step):
    """The lab's L2 disk in L1: a qcow2 overlay on the L2 image baked into L1's image."""
    label = "Prepare L2's disk"

    def plan(self, ctx: Stage) -> Plan:
        if why := _l1_not_up(ctx):
            return self.unknown(why)
        p = ctx.params
        disk = paths(p).l2_disk
        l1 = ctx.l1()
        if p.l2.image != "lab":
            if not l1.exists(disk):
                raise RunbookError(f"l2.image {disk} does not exist in L1", hint="copy your L2 image into L1 first")
            return self.no_change(f"L2's disk {disk} is the image given in the parameters")
        if l1.exists(disk):
            return self.no_change(f"L2's disk {disk} exists in L1")
        base = lab_layout.L2_ROOT_IN_L1
        return Plan(self.label, [Action("L1", f"create {disk}: a qcow2 overlay on {base}",
                                        by_hand.l2_disk(base, disk).commands)], data=base)

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        disk = paths(ctx.params).l2_disk
        if not plan.changes:
            return [no_change(f"L2 disk {disk}", no_change_why(plan))]
        execute.run(ctx, plan.actions[0])
        return [did(f"L2 disk {disk}", f"qcow2 overlay on {plan.data} (qemu-img, from stage 03's qemu-utils)")]


class DefineL2(Step):
    """L2's definition, with the NVMe as a managed PCI hostdev, defined in L1's libvirt."""
    label = "Define L2"

    def plan(self, ctx: Stage) -> Plan:
        dev = ctx.seen.get("dev")
        if dev is None:
            return self.unknown(NO_DEVICE)
        if "accel" not in (ctx.state.get("l2") or {}):
            return self.unknown("stage 03 has chosen L2's accelerator")
        p = ctx.params
        dom = l2_domain(ctx, dev)
        dp = domain.plan_define(Virsh(ctx.l1()), p.l2.name, dom.to_xml(), replace=p.l2.replace)
        if not dp.how:
            return self.no_change(f"{p.l2.name} is defined in L1 with this definition", dp)
        cmds = by_hand.define(p.l2.name, f"{p.l2.name}.xml", prompt="root@L1", replace=dp.how == "replace",
                              running=dp.running).commands
        what = (f"replace the definition of {p.l2.name} in L1 (l2.replace is true)" if dp.how == "replace"
                else f"define {p.l2.name} in L1's libvirt, with {dev.bdf} as a managed PCI hostdev")
        content = ("differences:\n  " + "\n  ".join(dp.diff) + "\n\n" if dp.diff else "") + dp.xml
        return Plan(self.label, [Action("L1", what, cmds, content)], data=dp)

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        dp, name = plan.data, ctx.params.l2.name
        if not plan.changes:
            return [no_change(f"define {name}", dp.detail)]
        execute.run(ctx, plan.actions[0], files={f"{name}.xml": dp.xml})
        return [did(f"define {name}", dp.detail)]


class StartL2(Step):
    """Start L2 unless it runs; a running L2 whose kernel crashed, or that booted and
    no longer answers, is started again. libvirt moves the NVMe to vfio-pci at start."""
    label = "Start L2"

    def plan(self, ctx: Stage) -> Plan:
        from ..access import l2_crash, l2_stopped_answering
        if why := _l1_not_up(ctx):
            return self.unknown(why)
        p = ctx.params
        dev = ctx.seen.get("dev")
        bh = by_hand.l2_define_start(p.l2.name, f"{p.l2.name}.xml", dev.bdf if dev else "<bdf>",
                                     dev.iommu_group if dev else None).commands[1:]
        if Virsh(ctx.l1()).is_active(p.l2.name):
            panic = l2_crash(p, ctx.l1())
            why = (f"its kernel had crashed ({panic[:80]})" if panic else
                   "it had stopped answering (its guest agent did not answer a ping in 10 s)"
                   if l2_stopped_answering(p, ctx.l1()) else None)
            if not why:
                return self.no_change(f"{p.l2.name} is running in L1")
            return Plan(self.label, [Action("L1", f"restart {p.l2.name}: {why}",
                                            [by_hand.virsh("destroy", p.l2.name)] + bh)], data=why)
        return Plan(self.label, [Action("L1", f"start {p.l2.name}" + (f": {dev.bdf} moves from L1's nvme driver to "
                                                                       "vfio-pci" if dev else ""), bh)])

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        name = ctx.params.l2.name
        if not plan.changes:
            return [no_change(f"start {name}", "already running")]
        execute.run(ctx, plan.actions[0])  # a restart: destroy first
        lv = Virsh(ctx.l1())
        ctx.state.update("l2", started_at=time.time(), **({"restarted_after": plan.data} if plan.data else {}))
        return [did(f"start {name}", f"restarted: {plan.data}" if plan.data else f"started in {lv.where}")]


def _l2_not_up(ctx: Stage) -> str | None:
    if why := _l1_not_up(ctx):
        return why
    if not _l2_running(ctx):
        return f"L2 ({ctx.params.l2.name}) runs in L1 (stage 04 starts it)"
    return None


class GivenUp(Step):
    """In L1: driver vfio-pci, /dev/vfio/<group>, and the disk gone from `nvme list`."""
    label = "L1 has given the NVMe up"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        if "dev" not in ctx.seen:
            return self.unknown(NO_DEVICE)
        return self.reads("the NVMe's driver in L1, /dev/vfio/<group>, nvme list in L1")

    def apply(self, ctx: Stage, plan: Plan) -> dict:
        dev = ctx.seen["dev"]
        res = given_up(ctx, dev)
        from .. import ui
        ui.show_output(f"lspci -k -s {dev.bdf}", ctx.l1().run(["lspci", "-k", "-s", dev.bdf]).out, prompt="root@L1")
        ui.show_output("nvme list", ctx.l1().run("nvme list").out, prompt="root@L1")
        return res

    def show(self, plan: Plan, after: dict) -> None:
        from .. import ui
        ui.show_table([(after["driver"], after["vfio_node"], ui.yes_no(after["vfio_node_exists"]),
                        ui.yes_no(after["disk_gone_from_l1"]))],
                      ["driver in L1", "VFIO group node", "exists", "disk gone from L1"])


class WaitL2(Step):
    """Wait until L2's guest agent answers through L1's libvirt."""
    label = "Wait for L2"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        return self.reads(f"L2's guest agent through L1 (virsh qemu-agent-command {ctx.params.l2.name} guest-ping)")

    def apply(self, ctx: Stage, plan: Plan) -> float:
        return wait(ctx)

    def show(self, plan: Plan, seconds: float) -> None:
        print(f"L2's guest agent answered after {seconds} s")


from .host_nvme import NothingForTarget  # noqa: E402  (nvme.target l1: one line, then the run goes on)

STEPS = [NothingForTarget, Devices, SelectNVMe, Baseline, PrepareL2Disk, PrepareVirtioDisk, DefineL2, StartL2, GivenUp,
         WaitL2]
