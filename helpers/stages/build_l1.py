"""Stage 02: the lab's images, L1's definition (domain XML and the virt-install
equivalent), its files, define, start, wait until it answers, look inside: ``STEPS``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import by_hand
from .. import l0
from ..access import lab_credentials, l1_ssh_spec
from ..errors import RunbookError
from ..facts import cpu as cpu_facts
from ..facts import iommu as iommu_facts
from ..libvirt_xml import Domain, supports_native_amd_iommu, supports_native_nvme, virt_install_command
from ..nb import Stage
from ..numa import choose_cpuset
from ..ops import Change, did, domain, no_change
from ..ops import l1 as l1_ops
from ..ops import l1_files
from ..steps import Action, Plan as StepPlan, Step
from ..paths import nvme_bdf_in_l1, paths
from ..guest import Local


def lab_images(ctx: Stage):
    """The lab images of the current recipe in L0's cache (read only; never built here),
    or None when they are not built yet. Nothing about them goes into the run state:
    each step finds them again from the recipe."""
    from ..lab import images
    from ..lab.sources import recipe_hash
    return images.load_images(ctx.l0, images.CACHE_DIR, recipe_hash(ctx.l0))


IMAGES_UNKNOWN = "the lab images are built (step 'Lab images')"


class LabImages(Step):
    """The lab's L1 and L2 images, built once and cached (a real host: its own image, checked)."""
    label = "Lab images"

    def plan(self, ctx: Stage) -> StepPlan:
        p = ctx.params
        if p.l1.image != "lab":
            if not ctx.l0.exists(str(Path(p.l1.image).expanduser())):
                raise RunbookError(f"l1.image {p.l1.image} does not exist on L0",
                                   hint="give the path of your L1 base image (the seed used a CentOS 7 qcow2)")
            return self.no_change(f"l1.image {p.l1.image} is yours (nothing to build)")
        from ..lab.images import CACHE_DIR
        from ..lab.sources import recipe_hash
        imgs = lab_images(ctx)
        if imgs:
            return self.no_change(f"images up to date (recipe {imgs.recipe}) in {CACHE_DIR / imgs.recipe}", imgs)
        recipe = recipe_hash(ctx.l0)
        return StepPlan(self.label, [Action("L0", f"build the lab images (recipe {recipe}) into {CACHE_DIR / recipe} "
                                                  "with mmdebstrap (about two minutes)",
                                            ["python -m helpers.lab.images   # make images"])])

    def apply(self, ctx: Stage, plan: StepPlan):
        if ctx.params.l1.image != "lab":
            return [no_change("lab images", "l1.image is given")]
        imgs = plan.data
        if plan.changes:
            from ..lab.images import LabImageError, ensure_images
            try:
                imgs = ensure_images(ctx.l0, progress=print)
            except LabImageError as e:
                raise RunbookError(f"building the lab images failed: {e}",
                                   hint="read /var/cache/nested-nvme/images/build.log on L0") from None
        return [did("lab images", f"built (recipe {imgs.recipe})") if plan.changes else
                no_change("lab images", f"up to date (recipe {imgs.recipe})")]


@dataclass
class Plan:
    """L1's definition."""
    domain: Domain
    xml: str
    virt_install: str
    accel: str
    cpuset: str | None
    cpuset_reason: str
    native_nvme: bool
    iommu: str = "intel"
    iommu_reason: str = ""


def definition(ctx: Stage) -> Plan:
    """L1's definition from the parameters, the accelerator stage 01 chose and the host's NUMA layout."""
    p = ctx.params
    accel = ctx.state["accel"]
    if p.l1.cpuset:
        cpuset, why = p.l1.cpuset, "given in the parameters"
    else:
        topo = cpu_facts.topology(ctx.l0)
        cpuset, why = choose_cpuset(topo.nodes, topo.siblings, p.l1.vcpus, p.l1.threads)
    lv = l0.libvirt(p)
    version = lv.lib_version()
    native = supports_native_nvme(version)
    kind, kind_why = iommu_kind(ctx)
    ps = paths(p)
    dom = l1_ops.l1_domain(p, accel, cpuset, ps.l1_disk, ps.l1_console, native,
                           iommu=kind, native_amd_iommu=supports_native_amd_iommu(version))
    return Plan(dom, dom.to_xml(), virt_install_command(dom), accel, cpuset, why, native, kind, kind_why)


def iommu_kind(ctx: Stage) -> tuple[str, str]:
    """L1's vIOMMU, intel or amd, and why: decided here once (``l1.iommu``, or with
    ``auto`` from L0's ACPI tables and CPU vendor); stage 03 follows what ``define`` records."""
    tables = [t for t in iommu_facts.TABLES if ctx.l0.exists(f"/sys/firmware/acpi/tables/{t}")]
    vendor = (ctx.state.get("environment", {}).get("L0") or {}).get("cpu_vendor")
    from ..checks.viommu import decide_iommu_kind
    return decide_iommu_kind(ctx.params, tables, vendor)


class Definition(Step):
    """L1's definition and the virt-install command the seed would type (reads only)."""
    label = "L1's definition"
    reads_only = True

    def plan(self, ctx: Stage) -> StepPlan:
        if "accel" not in ctx.state:
            return self.unknown("stage 01 has chosen the accelerator")
        return self.reads("the accelerator stage 01 chose, the host's NUMA layout, libvirt's version")

    def apply(self, ctx: Stage, plan: StepPlan) -> Plan:
        return definition(ctx)

    def show(self, d: Plan) -> None:
        from .. import ui
        print(f"accelerator: {d.accel}; vCPUs pinned to {d.cpuset}: {d.cpuset_reason}")
        print(f"vIOMMU: {d.iommu} ({d.iommu_reason})")
        print(f"emulated NVMe: {'native <disk bus=nvme>' if d.native_nvme else '<qemu:commandline> -drive/-device nvme (this libvirt predates 11.5)'}")
        ui.show_output("virt-install ... --print-xml", d.virt_install, prompt="root@L0")
        ui.show_output(f"virsh dumpxml {d.domain.name}", d.xml, prompt="root@L0")


class PrepareFiles(Step):
    """The workdir, the NVMe backing file, L1's disk (lab: an overlay) and the pinned host key."""
    label = "Prepare files"

    def plan(self, ctx: Stage) -> StepPlan:
        p, ps = ctx.params, paths(ctx.params)
        lab, m = p.l1.image == "lab", ctx.l0
        imgs = lab_images(ctx) if lab else None
        if lab and imgs is None:
            return self.unknown(IMAGES_UNKNOWN)
        l1_ops.check_space(m, ps.workdir, Path(p.nvme.backing_file), p.nvme.size_gib, lab)
        ops = [l1_files.plan_workdir(m, ps.workdir),
               l1_files.plan_backing_file(m, Path(p.nvme.backing_file), p.nvme.size_gib)]
        if lab:
            running = l0.libvirt(p).is_active(p.l1.name)
            spec = l1_ssh_spec(p)
            ops += [l1_files.plan_overlay(m, imgs.l1_disk, ps.l1_disk, running),
                    l1_files.plan_known_hosts(m, ps.known_hosts, spec["host"], spec["port"], imgs.ssh_host_pubkey),
                    l1_files.plan_key(m, imgs.ssh_key, ps.lab_key)]
            if l0.remote(p):  # the ssh client into L1 runs here and jumps through L0: its copies on this machine
                key, known = lab_credentials(p)
                ops += [l1_files.plan_fetch_key(m, imgs.ssh_key, key),
                        l1_files.plan_known_hosts(Local(), known, spec["host"], spec["port"], imgs.ssh_host_pubkey,
                                                  where="this machine")]
        actions = [o.action for o in ops if o.action]
        if not actions:
            return self.no_change("; ".join(f"{o.what}: {o.detail}" for o in ops), ops)
        return StepPlan(self.label, actions, data=ops)

    def apply(self, ctx: Stage, plan: StepPlan) -> list[Change]:
        return [l1_files.apply_op(op, ctx.state) for op in plan.data]


def _record_l1(ctx: Stage, d: Plan) -> None:
    """What was decided here; the way in (SSH, keys, console log) follows from the parameters."""
    ctx.state.update("l1", accel=d.accel, cpuset=d.cpuset, native_nvme=d.native_nvme,
                     iommu_kind=d.iommu, iommu_reason=d.iommu_reason)


class DefineL1(Step):
    """Define L1 from its definition (idempotent; a different one replaced only with l1.replace)."""
    label = "Define L1"

    def plan(self, ctx: Stage) -> StepPlan:
        if "accel" not in ctx.state:
            return self.unknown("stage 01 has chosen the accelerator")
        p = ctx.params
        d = definition(ctx)
        lv = l0.libvirt(p)
        dp = domain.plan_define(lv, p.l1.name, d.xml, replace=p.l1.replace)
        if not dp.how:
            return self.no_change(f"{p.l1.name} is defined with this definition", (d, dp))
        cmds = by_hand.define(p.l1.name, f"{p.l1.name}.xml", p.host.libvirt_uri).commands
        if dp.how == "replace":
            cmds = [by_hand.virsh("destroy", p.l1.name, uri=p.host.libvirt_uri) + "   # if it runs",
                    by_hand.virsh("undefine", p.l1.name, uri=p.host.libvirt_uri)] + cmds
            what = f"replace the definition of {p.l1.name} in {p.host.libvirt_uri} (l1.replace is true)"
            content = "differences:\n  " + "\n  ".join(dp.diff) + "\n\n" + d.xml
        else:
            what, content = f"define {p.l1.name} in {p.host.libvirt_uri}", d.xml
        return StepPlan(self.label, [Action("L0", what, cmds, content)], data=(d, dp))

    def apply(self, ctx: Stage, plan: StepPlan) -> list[Change]:
        d, dp = plan.data
        change = domain.apply_define(l0.libvirt(ctx.params), dp)
        _record_l1(ctx, d)
        return [change]


class StartL1(Step):
    label = "Start L1"

    def plan(self, ctx: Stage) -> StepPlan:
        p = ctx.params
        if l0.libvirt(p).is_active(p.l1.name):
            return self.no_change(f"{p.l1.name} is running")
        return StepPlan(self.label, [Action("L0", f"start {p.l1.name}",
                                            by_hand.start(p.l1.name, p.host.libvirt_uri).commands)])

    def apply(self, ctx: Stage, plan: StepPlan) -> list[Change]:
        name = ctx.params.l1.name
        if not plan.changes:
            return [no_change(f"start {name}", "already running")]
        lv = l0.libvirt(ctx.params)
        lv.start(name)
        ctx.state.update("l1", started_at=time.time())
        ctx.l1().close()  # a connection shared with an earlier L1 on the same port is stale
        return [did(f"start {name}", f"started in {lv.where}")]


def l1_not_up(ctx: Stage) -> str | None:
    """Why a step in L1 cannot be planned yet (L1 not running), or None. A run of stages
    03 to 05 (L1 should be up) names what happened to L1 instead, with the way back
    (``access.check_l1``: destroyed, shut off, crashed)."""
    p = ctx.params
    if l0.libvirt(p).is_active(p.l1.name):
        return None
    if not ctx.check and ctx.number in ("03", "04", "05"):
        ctx.l1()  # raises: "L1 (...) is not running: shut off (destroyed); it was stopped outside the runbook"
    return f"L1 ({p.l1.name}) runs (stage 02 starts it)"


class WaitL1(Step):
    """Wait for L1's guest agent, then its SSH; record the times."""
    label = "Wait for L1"
    reads_only = True

    def plan(self, ctx: Stage) -> StepPlan:
        if why := l1_not_up(ctx):
            return self.unknown(why)
        p = ctx.params
        return self.reads(f"L1's guest agent (virsh qemu-agent-command {p.l1.name} guest-ping), then SSH "
                          f"(up to {p.l1.boot_timeout_s} s)")

    def apply(self, ctx: Stage, plan: StepPlan) -> dict:
        return wait(ctx)

    def show(self, times: dict) -> None:
        from .. import ui
        ui.show_table([("L1's guest agent answered", f"{times['agent_wait_s']} s"),
                       ("then L1's sshd let us in", f"{times['ssh_wait_s']} s"),
                       ("since `virsh start`", "not recorded" if times.get("since_start_s") is None
                        else f"{times['since_start_s']} s")]
                      + ([("sshd", times["sshd"])] if times.get("sshd") else []), ["boot of L1", "time"])


class InspectL1(Step):
    """What the seed looks at in a fresh L1: the NVMe on the PCI bus, DMAR in the kernel log."""
    label = "Look inside L1"
    reads_only = True

    def plan(self, ctx: Stage) -> StepPlan:
        if why := l1_not_up(ctx):
            return self.unknown(why)
        return self.reads("lspci, dmesg and /proc/cmdline in L1")

    def apply(self, ctx: Stage, plan: StepPlan):
        return inspect(ctx)

    def show(self, result) -> None:
        from .. import ui
        shown, before = result
        for cmd, out in shown.items():
            ui.show_output(cmd, out, prompt="root@L1")
        ui.show_table(before, ["what the line proves", "in L1's kernel log now"])


plan = definition  # the name earlier code used

STEPS = [LabImages, Definition, PrepareFiles, DefineL1, StartL1, WaitL1, InspectL1]


def wait(ctx: Stage) -> dict:
    """Wait for L1's guest agent, then its SSH; record the times."""
    p = ctx.params
    lv = l0.libvirt(p)
    log = l0.Log(ctx.l0, paths(p).l1_console)
    t_agent = l1_ops.wait_for_agent(lv, p.l1.name, p.l1.boot_timeout_s, log)
    t_ssh, repaired = l1_ops.wait_for_ssh(ctx.l1(), p.l1.boot_timeout_s, log, agent=l1_ops.l1_agent(lv, p.l1.name))
    started = ctx.state.get("l1", {}).get("started_at")
    since = round(time.time() - started, 1) if started else None
    times = {"agent_wait_s": round(t_agent, 1), "ssh_wait_s": round(t_ssh, 1), "since_start_s": since}
    if repaired:
        times["sshd"] = repaired
    ctx.state.update("l1", boot=times)
    return times


def inspect(ctx: Stage) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """What the seed looks at in a fresh L1: the NVMe on the PCI bus, DMAR in the kernel log
    (trimmed, keeping every line that tells the IOMMU's state), the command line; and those
    lines as a table, recorded for stage 03 to compare after ``intel_iommu=on``."""
    l1 = ctx.l1()
    lspci = "lspci -nn | grep -i 'non-volatile'"
    out = {c: l1.run(c, timeout=60).out for c in (lspci, "dmesg", "cat /proc/cmdline")}
    lines = iommu_facts.log_lines(out["dmesg"])
    rows = iommu_facts.markers(lines, (ctx.state.get("l1") or {}).get("iommu_kind", "intel"))
    if any(a in out["cat /proc/cmdline"].split() for a in ("intel_iommu=on", "amd_iommu=on")):
        print("L1 already boots with the IOMMU argument (stage 03 ran before): the lines below are the state after it; "
              "stage 03 compares with the state recorded before")
    else:
        ctx.state.update("l1", iommu_before=dict(rows))
    shown = {lspci: out[lspci], "dmesg | grep -E 'DMAR|IOMMU|iommu'": "\n".join(iommu_facts.excerpt(lines, devices=[nvme_bdf_in_l1(ctx.params)])),
             "cat /proc/cmdline": out["cat /proc/cmdline"]}
    return shown, rows
