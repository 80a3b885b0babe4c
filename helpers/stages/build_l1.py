"""Stage 02: the lab's images, L1's definition (domain XML and the virt-install
equivalent), its files, define, start, wait until it answers, look inside: ``STEPS``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import by_hand, execute, record
from .. import l0
from ..access import lab_credentials, l1_ssh_spec
from ..errors import RunbookError
from ..facts import cpu as cpu_facts
from ..facts import iommu as iommu_facts
from ..libvirt_xml import IOMMU, Domain, HostdevOnRootPort, supports_native_amd_iommu, supports_native_nvme, virt_install_command
from ..nb import Stage
from . import host_nvme
from ..numa import choose_cpuset
from ..ops import Change, did, domain, no_change
from ..ops import l1 as l1_ops
from ..ops import l1_files
from ..checks.host import HOST_DEVICE_BEHIND_AMD_FIX, host_device_behind_amd
from ..steps import Action, Plan, Step
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
IMAGES_COMMAND = "python -m helpers.lab.images"


def lab_l2_files(ctx: Stage) -> str:
    """``l1.image: lab-l2``: the lab's L2 image (root, kernel, initrd) that the lab's L1 carries
    once the Intel lab ran through stage 03; refused in one line when they are not there."""
    from ..lab import sources as lab_layout
    files = [lab_layout.L2_ROOT_IN_L1, lab_layout.L2_KERNEL_IN_L1, lab_layout.L2_INITRD_IN_L1]
    missing = [f for f in files if not ctx.l0.exists(f)]
    if missing:
        raise RunbookError(f"L0 is not the Intel lab's L1 up through stage 03: {', '.join(missing)} missing there",
                           hint="bring the lab up first: python -m helpers run --params parameters/lab.yaml "
                                "--stages 01,02,03 (its L1 name, port and workdir as host.ssh here says)")
    return f"the lab's L2 image is in L0 (the lab's L1): {', '.join(files)}"


class LabImages(Step):
    """The lab's L1 and L2 images, built once and cached (a real host: its own image, checked)."""
    label = "Lab images"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if p.l1.lab_l2:
            return self.no_change(lab_l2_files(ctx))
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
        return Plan(self.label, [Action("L0", f"build the lab images (recipe {recipe}) into {CACHE_DIR / recipe} "
                                                  "with mmdebstrap (about two minutes)",
                                            [f"{IMAGES_COMMAND}   # make images"])])

    def apply(self, ctx: Stage, plan: Plan):
        if ctx.params.l1.image != "lab":
            return [no_change("lab images", "l1.image is given" if not ctx.params.l1.lab_l2 else
                              "the lab's L2 image is in L0 (the lab's L1)")]
        imgs = plan.data
        if plan.changes:
            from ..lab.images import LabImageError, ensure_images
            try:
                with record.part_of(IMAGES_COMMAND):  # what the plan shows, done in this process
                    imgs = ensure_images(ctx.l0, progress=print)
            except LabImageError as e:
                raise RunbookError(f"building the lab images failed: {e}",
                                   hint="read /var/cache/nested-nvme/images/build.log on L0") from None
        return [did("lab images", f"built (recipe {imgs.recipe})") if plan.changes else
                no_change("lab images", f"up to date (recipe {imgs.recipe})")]


@dataclass
class L1Definition:
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
    amd: object = None          # checks.viommu.AmdIommu: amd-iommu's options for L0's QEMU
    nvme_reason: str = ""
    host_nvme_bdf: str | None = None   # nvme.source host: L0's controller, a hostdev of L1
    memlock_mib: int = 0               # what libvirt locks for VFIO (0: no hostdev)
    viommu: bool = True                # L1 has a vIOMMU (not with a host NVMe that ends in L1)
    hostdev_xml: str = ""              # the root port and <hostdev>, as `virsh attach-device` takes it
    by_hand: tuple[str, ...] = ()      # nodedev-detach, attach-device, nodedev-reattach


def definition(ctx: Stage) -> L1Definition:
    """L1's definition from the parameters, the accelerator stage 01 chose and the host's NUMA layout."""
    p = ctx.params
    accel = ctx.state["accel"]
    bdf = host_nvme.recorded(ctx)["bdf"] if p.nvme.host else None
    if p.l1.cpuset:
        cpuset, why = p.l1.cpuset, "given in the parameters"
    else:
        topo = cpu_facts.topology(ctx.l0)
        node = host_nvme.numa_node(ctx) if bdf else None
        cpuset, why = (choose_cpuset({node: topo.nodes[node]}, topo.siblings, p.l1.vcpus, p.l1.threads)
                       if node in topo.nodes else (None, ""))
        if cpuset:
            why = f"{why}: NUMA node {node}, the node of the NVMe {bdf} (l1.cpuset is empty)"
        else:
            cpuset, why = choose_cpuset(topo.nodes, topo.siblings, p.l1.vcpus, p.l1.threads)
    lv = l0.libvirt(p)
    version = lv.lib_version()
    native = supports_native_nvme(version)
    nvme_why = ("libvirt >= 11.5: native <disk bus='nvme'>" if native else
                "<qemu:commandline> -drive/-device nvme (this libvirt predates 11.5)")
    kind, kind_why = iommu_kind(ctx)
    amd = amd_iommu(ctx) if kind == "amd" and not (p.nvme.host and not p.nvme.in_l2) else None
    if amd and amd.refused:
        raise RunbookError(f"l1.iommu: amd cannot work on L0's QEMU: {amd.refused}", hint=amd.fix)
    if amd and p.nvme.host and (no := host_device_behind_amd(amd)):
        raise RunbookError(f"l1.iommu: amd with nvme.source host and target l2: L0's QEMU "
                           f"{amd.qemu_version or '(version unknown)'}: {no}", hint=HOST_DEVICE_BEHIND_AMD_FIX)
    if native and amd and amd.nvme_on_bus0:
        native = False
        nvme_why = ("<qemu:commandline> -device nvme on pcie.0 (bus 0): before QEMU 10.2 amd-iommu gives a device "
                    "behind a root port (libvirt's <disk bus='nvme'>) the wrong device ID")
    ps = paths(p)
    dom = l1_ops.l1_domain(p, accel, cpuset, ps.l1_disk, ps.l1_console, native,
                           iommu=kind, native_amd_iommu=supports_native_amd_iommu(version), amd=amd,
                           host_nvme_bdf=bdf)
    try:
        xml = dom.to_xml()
    except ValueError as e:  # Domain.problems(): e.g. a hostdev behind a vIOMMU without caching mode
        raise RunbookError(f"L1's definition would not start: {e}", hint="fix l1.iommu or nvme.target") from None
    memlock = l1_ops.memlock_mib(p.l1.memory_mib, 1 if bdf else 0, viommu=bool(bdf) and p.nvme.in_l2)
    viommu = any(isinstance(x, IOMMU) for x in dom.devices) or bool(dom.qemu_args and any(
        a.startswith("amd-iommu") for a in dom.qemu_args.args))
    hostdev = next((x for x in dom.devices if isinstance(x, HostdevOnRootPort)), None)
    return L1Definition(dom, xml, virt_install_command(dom), accel, cpuset, why, native, kind, kind_why,
                        amd=amd, nvme_reason=nvme_why, host_nvme_bdf=bdf, memlock_mib=memlock,
                        viommu=viommu, hostdev_xml=hostdev.hostdev.to_xml() if hostdev else "",
                        by_hand=tuple(host_nvme.by_hand_commands(p, bdf, "hostdev.xml")) if bdf else ())


def amd_iommu(ctx: Stage):
    """amd-iommu's options for the QEMU on L0 (``checks.viommu.amd_iommu_options``): its
    version as stage 01 recorded it (libvirt's hypervisor, else the binary) and the
    properties ``-device amd-iommu,help`` lists, read through L0's command interface."""
    from ..checks.viommu import amd_iommu_options
    from ..facts import kvm as kvm_facts
    from ..facts import libvirt as libvirt_facts
    binary = kvm_facts.find_qemu(ctx.l0) or "qemu-system-x86_64"
    version = (ctx.state.get("environment", {}).get("L0") or {}).get("qemu")
    if not version:
        version = libvirt_facts.qemu(ctx.l0, binary).version
    return amd_iommu_options(version, libvirt_facts.device_properties(ctx.l0, binary, "amd-iommu"))


def host_nvme_unknown(ctx: Stage) -> str | None:
    """With nvme.source host, why L1's definition cannot be known yet (stage 01 has not chosen the controller)."""
    if ctx.params.nvme.host and not (ctx.state.get(host_nvme.STATE_KEY) or {}).get("bdf"):
        return "stage 01 has chosen the NVMe controller of L0 (step 'The NVMe of L0 to give to L1')"
    return None


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

    def plan(self, ctx: Stage) -> Plan:
        if "accel" not in ctx.state:
            return self.unknown("stage 01 has chosen the accelerator")
        if why := host_nvme_unknown(ctx):
            return self.unknown(why)
        return self.reads("the accelerator stage 01 chose, the host's NUMA layout, libvirt's version"
                          + (", the NVMe controller of L0 stage 01 chose" if ctx.params.nvme.host else ""))

    def apply(self, ctx: Stage, plan: Plan) -> L1Definition:
        return definition(ctx)

    def show(self, plan: Plan, d: L1Definition) -> None:
        from .. import ui
        print(f"accelerator: {d.accel}; vCPUs pinned to {d.cpuset}: {d.cpuset_reason}")
        print(f"vIOMMU: {d.iommu} ({d.iommu_reason})" if d.viommu else
              "vIOMMU: none (nvme.target is l1: the NVMe ends in L1, nothing goes on to L2)")
        if d.amd:
            print(f"amd-iommu for QEMU {d.amd.qemu_version or '(version unknown)'} on L0: {d.amd.device}")
            for why in d.amd.why:
                print(f"  - {why}")
        if d.host_nvme_bdf:
            print(f"NVMe: L0's controller {d.host_nvme_bdf}, a managed <hostdev> on a PCIe root port of its own; "
                  f"libvirt locks {d.memlock_mib} MiB for VFIO (L1's {d.domain.memory_mib} MiB + 1 GiB, "
                  "libvirt's rule for a hostdev)")
            if d.viommu:
                print("vIOMMU with caching mode on: QEMU refuses a device assigned from L0 behind intel-iommu "
                      "without it (checked in the definition)")
            ui.show_output("cat hostdev.xml", d.hostdev_xml, prompt="root@L0")
            ui.show_output("# by hand, what managed='yes' does", "\n".join(d.by_hand), prompt="root@L0")
        else:
            print(f"emulated NVMe: {d.nvme_reason}")
        ui.show_output("virt-install ... --print-xml", d.virt_install, prompt="root@L0")
        ui.show_output(f"virsh dumpxml {d.domain.name}", d.xml, prompt="root@L0")


class PrepareFiles(Step):
    """The workdir, the NVMe backing file, L1's disk (lab: an overlay) and the pinned host key."""
    label = "Prepare files"

    def plan(self, ctx: Stage) -> Plan:
        p, ps = ctx.params, paths(ctx.params)
        lab, m = p.l1.image == "lab", ctx.l0
        imgs = lab_images(ctx) if lab else None
        if lab and imgs is None:
            return self.unknown(IMAGES_UNKNOWN)
        if p.l1.lab_l2:  # the lab's L2 image as L1: an overlay on its root in L0's workdir; no SSH keys
            from ..lab import sources as lab_layout
            l1_ops.check_space(m, ps.workdir, None, 0, True)
            running = l0.libvirt(p).is_active(p.l1.name)
            ops = [l1_files.plan_workdir(m, ps.workdir),
                   l1_files.plan_overlay(m, Path(lab_layout.L2_ROOT_IN_L1), ps.l1_disk, running)]
            actions = [o.action for o in ops if o.action]
            if not actions:
                return self.no_change("; ".join(f"{o.what}: {o.detail}" for o in ops), ops)
            return Plan(self.label, actions, data=ops)
        if p.nvme.host:  # no backing file: the NVMe is L0's own controller
            l1_ops.check_space(m, ps.workdir, None, 0, lab)
            ops = [l1_files.plan_workdir(m, ps.workdir)]
        else:
            l1_ops.check_space(m, ps.workdir, Path(p.nvme.backing_file), p.nvme.size_gib, lab)
            ops = [l1_files.plan_workdir(m, ps.workdir),
                   l1_files.plan_backing_file(m, Path(p.nvme.backing_file), p.nvme.size_gib, ps.workdir)]
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
        return Plan(self.label, actions, data=ops)

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        return [l1_files.apply_op(op, ctx.state) for op in plan.data]


INTEL_OPTIONS = {"device": "<iommu model='intel'> (QEMU: intel-iommu,intremap=on,caching-mode=on,device-iotlb=on)",
                 "options": "intremap=on,caching_mode=on,iotlb=on",
                 "why": ["the seed's vIOMMU; caching mode lets L1 hand devices to VFIO"]}


def _record_l1(ctx: Stage, d: L1Definition) -> None:
    """What was decided here; the way in (SSH, keys, console log) follows from the parameters."""
    ctx.state.update("l1", accel=d.accel, cpuset=d.cpuset, native_nvme=d.native_nvme,
                     iommu_kind=d.iommu, iommu_reason=d.iommu_reason,
                     iommu_options=d.amd.record() if d.amd else INTEL_OPTIONS)


class DefineL1(Step):
    """Define L1 from its definition (idempotent; a different one replaced only with l1.replace)."""
    label = "Define L1"

    def plan(self, ctx: Stage) -> Plan:
        if "accel" not in ctx.state:
            return self.unknown("stage 01 has chosen the accelerator")
        if why := host_nvme_unknown(ctx):
            return self.unknown(why)
        p = ctx.params
        d = definition(ctx)
        lv = l0.libvirt(p)
        dp = domain.plan_define(lv, p.l1.name, d.xml, replace=p.l1.replace)
        if not dp.how:
            return self.no_change(f"{p.l1.name} is defined with this definition", (d, dp))
        cmds = by_hand.define(p.l1.name, f"{p.l1.name}.xml", p.host.libvirt_uri,
                              replace=dp.how == "replace", running=dp.running).commands
        if dp.how == "replace":
            what = f"replace the definition of {p.l1.name} in {p.host.libvirt_uri} (l1.replace is true)"
            content = "differences:\n  " + "\n  ".join(dp.diff) + "\n\n" + d.xml
        else:
            what, content = f"define {p.l1.name} in {p.host.libvirt_uri}", d.xml
        return Plan(self.label, [Action("L0", what, cmds, content)], data=(d, dp))

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        d, dp = plan.data
        name = ctx.params.l1.name
        if plan.changes:
            execute.run(ctx, plan.actions[0], files={f"{name}.xml": d.xml})
        _record_l1(ctx, d)
        return [did(f"define {name}", dp.detail) if plan.changes else no_change(f"define {name}", dp.detail)]


class StartL1(Step):
    label = "Start L1"

    def plan(self, ctx: Stage) -> Plan:
        p = ctx.params
        if l0.libvirt(p).is_active(p.l1.name):
            return self.no_change(f"{p.l1.name} is running")
        bdf = (ctx.state.get(host_nvme.STATE_KEY) or {}).get("bdf") if p.nvme.host else None
        what = f"start {p.l1.name}" + (f": libvirt moves L0's NVMe {bdf} from the nvme driver to vfio-pci "
                                       "(managed hostdev)" if bdf else "")
        return Plan(self.label, [Action("L0", what, by_hand.start(p.l1.name, p.host.libvirt_uri).commands)])

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        name = ctx.params.l1.name
        if not plan.changes:
            return [no_change(f"start {name}", "already running")]
        execute.run(ctx, plan.actions[0])
        ctx.state.update("l1", started_at=time.time())
        if not ctx.params.l1.lab_l2:  # (lab-l2: its guest agent, no connection kept)
            ctx.l1().close()  # a connection shared with an earlier L1 on the same port is stale
        return [did(f"start {name}", f"started in {l0.libvirt(ctx.params).where}")]


def l1_not_up(ctx: Stage) -> str | None:
    """Why a step in L1 cannot be planned yet (L1 not running), or None. A run of stages
    03 to 05 (L1 should be up) names what happened to L1 instead, with the way back
    (``access.check_l1``: destroyed, shut off, crashed)."""
    p = ctx.params
    if l0.libvirt(p).is_active(p.l1.name):
        define = ctx.planned(DefineL1)  # (stage 02) a domain of that name, not yet of this definition
        if define is not None and (define.unknown or ctx.pending(DefineL1)):
            return f"L1 ({p.l1.name}) runs with the definition of step 'Define L1'"
        return None
    if not ctx.check and ctx.number in ("03", "04", "05"):
        ctx.l1()  # raises: "L1 (...) is not running: shut off (destroyed); it was stopped outside the runbook"
    return f"L1 ({p.l1.name}) runs (stage 02 starts it)"


class WaitL1(Step):
    """Wait for L1's guest agent, then its SSH; record the times."""
    label = "Wait for L1"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := l1_not_up(ctx):
            return self.unknown(why)
        p = ctx.params
        return self.reads(f"L1's guest agent (virsh qemu-agent-command {p.l1.name} guest-ping)"
                          + ("" if p.l1.lab_l2 else ", then SSH") + f" (up to {p.l1.boot_timeout_s} s)")

    def apply(self, ctx: Stage, plan: Plan) -> dict:
        return wait(ctx)

    def show(self, plan: Plan, times: dict) -> None:
        from .. import ui
        rows = [("L1's guest agent answered", f"{times['agent_wait_s']} s")]
        if "ssh_wait_s" in times:  # (l1.image lab-l2: no sshd, its guest agent is the way in)
            rows.append(("then L1's sshd let us in", f"{times['ssh_wait_s']} s"))
        if "since_start_s" in times:
            rows.append(("since `virsh start`", "not recorded" if times["since_start_s"] is None
                         else f"{times['since_start_s']} s"))
        ui.show_table(rows + ([("sshd", times["sshd"])] if times.get("sshd") else []), ["boot of L1", "time"])


class InspectL1(Step):
    """What the seed looks at in a fresh L1: the NVMe on the PCI bus, DMAR in the kernel log."""
    label = "Look inside L1"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := l1_not_up(ctx):
            return self.unknown(why)
        return self.reads("lspci, dmesg and /proc/cmdline in L1")

    def apply(self, ctx: Stage, plan: Plan):
        return inspect(ctx)

    def show(self, plan: Plan, result) -> None:
        from .. import ui
        shown, before = result
        for cmd, out in shown.items():
            ui.show_output(cmd, out, prompt="root@L1")
        ui.show_table(before, ["what the line proves", "in L1's kernel log now"])


STEPS = [LabImages, Definition, PrepareFiles, DefineL1, host_nvme.ProveFreeAgain, host_nvme.BaselineL0, StartL1,
         host_nvme.GivenToL1,
         WaitL1, InspectL1]


def wait(ctx: Stage) -> dict:
    """Wait for L1's guest agent, then its SSH; record the times."""
    p = ctx.params
    lv = l0.libvirt(p)
    log = l0.Log(ctx.l0, paths(p).l1_console)
    t_agent = l1_ops.wait_for_agent(lv, p.l1.name, p.l1.boot_timeout_s, log)
    if p.l1.lab_l2:  # the lab's L2 image has no sshd: its guest agent is the way in
        times = {"agent_wait_s": round(t_agent, 1)}
        ctx.state.update("l1", boot=times)
        return times
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
