"""Judging a machine's facts: each check names what it looked at, what it saw,
a verdict (pass, warn, fail, skip) and, when not passing, how to fix it.

``host_checks(guest, params, role)`` reads the facts (``gather``) and judges
them (``judge``). The same checks run on the host (role 'l0', stage 01) and
in L1 (role 'l1', stage 03): at L0 the guests to come are L1, in L1 they are
L2. The IOMMU is judged by what is there (ACPI DMAR/IVRS table, kernel log,
/sys/class/iommu), never by the CPU vendor: the lab's L1 is an AMD-flavoured
TCG CPU with an emulated Intel IOMMU.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from helpers.facts import cpu as cpu_facts
from helpers.facts import iommu as iommu_facts
from helpers.facts import kvm as kvm_facts
from helpers.facts import libvirt as libvirt_facts
from helpers.facts import system as system_facts
from helpers.guest import Guest
from helpers.host_checks import biggest_file
from helpers.numa import choose_cpuset, format_cpuset
from helpers.params import Params, parse_cpuset

VERDICTS = ("pass", "warn", "fail", "skip")
GIB = 1024 ** 3
MIN_LIBVIRT = (4, 3)           # <iommu><driver iotlb='on'/> (caching_mode 3.9, intremap 3.4)
MIN_LIBVIRT_TCG = (7, 1)       # <cpu mode='maximum'/> for an L1 under TCG
MEMORY_HEADROOM_MIB = 512
L1_SMOKE_MIN_S = 60            # in L1 (itself under TCG in the lab) a nested boot is slower

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
TCG_RACE_FIXED_IN = (8, 1)  # "accel/tcg: Always lock pages before translation" (deba78709ae8)
MACHINE_Q35 = "machine q35"
DOMAIN_TYPES = "domain types"
MEMORY = "memory"
CPUS = "CPUs"
NUMA = "NUMA placement"
DISK = "disk for NVMe backing file"


def qemu_device_check(device: str) -> str:
    return f"QEMU device {device}"


@dataclass
class Check:
    """One judged fact. ``data`` carries what later code needs (not shown)."""

    name: str
    observed: str
    verdict: str
    fix: str = ""
    data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class HostFacts:
    """Everything the checks judge, read from one machine."""

    role: str
    cpu: cpu_facts.CPU
    topology: cpu_facts.Topology
    kvm: kvm_facts.KVM
    cmdline: kvm_facts.Cmdline
    smoke: kvm_facts.Smoke
    iommu: iommu_facts.IOMMU
    libvirt: libvirt_facts.Libvirt
    qemu: libvirt_facts.Qemu
    memory: system_facts.Memory
    os: system_facts.OSRelease
    disk: system_facts.Disk | None = None
    kernel: str | None = None     # the running kernel's release


@dataclass
class KvmUsability:
    """Can guests run under KVM here, and why (not)."""

    usable: bool
    why: str
    tested: bool


def _forced(params: Params, role: str) -> str:
    """host.accel for L1 (judged at L0), l2.accel for L2 (judged in L1)."""
    return params.host.accel if role == "l0" else params.l2.accel


def gather(guest: Guest, params: Params, role: str = "l0", smoke: bool = True) -> HostFacts:
    """Read every fact the checks need. The smoke boot runs only when /dev/kvm
    is there, acceleration is not forced to TCG and ``smoke`` is true; its
    timeout is host.kvm_smoke_timeout_s (at least 60 s in L1)."""
    if role not in ("l0", "l1"):
        raise ValueError("role must be 'l0' (the host) or 'l1'")
    with guest.snapshot(*cpu_facts.READS, *kvm_facts.READS, *iommu_facts.READS, *system_facts.READS):
        return _gather(guest, params, role, smoke)


def _gather(guest: Guest, params: Params, role: str, smoke: bool) -> HostFacts:
    c = cpu_facts.cpu(guest)
    cmd = kvm_facts.cmdline(guest)
    k = kvm_facts.kvm(guest)
    forced = _forced(params, role)
    if not k.dev_kvm:
        sm = kvm_facts.Smoke("not tested", "no /dev/kvm")
    elif forced == "tcg":
        sm = kvm_facts.Smoke("not tested", "acceleration forced to tcg")
    elif not smoke:
        sm = kvm_facts.Smoke("not tested", "smoke test turned off")
    else:
        timeout = params.host.kvm_smoke_timeout_s
        sm = kvm_facts.kvm_smoke(guest, timeout if role == "l0" else max(timeout, L1_SMOKE_MIN_S))
    lv = libvirt_facts.libvirt(guest, params.host.libvirt_uri)
    binary = lv.emulator or kvm_facts.find_qemu(guest) or "qemu-system-x86_64"
    return HostFacts(
        role=role, cpu=c, topology=cpu_facts.topology(guest, c.online), kvm=k, cmdline=cmd,
        smoke=sm, iommu=iommu_facts.iommu(guest, cmd), libvirt=lv,
        qemu=libvirt_facts.qemu(guest, binary), memory=system_facts.memory(guest),
        os=system_facts.os_release(guest),
        disk=system_facts.free_disk(guest, str(params.nvme.backing_file)) if role == "l0" else None,
        kernel=system_facts.kernel_release(guest))


def environment(f: HostFacts) -> dict:
    """What a benchmark's figures depend on, from one machine's facts: kernel, QEMU,
    libvirt, CPU, distribution, and whether the machine is itself a guest."""
    return {"kernel": f.kernel, "qemu": f.libvirt.qemu_version or f.qemu.version,
            "libvirt": f.libvirt.libvirt_version, "cpu_model": f.cpu.model, "cpu_vendor": f.cpu.vendor,
            "distro": f.os.pretty_name or f.os.id or None, "virtualized": "hypervisor" in f.cpu.flags}


def viommu_device(params: Params, f: HostFacts) -> str:
    """QEMU's device for L1's vIOMMU, the kind stage 02 will decide from these facts."""
    from helpers.ops.l1 import decide_iommu_kind
    kind, _ = decide_iommu_kind(params, f.iommu.tables, f.cpu.vendor)
    return f"{kind}-iommu"


def kvm_usability(f: HostFacts) -> KvmUsability:
    """KVM is usable when a kernel boots under it; without a smoke boot, when
    /dev/kvm is backed by vmx/svm and kvm_intel/kvm_amd."""
    k, c, sm = f.kvm, f.cpu, f.smoke
    if not k.dev_kvm:
        flag = f"; the CPU shows {c.virt_flag}" if c.virt_flag else "; the CPU shows no vmx/svm"
        return KvmUsability(False, f"no /dev/kvm{flag}: guests will run under TCG", False)
    if not k.accessible:
        return KvmUsability(False, f"/dev/kvm is not usable by this user ({k.access_error}): "
                            "guests will run under TCG", False)
    if sm.usable:
        return KvmUsability(True, f"a kernel boots under KVM ({sm.reason})", True)
    if k.paravirtual or not c.virt_flag:
        what = ("no vmx/svm; /dev/kvm is paravirtual (kvm_pvm)" if k.paravirtual
                else "no vmx/svm; /dev/kvm is not backed by VT-x/AMD-V")
        why = f"{what}: guests will run under TCG"
    else:
        why = f"{c.virt_flag} + {k.hw_module or 'no kvm_intel/kvm_amd'}"
        if not sm.tested:
            usable = k.hw_module is not None
            return KvmUsability(usable, f"{why}; not smoke-tested ({sm.reason})"
                                + ("" if usable else ": guests will run under TCG"), False)
        why += ", but a kernel does not boot under KVM: guests will run under TCG"
    if sm.tested:
        why += f" (smoke boot: {sm.reason})"
    return KvmUsability(False, why, sm.tested)


def choose_accel(checks_or_facts, forced: str = "auto") -> tuple[str, str]:
    """('kvm' | 'tcg', reason) from host_checks' result, HostFacts or a
    KvmUsability, and the forced value (auto, kvm or tcg)."""
    if forced == "tcg":
        return "tcg", "forced: accel is tcg"
    if isinstance(checks_or_facts, KvmUsability):
        u = checks_or_facts
    elif isinstance(checks_or_facts, HostFacts):
        u = kvm_usability(checks_or_facts)
    else:
        found = [c.data for c in checks_or_facts if c.name == KVM_HW and isinstance(c.data, KvmUsability)]
        if not found:
            raise ValueError(f"no {KVM_HW!r} check among these checks: run host_checks first")
        u = found[0]
    if forced == "kvm":
        return "kvm", "forced: accel is kvm" + ("" if u.usable else f", although {u.why}")
    return ("kvm", u.why) if u.usable else ("tcg", u.why)


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:3])


def _bootloader_fix(os: system_facts.OSRelease, args: str, where: str) -> str:
    """How to add kernel arguments on this distribution."""
    if os.like("rhel", "fedora", "centos"):
        return (f"{where}: grubby --update-kernel ALL --args '{args}', then reboot")
    if os.like("debian", "ubuntu"):
        return (f"{where}: add '{args}' to GRUB_CMDLINE_LINUX in /etc/default/grub, "
                "run update-grub, then reboot")
    return f"{where}: add '{args}' to the kernel command line in the bootloader's configuration, then reboot"


class _Judge:
    """Judges one HostFacts; one method per group of checks."""

    def __init__(self, f: HostFacts, params: Params, role: str):
        self.f, self.p, self.role = f, params, role
        self.where = "on the host" if role == "l0" else "in L1"
        self.guests = "L1" if role == "l0" else "L2"
        self.forced = _forced(params, role)
        self.usability = kvm_usability(f)
        self.accel, self.accel_reason = choose_accel(self.usability, self.forced)
        self.checks: list[Check] = []

    def add(self, name, observed, verdict, fix="", data=None):
        self.checks.append(Check(name, observed, verdict, fix, data))

    def no_kvm_verdict(self) -> str:
        return "fail" if self.forced == "kvm" else "warn"

    # --- CPU and KVM ---------------------------------------------------------
    def cpu_and_kvm(self):
        f, c, k = self.f, self.f.cpu, self.f.kvm
        desc = f"{c.vendor or 'unknown vendor'}, {c.model or 'unknown model'}"
        if c.virt_flag:
            self.add(CPU_VIRT, f"{desc}, {c.virt_flag}", "pass")
        else:
            fix = ("for KVM speed enable Intel VT-x or AMD-V (SVM) in the firmware setup, or use a host "
                   "that has it; without it the guests run under TCG" if self.role == "l0" else
                   "give L1 a CPU with vmx/svm: <cpu mode='host-passthrough'/> with nested KVM on the host, "
                   "or <cpu mode='maximum'/> under TCG (it offers svm)")
            self.add(CPU_VIRT, f"{desc}, no vmx/svm flag", self.no_kvm_verdict(), fix)

        if k.dev_kvm and k.accessible:
            self.add(DEV_KVM, "present, readable and writable", "pass")
        elif k.dev_kvm:
            self.add(DEV_KVM, f"present but {k.access_error}", self.no_kvm_verdict(),
                     "run as root, or add the user to group kvm: usermod -aG kvm $USER (then log in again)")
        else:
            if c.virt_flag and not k.hw_module:
                module = "kvm_intel" if c.virt_flag == "vmx" else "kvm_amd"
                fix = f"load the KVM module {self.where}: modprobe {module}"
            elif not c.virt_flag:
                fix = "none without vmx/svm: see the check 'CPU virtualization'"
            else:
                fix = f"{k.hw_module} is loaded but /dev/kvm is missing: check `dmesg | grep -i kvm` {self.where}"
            self.add(DEV_KVM, f"missing (modules: {', '.join(k.modules) or 'none'})", self.no_kvm_verdict(), fix)

        u = self.usability
        if u.usable:
            verdict = "pass" if u.tested else "warn"
            if u.tested:
                fix = ""
            elif "not installed" in f.smoke.reason or "no kernel" in f.smoke.reason:
                fix = f"install qemu-system-x86 and a kernel {self.where} to smoke-test KVM"
            else:
                fix = "run the checks with the smoke test (smoke=True) to confirm a kernel boots under KVM"
            if self.forced == "tcg":
                verdict, fix = "skip", ""
            self.add(KVM_HW, u.why + ("; accel forced to tcg" if self.forced == "tcg" else ""),
                     verdict, fix, data=u)
        else:
            if self.forced == "kvm":
                fix = (f"set {'host' if self.role == 'l0' else 'l2'}.accel: auto (or tcg) in the parameters "
                       f"so {self.guests} runs under TCG, or run on a machine with hardware KVM")
            elif self.role == "l0":
                fix = ("nothing to change for the lab: L1 runs under TCG (slower); for KVM speed use a host "
                       "with VT-x/AMD-V enabled in the firmware")
            else:
                fix = ("L2 runs under TCG inside L1 (about 4 times slower): give L1 a CPU with vmx/svm, "
                       "e.g. <cpu mode='maximum'/> under TCG or host-passthrough with nested KVM on the host")
            self.add(KVM_HW, u.why, self.no_kvm_verdict(), fix, data=u)

    def nested(self):
        k = self.f.kvm
        if k.nested is not None:
            observed = f"{k.nested_module} nested={k.nested}"
        elif k.paravirtual:
            observed = f"kvm_pvm: no nested parameter (nested_pvm={k.nested_pvm} on the kernel command line)" \
                if k.nested_pvm is not None else "kvm_pvm: no nested parameter"
        else:
            observed = "no kvm_intel/kvm_amd loaded"
        if self.role == "l1":
            self.add(NESTED, f"{observed}; not needed in L1: L2 runs no guests of its own", "skip")
            return
        if self.accel == "tcg":
            self.add(NESTED, f"{observed}; not needed: L1 runs under TCG, whose -cpu max offers svm to L1",
                     "skip")
            return
        if k.nested_on:
            self.add(NESTED, observed, "pass")
            return
        module = k.nested_module or k.hw_module or ("kvm_intel" if self.f.cpu.virt_flag == "vmx" else "kvm_amd")
        fix = (f"echo 'options {module} nested=1' > /etc/modprobe.d/kvm-nested.conf, then with no VM running: "
               f"modprobe -r {module} && modprobe {module} (or reboot)")
        verdict = "fail" if self.p.l2.accel == "kvm" else "warn"
        self.add(NESTED, f"{observed}: L1 gets no vmx/svm, so L2 would run under TCG inside L1", verdict, fix)

    # --- IOMMU ---------------------------------------------------------------
    def iommu(self):
        io = self.f.iommu
        needed = self.role == "l1" or self.p.host.require_iommu

        def add(name, observed, ok, fix, warn_only=False):
            if not needed:
                self.add(name, f"{observed}; not needed on L0 in the lab (host.require_iommu: false)", "skip")
            else:
                self.add(name, observed, "pass" if ok else ("warn" if warn_only else "fail"), "" if ok else fix)

        if self.role == "l0":
            table_fix = ("enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, then boot with the "
                         "IOMMU on (see 'kernel command line')")
        else:
            table_fix = ("give L1 an emulated IOMMU: <iommu model='intel'><driver intremap='on' caching_mode='on' "
                         "iotlb='on'/></iommu> and <ioapic driver='qemu'/> in its domain XML "
                         "(QEMU: -device intel-iommu,intremap=on,device-iotlb=on), then restart L1")
        add(IOMMU_TABLE, ", ".join(io.tables) or "no DMAR or IVRS table in /sys/firmware/acpi/tables",
            bool(io.tables), table_fix)

        kind = io.kind
        flag = {"intel": "intel_iommu=on iommu=pt", "amd": "amd_iommu=on iommu=pt"}.get(
            kind, "intel_iommu=on iommu=pt (DMAR) or amd_iommu=on iommu=pt (IVRS)")
        boot_fix = _bootloader_fix(self.f.os, flag, self.where)
        if io.enabled:
            shown = io.enabled_lines[:2] + ([f"/sys/class/iommu: {' '.join(io.class_iommu)}"] if io.class_iommu else [])
            observed = "; ".join(shown)
        elif io.log_error:
            observed = f"no kernel log ({io.log_error}); /sys/class/iommu empty"
        else:
            observed = f"no IOMMU lines in {io.log_source or 'the kernel log'}; /sys/class/iommu empty"
        add(IOMMU_ON, observed, io.enabled, boot_fix if io.tables else table_fix)

        add(IRQ_REMAP, io.irq_remap_lines[0] if io.irq_remap_lines else
            "no 'DMAR-IR: Enabled IRQ remapping' or 'AMD-Vi: Interrupt remapping enabled' line",
            io.irq_remapping,
            ("enable interrupt remapping / x2APIC in the firmware setup and do not boot with intremap=off"
             if self.role == "l0" else
             "L1's IOMMU needs intremap='on' with <ioapic driver='qemu'/> (QEMU: kernel-irqchip=split)"))

        add(IOMMU_GROUPS, f"{io.groups} groups in /sys/kernel/iommu_groups", io.groups > 0,
            "the groups appear once the IOMMU is enabled: see 'IOMMU enabled'")

        flags = io.cmdline_flags
        shown = " ".join(f"{k}={v}" if v else k for k, v in flags.items()) or "no IOMMU flags"
        off = [f"{k}={v}" for k, v in flags.items() if v.split(",")[0] in ("off", "0")]
        if off:
            add(CMDLINE, f"{shown}: the IOMMU is turned off", False, _bootloader_fix(
                self.f.os, flag, self.where) + f" (and remove {' '.join(off)})")
        elif kind == "intel" and flags.get("intel_iommu", "").split(",")[0] != "on" and not io.enabled:
            add(CMDLINE, f"{shown}: Intel IOMMU (DMAR) present but intel_iommu=on missing", False, boot_fix)
        elif kind is None:
            add(CMDLINE, f"{shown}; no IOMMU present to turn on", False, table_fix)
        else:
            note = "" if "iommu" in flags else " (iommu=pt not set: optional, passthrough mode for host devices)"
            add(CMDLINE, shown + note, True, "")

    # --- libvirt and QEMU ----------------------------------------------------
    def libvirt(self):
        lv, q = self.f.libvirt, self.f.qemu
        start = ("virtlogd -d; libvirtd -d (without systemd), or systemctl start libvirtd"
                 f" {self.where}; install libvirt-daemon-system and libvirt-clients if missing")
        if not lv.reachable:
            self.add(LIBVIRT, f"{lv.uri}: {lv.error}", "fail", start)
        else:
            self.add(LIBVIRT, f"{lv.uri} answers" + (f" ({lv.error})" if lv.error else ""),
                     "warn" if lv.error else "pass", "see the error above" if lv.error else "")
        if lv.reachable:
            need = MIN_LIBVIRT_TCG if self.accel == "tcg" and self.role == "l0" else MIN_LIBVIRT
            have = _version(lv.libvirt_version)
            if not have:
                self.add(LIBVIRT_VERSION, "unknown", "warn", "check `virsh version`")
            elif have < need:
                self.add(LIBVIRT_VERSION, f"libvirt {lv.libvirt_version}", "warn",
                         f"libvirt {'.'.join(map(str, need))} or newer is expected {self.where} "
                         "(IOMMU driver options; <cpu mode='maximum'/> under TCG): upgrade libvirt")
            else:
                self.add(LIBVIRT_VERSION, f"libvirt {lv.libvirt_version}", "pass")
        else:
            self.add(LIBVIRT_VERSION, "libvirt not reachable", "skip")

        qv = lv.qemu_version or q.version
        if qv:
            self.add(QEMU_VERSION, f"QEMU {qv} ({q.binary})", "pass")
        else:
            self.add(QEMU_VERSION, f"{q.binary}: {q.error or 'version unknown'}", "fail",
                     f"install QEMU {self.where}: apt-get install qemu-system-x86 (Debian) "
                     "or dnf install qemu-kvm (RHEL)")

        if self.role == "l0":
            self.tcg_race(qv)

        iommu_dev = viommu_device(self.p, self.f)
        needed = {"l0": {iommu_dev: "L1's emulated IOMMU", "nvme": "the NVMe drive given to L1"},
                  "l1": {"vfio-pci": "passing the NVMe through to L2"}}[self.role]
        for dev in (iommu_dev, "nvme", "vfio-pci"):
            name = qemu_device_check(dev)
            if not q.available:
                self.add(name, f"QEMU not runnable: {q.error}",
                         "fail" if dev in needed else "skip", f"install QEMU {self.where}" if dev in needed else "")
            elif q.offers(dev):
                self.add(name, f"offered by {q.binary}" + (f" (for {needed[dev]})" if dev in needed else ""), "pass")
            elif dev in needed:
                self.add(name, f"{q.binary} -device help has no {dev}", "fail",
                         f"install a QEMU build with {dev} {self.where} (Debian: qemu-system-x86)")
            else:
                self.add(name, f"not offered; not needed {self.where}", "skip")

        if not lv.reachable:
            self.add(MACHINE_Q35, "libvirt not reachable", "skip")
            self.add(DOMAIN_TYPES, "libvirt not reachable", "skip")
            return
        if lv.q35:
            canon = "q35" if "q35" in lv.machines else next(m for m in lv.machines if m.startswith("pc-q35"))
            self.add(MACHINE_Q35, f"{canon} offered ({len(lv.machines)} machine types)", "pass")
        else:
            self.add(MACHINE_Q35, f"no q35 among {len(lv.machines)} machine types", "fail",
                     f"install qemu-system-x86 {self.where}; the {self.guests} needs the q35 machine for its IOMMU")
        want = "kvm" if self.accel == "kvm" else "qemu"
        offered = ", ".join(lv.domain_types) or "none"
        note = ""
        if "kvm" in lv.domain_types and self.accel == "tcg":
            note = f"; libvirt lists kvm, but KVM is not usable here: {self.guests} uses type 'qemu' (TCG)"
        if want in lv.domain_types:
            self.add(DOMAIN_TYPES, f"{offered}{note}", "pass")
        else:
            self.add(DOMAIN_TYPES, f"{offered}: no '{want}' for x86_64 hvm", "fail",
                     f"install qemu-system-x86 {self.where} and restart libvirtd"
                     + ("; for 'kvm' /dev/kvm must be usable by libvirt" if want == "kvm" else ""))

    def tcg_race(self, qemu_version: str | None):
        """QEMU < 8.1's multi-threaded TCG can keep a translation block built from a page
        another vCPU is live-patching (int3-based text_poke, which KVM in L1 triggers at
        every VM start and stop): L1's kernel then stalls for good."""
        p = self.p
        vcpus = p.l1.sockets * p.l1.cores * p.l1.threads
        have = _version(qemu_version)
        if self.accel != "tcg" or vcpus < 2:
            why = "L1 runs under KVM" if self.accel != "tcg" else "L1 has one vCPU"
            self.add(TCG_RACE, f"not at risk: {why}", "pass")
            return
        if not have:
            self.add(TCG_RACE, "QEMU version unknown", "warn", "check `qemu-system-x86_64 --version`: 8.1 or newer")
            return
        observed = f"L1 under TCG with {vcpus} vCPUs, QEMU {qemu_version}"
        if have >= TCG_RACE_FIXED_IN:
            self.add(TCG_RACE, observed + " (the multi-threaded TCG race is fixed since 8.1)", "pass")
            return
        fix = ("QEMU before 8.1 has a multi-threaded TCG race (fixed upstream by \"accel/tcg: Always lock pages "
               "before translation\") that stalls L1 once KVM runs in it: on Debian 12 run `make setup`, "
               "which installs QEMU and libvirt from bookworm-backports, then restart libvirtd; or give L1 one "
               "vCPU (l1.cores: 1, l1.sockets: 1, l1.threads: 1), or set host.accept_tcg_stall_risk: true")
        if p.host.accept_tcg_stall_risk:
            self.add(TCG_RACE, observed + ": stall risk accepted (host.accept_tcg_stall_risk)", "warn", fix)
        else:
            self.add(TCG_RACE, observed + ": L1 may stall", "fail", fix)

    # --- resources -----------------------------------------------------------
    def resources(self):
        f, p = self.f, self.p
        need_mib = p.l1.memory_mib if self.role == "l0" else p.l2.memory_mib
        key = "l1.memory_mib" if self.role == "l0" else "l2.memory_mib"
        m = f.memory
        observed = f"{m.available_mib} MiB available of {m.total_mib} MiB; {self.guests} needs {need_mib} MiB"
        if m.available_mib < need_mib:
            self.add(MEMORY, observed, "fail",
                     f"lower {key} to at most {max(m.available_mib - MEMORY_HEADROOM_MIB, 0)} MiB, or free memory {self.where}")
        elif m.available_mib < need_mib + MEMORY_HEADROOM_MIB:
            self.add(MEMORY, observed + f" (less than {MEMORY_HEADROOM_MIB} MiB left over)", "warn",
                     f"lower {key}, or free memory {self.where}")
        else:
            self.add(MEMORY, observed, "pass")

        vcpus = p.l1.vcpus if self.role == "l0" else p.l2.vcpus
        online = f.cpu.online
        nodes = f.topology.nodes
        observed = f"{len(online)} CPUs online ({format_cpuset(online)}), {len(nodes)} NUMA node(s); {self.guests} has {vcpus} vCPUs"
        if vcpus <= len(online):
            self.add(CPUS, observed, "pass")
        else:
            what = "l1.sockets x cores x threads" if self.role == "l0" else "l2.vcpus"
            self.add(CPUS, observed + ": overcommitted", "warn", f"lower {what} to at most {len(online)}")

        if self.role != "l0":
            return
        topo = f.topology
        if p.l1.cpuset:
            asked = parse_cpuset(p.l1.cpuset)
            missing = sorted(set(asked) - set(online))
            in_nodes = sorted({n for c in asked if (n := topo.node_of(c)) is not None})
            suggestion, why = choose_cpuset(nodes, topo.siblings, vcpus, p.l1.threads)
            hint = f" (suggested: {suggestion}, {why})" if suggestion else ""
            if missing:
                self.add(NUMA, f"l1.cpuset {p.l1.cpuset}: CPUs {format_cpuset(missing)} are not online here",
                         "fail", f"choose CPUs from {format_cpuset(online)}, or leave l1.cpuset empty{hint}")
            elif len(in_nodes) > 1:
                self.add(NUMA, f"l1.cpuset {p.l1.cpuset} spans NUMA nodes {', '.join(map(str, in_nodes))}", "warn",
                         f"keep L1 inside one node{hint}")
            elif len(asked) < vcpus:
                self.add(NUMA, f"l1.cpuset {p.l1.cpuset}: {len(asked)} CPUs for {vcpus} vCPUs (node {in_nodes[0]})",
                         "warn", f"give at least {vcpus} CPUs{hint}")
            else:
                self.add(NUMA, f"l1.cpuset {p.l1.cpuset} inside node {in_nodes[0]}", "pass")
            return
        suggestion, why = choose_cpuset(nodes, topo.siblings, vcpus, p.l1.threads)
        mem = ", ".join(f"node {n}: {mib} MiB" for n, mib in sorted(topo.memory_mib.items()))
        mem = f" [{mem}]" if mem else ""
        if suggestion:
            self.add(NUMA, f"l1.cpuset empty; suggested {suggestion} ({why}){mem}", "pass", data=suggestion)
        elif len(nodes) == 1:
            self.add(NUMA, f"l1.cpuset empty; one NUMA node, nothing to place ({why})", "pass")
        else:
            self.add(NUMA, f"l1.cpuset empty; {why}{mem}", "warn",
                     "lower l1.cores/threads to fit one node, or accept L1 spanning nodes")

    def disk(self):
        d = self.f.disk
        if d is None:
            return
        size = self.p.nvme.size_gib
        if d.avail_bytes is None:
            self.add(DISK, f"{d.path}: df failed at {d.checked}: {d.error}", "warn",
                     f"check the folder of nvme.backing_file {self.where}")
            return
        avail_gib = d.avail_bytes / GIB
        where = f"{d.checked} on {d.mount}"
        observed = f"{avail_gib:.1f} GiB free at {where}; nvme.size_gib {size:g}"
        biggest = biggest_file(d.fstype, 4096)
        if d.exists:
            self.add(DISK, f"{d.path} exists already; {avail_gib:.1f} GiB free on {d.mount}", "pass")
        elif biggest is not None and size * GIB > biggest:
            self.add(DISK, f"{observed}: {d.fstype} holds files of at most {biggest / GIB:g} GiB", "fail",
                     f"lower nvme.size_gib, or put nvme.backing_file on another filesystem {self.where}")
        elif avail_gib >= size:
            self.add(DISK, observed, "pass")
        else:  # the file could be made sparse, but the NVMe would fail once written past the free space
            most = int(avail_gib * 10) / 10
            self.add(DISK, observed + ": the backing file does not fit", "fail",
                     f"free space on {d.mount}, " + (f"lower nvme.size_gib to at most {most:g}, " if most > 0 else "")
                     + "or set nvme.backing_file to a folder with room")


def judge(f: HostFacts, params: Params, role: str | None = None) -> list[Check]:
    """The checks for facts read by ``gather``."""
    j = _Judge(f, params, role or f.role)
    j.cpu_and_kvm()
    j.nested()
    j.iommu()
    j.libvirt()
    j.resources()
    j.disk()
    return j.checks


def host_checks(guest: Guest, params: Params, role: str = "l0", smoke: bool = True) -> list[Check]:
    """Read a machine's facts through ``guest`` and judge them.
    role 'l0': the host that runs L1; role 'l1': L1, which runs L2."""
    return judge(gather(guest, params, role, smoke), params, role)


def by_name(checks: Iterable[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def format_table(checks: Iterable[Check]) -> str:
    """The checks as a plain text table: verdict, name, observed, fix."""
    rows = [(c.verdict.upper(), c.name, c.observed, c.fix) for c in checks]
    w0 = max((len(r[0]) for r in rows), default=4)
    w1 = max((len(r[1]) for r in rows), default=4)
    out = []
    for v, n, o, fix in rows:
        out.append(f"{v:<{w0}}  {n:<{w1}}  {o}")
        if fix:
            out.append(f"{'':<{w0}}  {'':<{w1}}  fix: {fix}")
    return "\n".join(out)
