"""Stage 02: the lab's images, L1's plan (domain XML and the virt-install
equivalent), its files, define, start, and wait until it answers."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import by_hand
from ..access import l1_ssh_spec
from ..errors import RunbookError
from ..facts import cpu as cpu_facts
from ..facts import iommu as iommu_facts
from ..libvirt_xml import Domain, supports_native_amd_iommu, supports_native_nvme, virt_install_command
from ..nb import Stage
from ..numa import choose_cpuset
from ..ops import Change, domain
from ..ops import l1 as l1_ops
from ..paths import paths
from ..virt import PyLibvirt


def lab_images(ctx: Stage, force: bool = False):
    """The lab's L1 and L2 images, built once and cached (None on a real host)."""
    p = ctx.params
    if p.l1.image != "lab":
        if not Path(p.l1.image).expanduser().exists():
            raise RunbookError(f"l1.image {p.l1.image} does not exist",
                               hint="give the path of your L1 base image (the seed used a CentOS 7 qcow2)")
        return None
    from ..lab.images import LabImageError, build_images
    try:
        imgs = build_images(force=force, progress=print)
    except LabImageError as e:
        raise RunbookError(f"building the lab images failed: {e}",
                           hint="read /var/cache/nested-nvme/images/build.log") from None
    ctx.state.set("lab", {"recipe": imgs.recipe, "l1_disk": str(imgs.l1_disk), "ssh_key": str(imgs.ssh_key),
                          "ssh_host_pubkey": imgs.ssh_host_pubkey, "l2_root_in_l1": imgs.l2_root_in_l1,
                          "l2_kernel_in_l1": imgs.l2_kernel_in_l1, "l2_initrd_in_l1": imgs.l2_initrd_in_l1,
                          "l2_cmdline": imgs.l2_cmdline, "virt_packages_cached": imgs.virt_packages_cached})
    return imgs


@dataclass
class Plan:
    domain: Domain
    xml: str
    virt_install: str
    accel: str
    cpuset: str | None
    cpuset_reason: str
    native_nvme: bool
    iommu: str = "intel"
    iommu_reason: str = ""


def plan(ctx: Stage) -> Plan:
    """L1's definition from the parameters, the accelerator stage 01 chose and the host's NUMA layout."""
    p = ctx.params
    accel = ctx.state["accel"]
    if p.l1.cpuset:
        cpuset, why = p.l1.cpuset, "given in the parameters"
    else:
        topo = cpu_facts.topology(ctx.l0)
        cpuset, why = choose_cpuset(topo.nodes, topo.siblings, p.l1.vcpus, p.l1.threads)
    lv = PyLibvirt(p.host.libvirt_uri)
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
    return l1_ops.decide_iommu_kind(ctx.params, tables, vendor)


def prepare(ctx: Stage) -> list[Change]:
    """The workdir, the NVMe backing file, L1's disk (lab: an overlay) and the pinned host key."""
    p, ps = ctx.params, paths(ctx.params)
    l1_ops.check_space(ctx.l0, ps.workdir, Path(p.nvme.backing_file), p.nvme.size_gib, p.l1.image == "lab")
    changes = [l1_ops.ensure_workdir(ps.workdir, ctx.state),
               l1_ops.ensure_backing_file(Path(p.nvme.backing_file), p.nvme.size_gib, ctx.state)]
    if p.l1.image == "lab":
        lab = ctx.state["lab"]
        running = PyLibvirt(p.host.libvirt_uri).is_active(p.l1.name)
        changes.append(l1_ops.ensure_overlay(Path(lab["l1_disk"]), ps.l1_disk, ctx.state, running))
        spec = l1_ssh_spec(p)
        changes.append(l1_ops.write_known_hosts(ps.known_hosts, spec["host"], spec["port"],
                                                lab["ssh_host_pubkey"], ctx.state))
        changes.append(l1_ops.copy_key(Path(lab["ssh_key"]), ps.lab_key, ctx.state))
    return changes


def by_hand_files(ctx: Stage) -> by_hand.ByHand:
    """What ``prepare`` does, as commands at L0's prompt."""
    p, ps = ctx.params, paths(ctx.params)
    lab = ctx.state.get("lab") if p.l1.image == "lab" else None
    extra = {}
    if lab:
        spec = l1_ssh_spec(p)
        extra = {"overlay": (Path(lab["l1_disk"]), ps.l1_disk), "ssh_key": (Path(lab["ssh_key"]), ps.lab_key),
                 "known_hosts": (ps.known_hosts, l1_ops.known_hosts_line(spec["host"], spec["port"],
                                                                         lab["ssh_host_pubkey"]))}
    return by_hand.l1_files(ps.workdir, Path(p.nvme.backing_file), p.nvme.size_gib, **extra)


def by_hand_define(ctx: Stage) -> by_hand.ByHand:
    p = ctx.params
    return by_hand.define(p.l1.name, f"{p.l1.name}.xml", p.host.libvirt_uri)


def by_hand_start(ctx: Stage) -> by_hand.ByHand:
    return by_hand.start(ctx.params.l1.name, ctx.params.host.libvirt_uri)


def define(ctx: Stage, the_plan: Plan) -> Change:
    """Define L1 (idempotent); record how to reach it."""
    p = ctx.params
    lv = PyLibvirt(p.host.libvirt_uri)
    change = domain.define(lv, p.l1.name, the_plan.xml, replace=p.l1.replace)
    lab = ctx.state.get("lab") or {}
    ps = paths(p)
    spec = l1_ssh_spec(p, lab_key=ps.lab_key if lab else None,
                       known_hosts=ps.known_hosts if lab else None)
    ctx.state.update("l1", name=p.l1.name, accel=the_plan.accel, cpuset=the_plan.cpuset,
                     console_log=str(ps.l1_console), ssh=spec, native_nvme=the_plan.native_nvme,
                     iommu_kind=the_plan.iommu, iommu_reason=the_plan.iommu_reason)
    return change


def start(ctx: Stage) -> Change:
    lv = PyLibvirt(ctx.params.host.libvirt_uri)
    ch = domain.start(lv, ctx.params.l1.name)
    if ch.changed:
        ctx.state.update("l1", started_at=time.time())
        ctx.l1().close()  # a connection shared with an earlier L1 on the same port is stale
    return ch


def wait(ctx: Stage) -> dict:
    """Wait for L1's guest agent, then its SSH; record the times."""
    p = ctx.params
    lv = PyLibvirt(p.host.libvirt_uri)
    log = paths(p).l1_console
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
    shown = {lspci: out[lspci], "dmesg | grep -E 'DMAR|IOMMU|iommu'": "\n".join(iommu_facts.excerpt(lines)),
             "cat /proc/cmdline": out["cat /proc/cmdline"]}
    return shown, rows
