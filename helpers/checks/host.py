"""The checks of one machine (the host, or L1), each a small registered function:
it reads the facts in ``j`` (a ``Judging``) and returns its ``Check``, or None where it
does not apply. The order here is the order of the table."""
from __future__ import annotations

from .. import distro
from ..numa import choose_cpuset, format_cpuset
from ..params import parse_cpuset
from ..params.fit import GIB, biggest_file
from .base import Check, Judging, check, version

MIN_LIBVIRT = (4, 3)           # <iommu><driver iotlb='on'/> (caching_mode 3.9, intremap 3.4)
MIN_LIBVIRT_TCG = (7, 1)       # <cpu mode='maximum'/> for an L1 under TCG
MEMORY_HEADROOM_MIB = 512
TCG_RACE_FIXED_IN = (8, 1)     # "accel/tcg: Always lock pages before translation" (deba78709ae8)

# Check names, stable: notebooks and tests look checks up by them.
CPU_VIRT = "CPU virtualization"
DEV_KVM = "/dev/kvm"
KVM_HW = "KVM hardware-backed"
NESTED = "nested KVM"
IOMMU_TABLE = "IOMMU ACPI table"
IOMMU_ON = "IOMMU enabled"
IRQ_REMAP = "interrupt remapping"
IOMMU_GROUPS = "IOMMU groups"
CMDLINE = "kernel command line"
LIBVIRT = "libvirt reachable"
LIBVIRT_VERSION = "libvirt version"
QEMU_VERSION = "QEMU version"
TCG_RACE = "TCG with several vCPUs"
MACHINE_Q35 = "machine q35"
DOMAIN_TYPES = "domain types"
MEMORY = "memory"
CPUS = "CPUs"
NUMA = "NUMA placement"
DISK = "disk for NVMe backing file"
AMD_VIOMMU = "AMD vIOMMU on this QEMU"


def qemu_device_check(device: str) -> str:
    return f"QEMU device {device}"


# --- CPU and KVM ---------------------------------------------------------------------------

@check(CPU_VIRT)
def cpu_virt(j: Judging) -> Check:
    c = j.f.cpu
    desc = f"{c.vendor or 'unknown vendor'}, {c.model or 'unknown model'}"
    if c.virt_flag:
        return Check(CPU_VIRT, f"{desc}, {c.virt_flag}", "pass")
    fix = ("for KVM speed enable Intel VT-x or AMD-V (SVM) in the firmware setup, or use a host "
           "that has it; without it the guests run under TCG" if j.role == "l0" else
           "give L1 a CPU with vmx/svm: <cpu mode='host-passthrough'/> with nested KVM on the host, "
           "or <cpu mode='maximum'/> under TCG (it offers svm)")
    return Check(CPU_VIRT, f"{desc}, no vmx/svm flag", j.no_kvm_verdict(), fix)


@check(DEV_KVM)
def dev_kvm(j: Judging) -> Check:
    c, k = j.f.cpu, j.f.kvm
    if k.dev_kvm and k.accessible:
        return Check(DEV_KVM, "present, readable and writable", "pass")
    if k.dev_kvm:
        return Check(DEV_KVM, f"present but {k.access_error}", j.no_kvm_verdict(),
                     "run as root, or add the user to group kvm: usermod -aG kvm $USER (then log in again)")
    if c.virt_flag and not k.hw_module:
        module = "kvm_intel" if c.virt_flag == "vmx" else "kvm_amd"
        fix = f"load the KVM module {j.where}: modprobe {module}"
    elif not c.virt_flag:
        fix = "none without vmx/svm: see the check 'CPU virtualization'"
    else:
        fix = f"{k.hw_module} is loaded but /dev/kvm is missing: check `dmesg | grep -i kvm` {j.where}"
    return Check(DEV_KVM, f"missing (modules: {', '.join(k.modules) or 'none'})", j.no_kvm_verdict(), fix)


@check(KVM_HW)
def kvm_hw(j: Judging) -> Check:
    """Carries the KvmUsability (``data``) that ``choose_accel`` reads back."""
    u, smoke = j.usability, j.f.smoke
    if u.usable:
        verdict = "pass" if u.tested else "warn"
        if u.tested:
            fix = ""
        elif "not installed" in smoke.reason or "no kernel" in smoke.reason:
            fix = f"install qemu-system-x86 and a kernel {j.where} to smoke-test KVM"
        else:
            fix = "run the checks with the smoke test (smoke=True) to confirm a kernel boots under KVM"
        if j.forced == "tcg":
            verdict, fix = "skip", ""
        return Check(KVM_HW, u.why + ("; accel forced to tcg" if j.forced == "tcg" else ""), verdict, fix, data=u)
    if j.forced == "kvm":
        fix = (f"set {'host' if j.role == 'l0' else 'l2'}.accel: auto (or tcg) in the parameters "
               f"so {j.guests} runs under TCG, or run on a machine with hardware KVM")
    elif j.role == "l0":
        fix = ("nothing to change for the lab: L1 runs under TCG (slower); for KVM speed use a host "
               "with VT-x/AMD-V enabled in the firmware")
    else:
        fix = ("L2 runs under TCG inside L1 (about 4 times slower): give L1 a CPU with vmx/svm, "
               "e.g. <cpu mode='maximum'/> under TCG or host-passthrough with nested KVM on the host")
    return Check(KVM_HW, u.why, j.no_kvm_verdict(), fix, data=u)


@check(NESTED)
def nested(j: Judging) -> Check:
    k = j.f.kvm
    if k.nested is not None:
        observed = f"{k.nested_module} nested={k.nested}"
    elif k.paravirtual:
        observed = ("kvm_pvm, a paravirtual KVM (no vmx/svm; it runs only specially built guest kernels), "
                    "has no 'nested' parameter as kvm_intel/kvm_amd do"
                    + (f"; nested_pvm={k.nested_pvm} on the kernel command line is its own switch"
                       if k.nested_pvm is not None else ""))
    else:
        observed = "no kvm_intel/kvm_amd loaded"
    if j.role == "l1":
        return Check(NESTED, f"{observed}; not needed in L1: L2 runs no guests of its own", "skip")
    if j.accel == "tcg":
        return Check(NESTED, f"{observed}; not needed: L1 runs under TCG, whose -cpu max offers svm to L1", "skip")
    if k.nested_on:
        return Check(NESTED, observed, "pass")
    module = k.nested_module or k.hw_module or ("kvm_intel" if j.f.cpu.virt_flag == "vmx" else "kvm_amd")
    fix = (f"echo 'options {module} nested=1' > /etc/modprobe.d/kvm-nested.conf, then with no VM running: "
           f"modprobe -r {module} && modprobe {module} (or reboot)")
    verdict = "fail" if j.p.l2.accel == "kvm" else "warn"
    return Check(NESTED, f"{observed}: L1 gets no vmx/svm, so L2 would run under TCG inside L1", verdict, fix)


# --- IOMMU ---------------------------------------------------------------------------------

def _iommu_check(j: Judging, name: str, observed: str, ok: bool, fix: str, warn_only: bool = False) -> Check:
    """Judged only where an IOMMU is needed: always in L1, on L0 when host.require_iommu."""
    if not (j.role == "l1" or j.p.host.require_iommu):
        return Check(name, f"{observed}; not needed on L0 in the lab (host.require_iommu: false)", "skip")
    return Check(name, observed, "pass" if ok else ("warn" if warn_only else "fail"), "" if ok else fix)


def _table_fix(j: Judging) -> str:
    if j.role == "l0":
        return ("enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, then boot with the "
                "IOMMU on (see 'kernel command line')")
    return ("give L1 an emulated IOMMU: <iommu model='intel'><driver intremap='on' caching_mode='on' "
            "iotlb='on'/></iommu> and <ioapic driver='qemu'/> in its domain XML "
            "(QEMU: -device intel-iommu,intremap=on,device-iotlb=on), then restart L1")


def _iommu_flags(j: Judging) -> str:
    return {"intel": "intel_iommu=on iommu=pt", "amd": "amd_iommu=on iommu=pt"}.get(
        j.f.iommu.kind, "intel_iommu=on iommu=pt (DMAR) or amd_iommu=on iommu=pt (IVRS)")


def _boot_fix(j: Judging) -> str:
    """How to add the IOMMU flags on this distribution (``helpers.distro``)."""
    return distro.boot_fix(j.f.os, _iommu_flags(j), j.where)


@check(IOMMU_TABLE)
def iommu_table(j: Judging) -> Check:
    io = j.f.iommu
    return _iommu_check(j, IOMMU_TABLE, ", ".join(io.tables) or "no DMAR or IVRS table in /sys/firmware/acpi/tables",
                        bool(io.tables), _table_fix(j))


@check(IOMMU_ON)
def iommu_on(j: Judging) -> Check:
    io = j.f.iommu
    if io.enabled:
        shown = io.enabled_lines[:2] + ([f"/sys/class/iommu: {' '.join(io.class_iommu)}"] if io.class_iommu else [])
        observed = "; ".join(shown)
    elif io.log_error:
        observed = f"no kernel log ({io.log_error}); /sys/class/iommu empty"
    else:
        observed = f"no IOMMU lines in {io.log_source or 'the kernel log'}; /sys/class/iommu empty"
    return _iommu_check(j, IOMMU_ON, observed, io.enabled, _boot_fix(j) if io.tables else _table_fix(j))


@check(IRQ_REMAP)
def irq_remap(j: Judging) -> Check:
    io = j.f.iommu
    return _iommu_check(
        j, IRQ_REMAP, io.irq_remap_lines[0] if io.irq_remap_lines else
        "no 'DMAR-IR: Enabled IRQ remapping' or 'AMD-Vi: Interrupt remapping enabled' line",
        io.irq_remapping,
        ("enable interrupt remapping / x2APIC in the firmware setup and do not boot with intremap=off"
         if j.role == "l0" else
         "L1's IOMMU needs intremap='on' with <ioapic driver='qemu'/> (QEMU: kernel-irqchip=split)"))


@check(IOMMU_GROUPS)
def iommu_groups(j: Judging) -> Check:
    io = j.f.iommu
    return _iommu_check(j, IOMMU_GROUPS, f"{io.groups} groups in /sys/kernel/iommu_groups", io.groups > 0,
                        "the groups appear once the IOMMU is enabled: see 'IOMMU enabled'")


@check(CMDLINE)
def cmdline(j: Judging) -> Check:
    io = j.f.iommu
    flags = io.cmdline_flags
    shown = " ".join(f"{k}={v}" if v else k for k, v in flags.items()) or "no IOMMU flags"
    off = [f"{k}={v}" for k, v in flags.items() if v.split(",")[0] in ("off", "0")]
    if off:
        return _iommu_check(j, CMDLINE, f"{shown}: the IOMMU is turned off", False,
                            _boot_fix(j) + f" (and remove {' '.join(off)})")
    if io.kind == "intel" and flags.get("intel_iommu", "").split(",")[0] != "on" and not io.enabled:
        return _iommu_check(j, CMDLINE, f"{shown}: Intel IOMMU (DMAR) present but intel_iommu=on missing", False,
                            _boot_fix(j))
    if io.kind is None:
        return _iommu_check(j, CMDLINE, f"{shown}; no IOMMU present to turn on", False, _table_fix(j))
    note = "" if "iommu" in flags else " (iommu=pt not set: optional, passthrough mode for host devices)"
    return _iommu_check(j, CMDLINE, shown + note, True, "")


# --- libvirt and QEMU ----------------------------------------------------------------------

@check(LIBVIRT)
def libvirt(j: Judging) -> Check:
    lv = j.f.libvirt
    if not lv.reachable:
        return Check(LIBVIRT, f"{lv.uri}: {lv.error}", "fail",
                     "virtlogd -d; libvirtd -d (without systemd), or systemctl start libvirtd"
                     f" {j.where}; install libvirt-daemon-system and libvirt-clients if missing")
    return Check(LIBVIRT, f"{lv.uri} answers" + (f" ({lv.error})" if lv.error else ""),
                 "warn" if lv.error else "pass", "see the error above" if lv.error else "")


@check(LIBVIRT_VERSION)
def libvirt_version(j: Judging) -> Check:
    lv = j.f.libvirt
    if not lv.reachable:
        return Check(LIBVIRT_VERSION, "libvirt not reachable", "skip")
    need = MIN_LIBVIRT_TCG if j.accel == "tcg" and j.role == "l0" else MIN_LIBVIRT
    have = version(lv.libvirt_version)
    if not have:
        return Check(LIBVIRT_VERSION, "unknown", "warn", "check `virsh version`")
    if have < need:
        return Check(LIBVIRT_VERSION, f"libvirt {lv.libvirt_version}", "warn",
                     f"libvirt {'.'.join(map(str, need))} or newer is expected {j.where} "
                     "(IOMMU driver options; <cpu mode='maximum'/> under TCG): upgrade libvirt")
    return Check(LIBVIRT_VERSION, f"libvirt {lv.libvirt_version}", "pass")


@check(QEMU_VERSION)
def qemu_version(j: Judging) -> Check:
    q, qv = j.f.qemu, j.qemu_version
    if qv:
        return Check(QEMU_VERSION, f"QEMU {qv} ({q.binary})", "pass")
    return Check(QEMU_VERSION, f"{q.binary}: {q.error or 'version unknown'}", "fail",
                 distro.install_fix("qemu", j.where))


@check(TCG_RACE)
def tcg_race(j: Judging) -> Check | None:
    """QEMU < 8.1's multi-threaded TCG can keep a translation block built from a page
    another vCPU is live-patching (int3-based text_poke, which KVM in L1 triggers at
    every VM start and stop): L1's kernel then stalls for good. Judged on the host only."""
    if j.role != "l0":
        return None
    p = j.p
    vcpus = p.l1.sockets * p.l1.cores * p.l1.threads
    have = version(j.qemu_version)
    if j.accel != "tcg" or vcpus < 2:
        why = "L1 runs under KVM" if j.accel != "tcg" else "L1 has one vCPU"
        return Check(TCG_RACE, f"not at risk: {why}", "pass")
    if not have:
        return Check(TCG_RACE, "QEMU version unknown", "warn", "check `qemu-system-x86_64 --version`: 8.1 or newer")
    observed = f"L1 under TCG with {vcpus} vCPUs, QEMU {j.qemu_version}"
    if have >= TCG_RACE_FIXED_IN:
        return Check(TCG_RACE, observed + " (the multi-threaded TCG race is fixed since 8.1)", "pass")
    fix = ("QEMU before 8.1 has a multi-threaded TCG race (fixed upstream by \"accel/tcg: Always lock pages "
           "before translation\") that stalls L1 once KVM runs in it: on Debian 12 run `make setup`, "
           "which installs QEMU and libvirt from bookworm-backports, then restart libvirtd; or give L1 one "
           "vCPU (l1.cores: 1, l1.sockets: 1, l1.threads: 1), or set host.accept_tcg_stall_risk: true")
    if p.host.accept_tcg_stall_risk:
        return Check(TCG_RACE, observed + ": stall risk accepted (host.accept_tcg_stall_risk)", "warn", fix)
    return Check(TCG_RACE, observed + ": L1 may stall", "fail", fix)


def _iommu_device(j: Judging) -> str:
    """QEMU's device for L1's vIOMMU: the kind stage 02 will decide from these facts."""
    return viommu_device(j.p, j.f)


def viommu_device(params, f) -> str:
    """QEMU's device for L1's vIOMMU, the kind stage 02 will decide from these facts."""
    from .viommu import decide_iommu_kind
    kind, _ = decide_iommu_kind(params, f.iommu.tables, f.cpu.vendor)
    return f"{kind}-iommu"


def _qemu_device(dev: str):
    """The check that QEMU offers ``dev`` (needed: L1's IOMMU and the NVMe on L0, vfio-pci in L1)."""
    def qemu_device(j: Judging) -> Check | None:
        if dev in ("intel-iommu", "amd-iommu") and dev != _iommu_device(j):
            return None   # only the IOMMU model L1 gets (l1.iommu) is checked
        name = qemu_device_check(dev)
        q = j.f.qemu
        needed = {"l0": {_iommu_device(j): "L1's emulated IOMMU", "nvme": "the NVMe drive given to L1"},
                  "l1": {"vfio-pci": "passing the NVMe through to L2"}}[j.role]
        if not q.available:
            return Check(name, f"QEMU not runnable: {q.error}", "fail" if dev in needed else "skip",
                         f"install QEMU {j.where}" if dev in needed else "")
        if q.offers(dev):
            return Check(name, f"offered by {q.binary}" + (f" (for {needed[dev]})" if dev in needed else ""), "pass")
        if dev in needed:
            return Check(name, f"{q.binary} -device help has no {dev}", "fail",
                         f"install a QEMU build with {dev} {j.where} (Debian: {distro.Apt.qemu})")
        return Check(name, f"not offered; not needed {j.where}", "skip")
    qemu_device.__name__ = f"qemu_device_{dev.replace('-', '_')}"
    return qemu_device


for _dev in ("intel-iommu", "amd-iommu", "nvme", "vfio-pci"):
    check(qemu_device_check(_dev))(_qemu_device(_dev))


HOST_DEVICE_BEHIND_AMD_FIX = ("use l1.iommu: intel (or auto: QEMU's Intel vIOMMU, with caching mode), or nvme.target: "
                              "l1 (L1 keeps the drive, no vIOMMU), or QEMU 10.2 or newer on L0 (amd-iommu's dma-remap)")


def host_device_behind_amd(c) -> str:
    """Why L1's amd-iommu cannot pass a device assigned from L0 on to L2, or "". VFIO in L1
    needs the vIOMMU to tell L0's QEMU of every mapping L1 makes (a MAP notifier): QEMU's
    amd-iommu refuses one before 10.2, and from 10.2 gives it with ``dma-remap=on``."""
    if "dma-remap" in (c.properties or {}):
        return ""
    return ("its amd-iommu has no dma-remap property, so it cannot pass a device assigned from L0 on to L2 "
            "(QEMU refuses VFIO behind amd-iommu without it)")


@check(AMD_VIOMMU)
def amd_viommu(j: Judging) -> Check | None:
    """With l1.iommu: amd, the known hazards of the QEMU that will run L1 and what the
    runbook does about each (``checks.viommu.amd_iommu_options``, the same choice stage
    02 builds L1 with), or a refusal where the AMD chain cannot work on it."""
    if j.role != "l0" or _iommu_device(j) != "amd-iommu" or not j.f.qemu.offers("amd-iommu"):
        return None  # QEMU without amd-iommu: the check 'QEMU device amd-iommu' fails already
    from .viommu import amd_iommu_options
    c = amd_iommu_options(j.qemu_version, j.f.qemu.properties.get("amd-iommu"))
    shown = f"QEMU {j.qemu_version}" if j.qemu_version else "QEMU of unknown version"
    if c.refused:
        return Check(AMD_VIOMMU, c.refused, "fail", c.fix)
    if j.p.nvme.host and j.p.nvme.in_l2 and (why := host_device_behind_amd(c)):
        return Check(AMD_VIOMMU, f"{shown}: {why}", "fail", HOST_DEVICE_BEHIND_AMD_FIX)
    if c.hazards:
        return Check(AMD_VIOMMU, f"{shown}: " + "; ".join(h.what for h in c.hazards), "warn",
                     "nothing to do: " + "; ".join(h.handled for h in c.hazards) + f" (L1 gets {c.device})"
                     + ("; with QEMU 10.0.3, 10.1 or newer pt=off is not needed" if "pt" in c.options else ""))
    note = "" if j.qemu_version else " (version unknown: pt=off, harmless where pt is ignored)"
    return Check(AMD_VIOMMU, f"{shown}: no known amd-iommu hazard; L1 gets {c.device}{note}", "pass")


@check(MACHINE_Q35)
def machine_q35(j: Judging) -> Check:
    lv = j.f.libvirt
    if not lv.reachable:
        return Check(MACHINE_Q35, "libvirt not reachable", "skip")
    if lv.q35:
        canon = "q35" if "q35" in lv.machines else next(m for m in lv.machines if m.startswith("pc-q35"))
        return Check(MACHINE_Q35, f"{canon} offered ({len(lv.machines)} machine types)", "pass")
    return Check(MACHINE_Q35, f"no q35 among {len(lv.machines)} machine types", "fail",
                 f"install qemu-system-x86 {j.where}; the {j.guests} needs the q35 machine for its IOMMU")


@check(DOMAIN_TYPES)
def domain_types(j: Judging) -> Check:
    lv = j.f.libvirt
    if not lv.reachable:
        return Check(DOMAIN_TYPES, "libvirt not reachable", "skip")
    want = "kvm" if j.accel == "kvm" else "qemu"
    offered = ", ".join(lv.domain_types) or "none"
    if want in lv.domain_types:
        said = f"libvirt offers '{want}' ({'KVM' if want == 'kvm' else 'TCG'}), the type {j.guests} will use"
        if "kvm" in lv.domain_types and j.accel == "tcg":
            said += (" (it lists 'kvm' too, but the check 'KVM hardware-backed' found KVM unusable here, "
                     "so 'kvm' is not used)")
        return Check(DOMAIN_TYPES, f"{said}; offered: {offered}", "pass")
    return Check(DOMAIN_TYPES, f"{offered}: no '{want}' for x86_64 hvm", "fail",
                 f"install qemu-system-x86 {j.where} and restart libvirtd"
                 + ("; for 'kvm' /dev/kvm must be usable by libvirt" if want == "kvm" else ""))


# --- resources -----------------------------------------------------------------------------

@check(MEMORY)
def memory(j: Judging) -> Check:
    need_mib = j.p.l1.memory_mib if j.role == "l0" else j.p.l2.memory_mib
    key = "l1.memory_mib" if j.role == "l0" else "l2.memory_mib"
    m = j.f.memory
    observed = f"{m.available_mib} MiB available of {m.total_mib} MiB; {j.guests} needs {need_mib} MiB"
    if m.available_mib < need_mib:
        return Check(MEMORY, observed, "fail", f"lower {key} to at most "
                     f"{max(m.available_mib - MEMORY_HEADROOM_MIB, 0)} MiB, or free memory {j.where}")
    if m.available_mib < need_mib + MEMORY_HEADROOM_MIB:
        return Check(MEMORY, observed + f" (less than {MEMORY_HEADROOM_MIB} MiB left over)", "warn",
                     f"lower {key}, or free memory {j.where}")
    return Check(MEMORY, observed, "pass")


@check(CPUS)
def cpus(j: Judging) -> Check:
    vcpus = j.p.l1.vcpus if j.role == "l0" else j.p.l2.vcpus
    online, nodes = j.f.cpu.online, j.f.topology.nodes
    observed = (f"{len(online)} CPUs online ({format_cpuset(online)}), {len(nodes)} NUMA node(s); "
                f"{j.guests} has {vcpus} vCPUs")
    if vcpus <= len(online):
        return Check(CPUS, observed, "pass")
    what = "l1.sockets x cores x threads" if j.role == "l0" else "l2.vcpus"
    return Check(CPUS, observed + ": overcommitted", "warn", f"lower {what} to at most {len(online)}")


@check(NUMA)
def numa(j: Judging) -> Check | None:
    """Where L1's vCPUs go on the host (l1.cpuset, or a suggestion inside one node)."""
    if j.role != "l0":
        return None
    p, topo, online = j.p, j.f.topology, j.f.cpu.online
    vcpus, nodes = p.l1.vcpus, topo.nodes
    suggestion, why = choose_cpuset(nodes, topo.siblings, vcpus, p.l1.threads)
    if p.l1.cpuset:
        asked = parse_cpuset(p.l1.cpuset)
        missing = sorted(set(asked) - set(online))
        in_nodes = sorted({n for c in asked if (n := topo.node_of(c)) is not None})
        hint = f" (suggested: {suggestion}, {why})" if suggestion else ""
        if missing:
            return Check(NUMA, f"l1.cpuset {p.l1.cpuset}: CPUs {format_cpuset(missing)} are not online here",
                         "fail", f"choose CPUs from {format_cpuset(online)}, or leave l1.cpuset empty{hint}")
        if len(in_nodes) > 1:
            return Check(NUMA, f"l1.cpuset {p.l1.cpuset} spans NUMA nodes {', '.join(map(str, in_nodes))}", "warn",
                         f"keep L1 inside one node{hint}")
        if len(asked) < vcpus:
            return Check(NUMA, f"l1.cpuset {p.l1.cpuset}: {len(asked)} CPUs for {vcpus} vCPUs (node {in_nodes[0]})",
                         "warn", f"give at least {vcpus} CPUs{hint}")
        return Check(NUMA, f"l1.cpuset {p.l1.cpuset} inside node {in_nodes[0]}", "pass")
    mem = ", ".join(f"node {n}: {mib} MiB" for n, mib in sorted(topo.memory_mib.items()))
    total = j.f.memory.total_mib if getattr(j.f, "memory", None) else 0
    if mem and len(topo.memory_mib) == 1 and 0 < sum(topo.memory_mib.values()) < total:
        mem = (f" [{mem} by the node's own meminfo, less than the machine's {total} MiB: the rest is memory the kernel "
               "did not assign to the node (on a VM, typically memory hot-plugged after boot); L1 is placed by CPUs, "
               "so this does not change the choice]")
    else:
        mem = f" [{mem}: the node's MemTotal; 'memory' above is what is available now]" if mem else ""
    if suggestion:
        return Check(NUMA, f"l1.cpuset empty; suggested {suggestion} ({why}){mem}", "pass", data=suggestion)
    if len(nodes) == 1:
        return Check(NUMA, f"l1.cpuset empty; one NUMA node, nothing to place ({why})", "pass")
    return Check(NUMA, f"l1.cpuset empty; {why}{mem}", "warn",
                 "lower l1.cores/threads to fit one node, or accept L1 spanning nodes")


@check(DISK)
def disk(j: Judging) -> Check | None:
    """Room for the NVMe's backing file on the host (no disk fact in L1)."""
    d = j.f.disk
    if d is None:
        return None
    size = j.p.nvme.size_gib
    if d.avail_bytes is None:
        return Check(DISK, f"{d.path}: df failed at {d.checked}: {d.error}", "warn",
                     f"check the folder of nvme.backing_file {j.where}")
    avail_gib = d.avail_bytes / GIB
    observed = f"{avail_gib:.1f} GiB free at {d.checked} on {d.mount}; nvme.size_gib {size:g}"
    biggest = biggest_file(d.fstype, 4096)
    if d.exists:
        return Check(DISK, f"{d.path} exists already; {avail_gib:.1f} GiB free on {d.mount}", "pass")
    if biggest is not None and size * GIB > biggest:
        return Check(DISK, f"{observed}: {d.fstype} holds files of at most {biggest / GIB:g} GiB", "fail",
                     f"lower nvme.size_gib, or put nvme.backing_file on another filesystem {j.where}")
    if avail_gib >= size:
        return Check(DISK, observed, "pass")
    # the file could be made sparse, but the NVMe would fail once written past the free space
    most = int(avail_gib * 10) / 10
    return Check(DISK, observed + ": the backing file does not fit", "fail",
                 f"free space on {d.mount}, " + (f"lower nvme.size_gib to at most {most:g}, " if most > 0 else "")
                 + "or set nvme.backing_file to a folder with room")
