"""``nvme.source: host``: an NVMe controller of L0 goes to L1 by VFIO. The steps the
stages add for it: find it on L0 and prove it is free (01), prove it again right before
L1 starts and see L0 give it up (02), say that 03 and 04 have nothing to do when it ends
in L1, and see L0 take it back (99). The facts and checks that describe the controller
and prove it free are ``checks.passthrough.select_host_nvme`` and ``prove_free``.

With ``nvme.source: emulated`` (the lab, the seed) each step says in one line that
there is no controller of L0 to give away, and changes nothing."""
from __future__ import annotations

from .. import by_hand
from ..errors import RunbookError
from ..facts import pci
from ..nb import Stage
from ..params import Params
from ..steps import Action, Plan, Step, no_change_why

EMULATED = "nvme.source is emulated: QEMU emulates the NVMe for L1, no controller of L0 is given away"
STATE_KEY = "host_nvme"


def _checks():
    """Issue 23a's checks (``checks.passthrough``): the one place that proves a controller free."""
    from ..checks import passthrough
    return passthrough


def selection(p: Params) -> str:
    """The selection in the parameters' words: 'serial S4EV...', 'bdf 0000:5e:00.0'."""
    return ", ".join(f"{k} {v}" for k, v in p.nvme.select.model_dump().items() if v)


def prove(ctx: Stage, when: str):
    """Select the controller on L0 and prove it free: its description and the checks;
    refused (RunbookError naming the thing) when a check fails. Recorded in the run state."""
    p = ctx.params
    pt = _checks()
    bdf = pt.select_host_nvme(ctx.l0, p.nvme.select, role="l0").bdf
    desc, found = pt.prove_free(ctx.l0, bdf, role="l0", l1_cpus=p.l1.cpuset or None)
    ctx.state.update(STATE_KEY, bdf=bdf, when=when, serial=desc.serial, model=desc.model,
                     numa_node=desc.pci.numa_node, iommu_group=desc.pci.iommu_group, driver=desc.pci.driver,
                     disks=desc.disks,
                     checks=[{"name": c.name, "observed": c.observed, "verdict": c.verdict, "fix": c.fix}
                             for c in found])
    if not ctx.check:
        try:
            pt.refuse_unless_free(found, bdf, where="L0")
        except RunbookError as e:
            raise RunbookError(f"{e.message} ({when}; nothing was defined or changed)", hint=e.hint) from None
    return desc, found


def recorded(ctx: Stage) -> dict:
    """What stage 01 found about the controller, or why it is missing."""
    r = ctx.state.get(STATE_KEY)
    if not r:
        raise RunbookError("the NVMe controller of L0 has not been chosen in this run state",
                           hint="run stage 01 first (`python -m helpers run --stages 01`)")
    return r


def serial(ctx: Stage) -> str:
    """The serial by which the drive is found again in L1 or L2: the emulated drive's, or the
    host controller's (given, or as stage 01 read it)."""
    p = ctx.params
    if not p.nvme.host:
        return p.nvme.serial
    return p.nvme.select.serial or recorded(ctx).get("serial") or ""


def numa_node(ctx: Stage) -> int | None:
    """The controller's NUMA node on L0 as stage 01 recorded it (None: unknown or no NUMA)."""
    n = (ctx.state.get(STATE_KEY) or {}).get("numa_node")
    return n if isinstance(n, int) and n >= 0 else None


def on_l0(ctx: Stage, bdf: str) -> dict:
    """Where the controller is on L0 now: its driver, and whether `nvme list` shows its serial."""
    driver = pci.driver_of(ctx.l0, bdf)
    want = serial(ctx)
    listed = any(d.get("SerialNumber", "").strip() == want for d in pci.nvme_list(ctx.l0)) if want else False
    shown = ctx.l0.run("nvme list", timeout=60).out.strip()
    return {"driver": driver or "none", "nvme_list": shown or "(no NVMe namespace)", "listed": listed}


# --- the steps ---------------------------------------------------------------------------------

class ChooseHostNVMe(Step):
    """Stage 01: the controller of L0 the parameters name, described, and proven free."""
    label = "The NVMe of L0 to give to L1"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if not p.nvme.host:
            return self.reads(EMULATED)
        return self.reads(f"on L0: the NVMe controller with {selection(p)} (sysfs, lspci, nvme id-ctrl), its "
                          "namespaces and what holds them (mounts, swap, holders, open files, the boot disk), its "
                          "IOMMU group, interrupt remapping, NUMA node and reset; a controller L0 still uses is "
                          "refused before anything changes")

    def apply(self, ctx: Stage, plan: Plan):
        if not ctx.params.nvme.host:
            print(EMULATED)
            return None
        return prove(ctx, "stage 01")

    def show(self, plan: Plan, result) -> None:
        if result is None:
            return
        from .. import ui
        desc, found = result
        ui.show_table(desc.rows(), ["the controller on L0", "value"])
        ui.show_checks(found)


class ProveFreeAgain(Step):
    """Stage 02, right before L1 starts (the moment the controller leaves L0's nvme driver):
    the same proof again, since L0 may have changed since stage 01."""
    label = "Prove the NVMe of L0 free again"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        from .. import l0
        p = ctx.params
        if not p.nvme.host:
            return self.reads(EMULATED)
        if l0.libvirt(p).is_active(p.l1.name):
            return self.reads(f"nothing: {p.l1.name} runs, so the controller is already L1's (on vfio-pci)")
        return self.reads(f"on L0, again: the controller with {selection(p)} and everything that could hold it")

    def apply(self, ctx: Stage, plan: Plan):
        from .. import l0
        p = ctx.params
        if not p.nvme.host:
            print(EMULATED)
            return None
        if l0.libvirt(p).is_active(p.l1.name):
            print(plan.reason.removeprefix("reads: "))
            return None
        return prove(ctx, "right before L1 starts")

    show = ChooseHostNVMe.show


WRITING = ("randwrite-4k", "seqwrite-128k")


def baseline_profiles(p: Params) -> tuple[list[str], list[str]]:
    """The bench profiles the L0 baseline runs, and those it leaves out: the writing ones
    need ``nvme.baseline_consent`` (they destroy what is on the drive)."""
    run = [x for x in p.bench.profiles if x not in WRITING or p.nvme.baseline_consent]
    return run, [x for x in p.bench.profiles if x not in run]


class BaselineL0(Step):
    """Stage 02, before L1 starts: fio on the physical drive on L0, the baseline the layer that
    gets it is compared with. Read-only profiles need no consent; writing ones need
    ``nvme.baseline_consent``. Once per run (stage 05 shows the figures as layer L0)."""
    label = "Measure the drive on L0 before it goes"

    def plan(self, ctx: Stage) -> Plan:
        from .. import l0
        from ..bench import fio
        p = ctx.params
        if not p.nvme.host:
            return self.no_change("nvme.source is emulated (bench.on_l0 measures a scratch file in stage 05)")
        if not p.bench.on_l0:
            return self.no_change("bench.on_l0 is false")
        if ctx.state.get("bench_l0"):
            return self.no_change("measured already in this run (a new run id measures again)")
        if l0.libvirt(p).is_active(p.l1.name):
            return self.no_change(f"{p.l1.name} runs: the drive is L1's now, measured before or not at all")
        disks = (ctx.state.get(STATE_KEY) or {}).get("disks") or []
        if not disks:
            return self.unknown("stage 01 has found the drive's namespace on L0")
        run, left = baseline_profiles(p)
        if not run:
            return self.no_change(f"every profile writes ({', '.join(left)}) and nvme.baseline_consent is false")
        target = f"/dev/{disks[0]}"
        b = p.bench
        cmd = by_hand.fio(target, fio.fio_command(target, run, b.runtime_s, b.size_mib), b.repeats, "root@L0").commands
        writes = [x for x in run if x in WRITING]
        what = (f"run fio on {target} on L0 ({', '.join(run)}, {b.repeats} times): "
                + ("it WRITES to the drive (nvme.baseline_consent)" if writes else "reads only")
                + (f"; left out without nvme.baseline_consent: {', '.join(left)}" if left else ""))
        return Plan(self.label, [Action("L0", what, cmd)], data=(target, run, left))

    def apply(self, ctx: Stage, plan: Plan):
        from ..bench import fio
        from ..ops import no_change
        if not plan.changes:
            return [no_change("L0 baseline", no_change_why(plan))]
        target, run, left = plan.data
        b = ctx.params.bench
        rows = fio.run_profiles(ctx.l0, "L0", target, run, b.repeats, b.runtime_s, b.size_mib,
                                target_kind="namespace", accel="none", iommu="none")
        if left:  # the writes not measured, in results.json's not_measured as every layer's are
            ctx.state.set("bench_skipped", (ctx.state.get("bench_skipped") or []) + [
                {"layer": "L0", "target_kind": "namespace", "profiles": left, "reason": "nvme.baseline_consent is false"}])
        ctx.state.set("bench_l0", rows)
        return rows


class GivenToL1(Step):
    """Stage 02, after L1 started: L0 gave the controller up (vfio-pci, gone from `nvme list`)."""
    label = "L0 gave the NVMe to L1"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        from .. import l0
        p = ctx.params
        if not p.nvme.host:
            return self.reads(EMULATED)
        if not l0.libvirt(p).is_active(p.l1.name):
            return self.unknown(f"L1 ({p.l1.name}) runs (step 'Start L1')")
        return self.reads("on L0: the controller's driver (it must be vfio-pci) and `nvme list` (the drive must "
                          "be gone)")

    def apply(self, ctx: Stage, plan: Plan):
        if not ctx.params.nvme.host:
            print(EMULATED)
            return None
        bdf = recorded(ctx)["bdf"]
        now = on_l0(ctx, bdf)
        ctx.state.update(STATE_KEY, given_to_l1=now)
        if ctx.check:
            return bdf, now
        if now["driver"] != "vfio-pci" or now["listed"]:
            raise RunbookError(f"L1 runs but L0 did not give up {bdf}: its driver is {now['driver']}"
                               + (" and `nvme list` on L0 still shows it" if now["listed"] else ""),
                               hint="read /var/log/libvirt/qemu/<L1>.log on L0; run stage 99, then stage 02 again")
        return bdf, now

    def show(self, plan: Plan, result) -> None:
        show_on_l0(result)


class NothingForTarget(Step):
    """Stages 03 and 04 with ``nvme.target: l1``: one line, and the run goes on."""
    label = "The NVMe's target"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        return self.reads("nvme.target")

    def apply(self, ctx: Stage, plan: Plan) -> str:
        p = ctx.params
        if p.nvme.in_l2:
            line = f"nvme.target is l2: stage {ctx.number} takes the NVMe on to L2"
        else:
            line = (f"nvme.target is l1: nothing to do in stage {ctx.number} for this target (L1 keeps the NVMe; "
                    "no vIOMMU, no L2); the run goes on")
        print(line)
        return line

    def show(self, plan: Plan, result) -> None:
        pass


def skipped_for_target(ctx: Stage) -> bool:
    """Do stage 03's and 04's steps have nothing to do (``nvme.target: l1``)?"""
    return not ctx.params.nvme.in_l2


class GivenBack(Step):
    """Stage 99, after L1 is gone: the controller is back on L0's nvme driver and in `nvme list`."""
    label = "L0 has its NVMe back"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if not p.nvme.host:
            return self.reads(EMULATED)
        bdf = p.nvme.select.bdf or (ctx.state.get(STATE_KEY) or {}).get("bdf") or "<bdf>"
        return self.reads(f"on L0: {bdf}'s driver (nvme again once libvirt reattached it: "
                          f"`{by_hand.virsh('nodedev-reattach', pci_nodedev(bdf))}` by hand) and `nvme list`")

    def apply(self, ctx: Stage, plan: Plan):
        from .. import l0
        p = ctx.params
        if not p.nvme.host:
            print(EMULATED)
            return None
        bdf = p.nvme.select.bdf or (ctx.state.get(STATE_KEY) or {}).get("bdf")
        if not bdf:  # a teardown with a run state of its own: nothing of L0 was given away in it
            print("no controller of L0 was given to L1 in this run state (stage 01 never chose one): nothing to "
                  "give back")
            return None
        now = on_l0(ctx, bdf)
        ctx.state.update(STATE_KEY, given_back=now)
        if ctx.check:
            return bdf, now
        if l0.libvirt(p).is_active(p.l1.name):
            raise RunbookError(f"{p.l1.name} still runs, so {bdf} is still L1's",
                               hint="set teardown.l1: true and run stage 99 again")
        if now["driver"] != "nvme" or not now["listed"]:
            raise RunbookError(f"{bdf} is not back on L0's nvme driver: driver {now['driver']}"
                               + ("" if now["listed"] else ", and `nvme list` does not show it"),
                               hint=f"on L0: {by_hand.virsh('nodedev-reattach', pci_nodedev(bdf))}, then "
                                    f"`echo {bdf} > /sys/bus/pci/drivers_probe` if no driver took it")
        return bdf, now

    def show(self, plan: Plan, result) -> None:
        show_on_l0(result)


pci_nodedev = by_hand.node_device  # 0000:5e:00.0 -> pci_0000_5e_00_0


def show_on_l0(result) -> None:
    """The controller as L0 sees it now: `nvme list`, and its driver in a table."""
    if result is None:
        return
    from .. import ui
    bdf, now = result
    ui.show_output("nvme list", now["nvme_list"], prompt="root@L0")
    ui.show_table([(bdf, now["driver"], "yes" if now["listed"] else "no")], ["BDF on L0", "driver", "in L0's `nvme list`"])


def by_hand_commands(p: Params, bdf: str, xml_file: str) -> list[str]:
    """What an engineer types on L0 for a host NVMe, the runbook's managed hostdev spelled out:
    detach from nvme to vfio-pci, give it to L1 (in the definition, or hot-plugged), give it back."""
    uri = p.host.libvirt_uri
    return [f"nvme list; lspci -Dnnk -s {bdf}   # the drive and its driver (nvme) before",
            by_hand.virsh("nodedev-detach", pci_nodedev(bdf), uri=uri) + "   # nvme -> vfio-pci (managed='yes' does it at start)",
            by_hand.virsh("attach-device", p.l1.name, xml_file, "--config", uri=uri)
            + "   # or the <hostdev> in L1's XML, as the runbook defines it",
            by_hand.virsh("nodedev-reattach", pci_nodedev(bdf), uri=uri) + "   # back to nvme after L1 stops (managed='yes' does it)"]
