"""Facts and checks against fixture hosts (tests/fixtures/hosts), and one
test on the real host (marked ``host``)."""
import shutil

import pytest

from helpers import checks as C
from helpers.checks import Check, choose_accel, format_table, host_checks, smoke
from helpers.facts import cpu, iommu, kvm, libvirt, system
from helpers.guest import Local, Result
from helpers.params import Params
from hosts import FIXTURES, HOSTS, host, variant

SEED_DMESG = (FIXTURES / "seed-xeon4214/cmd/dmesg.out").read_text()
LAB_CMDLINE = (FIXTURES / "lab-pvm/proc/cmdline").read_text()


def params(**sections) -> Params:
    return Params.model_validate(sections)


def lab_params(**sections) -> Params:
    return params(host={"require_iommu": False, **sections.pop("host", {})}, **sections)


def seed_params(**l1) -> Params:
    return params(l1={"cores": 8, "threads": 2, "memory_mib": 32768, **l1})


def run(name, p=None, role="l0", **kw):
    checks = host_checks(host(name), p or params(), role)
    return {c.name: c for c in checks}, checks


# ---------------------------------------------------------------- facts

def test_cpu_facts_seed():
    g = host("seed-xeon4214")
    c = cpu.cpu(g)
    assert (c.vendor, c.virt_flag) == ("GenuineIntel", "vmx")
    assert c.model == "Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz"
    assert c.online == list(range(48))
    t = cpu.topology(g, c.online)
    assert t.nodes[1] == list(range(12, 24)) + list(range(36, 48))
    assert t.siblings[16] == [16, 40] and t.threads_per_core == 2
    assert t.node_of(40) == 1 and set(t.memory_mib) == {0, 1}


def test_cpu_facts_lab_and_amd():
    lab = cpu.cpu(host("lab-pvm"))
    assert lab.vendor == "GenuineIntel" and lab.virt_flag is None and lab.online == [0, 1]
    assert cpu.topology(host("lab-pvm")).nodes == {0: [0, 1]}
    amd = cpu.cpu(host("amd-epyc"))
    assert (amd.vendor, amd.virt_flag) == ("AuthenticAMD", "svm")


def test_topology_without_node_directory(tmp_path):
    g = variant("lab-pvm", tmp_path, remove=("sys/devices/system/node",))
    assert cpu.topology(g).nodes == {0: [0, 1]}


@pytest.mark.parametrize("text, cpus", [("0-3,8\n", [0, 1, 2, 3, 8]), ("", []), (None, []), ("5", [5])])
def test_parse_cpulist(text, cpus):
    assert cpu.parse_cpulist(text) == cpus


def test_kvm_facts_paravirtual_lab():
    k = kvm.kvm(host("lab-pvm"))
    assert k.dev_kvm and k.accessible
    assert k.modules == ["kvm", "kvm_pvm"] and k.modules_source == "/sys/module"
    assert k.paravirtual and k.hw_module is None
    assert k.nested is None and k.nested_pvm == "1"


def test_kvm_facts_nested():
    seed = kvm.kvm(host("seed-xeon4214"))
    assert seed.modules == ["kvm", "kvm_intel"] and seed.modules_source == "/proc/modules"
    assert (seed.nested_module, seed.nested, seed.nested_on) == ("kvm_intel", "Y", True)
    assert kvm.kvm(host("amd-epyc")).nested_on is True
    assert kvm.kvm(host("intel-no-iommu")).nested_on is False


def test_kvm_inaccessible(tmp_path):
    g = variant("seed-xeon4214", tmp_path, write={"cmd/kvm-access.rc": "1\n"})
    k = kvm.kvm(g)
    assert k.dev_kvm and not k.accessible


def test_cmdline_leaves_out_init_arguments():
    cl = kvm.cmdline(host("lab-pvm"))
    assert cl.raw == LAB_CMDLINE.strip()
    assert cl.get("nested_pvm") == "1" and cl.has("nomodule") and cl.get("nomodule") == ""
    assert not cl.has("--firecracker-init") and cl.get("intel_iommu") is None
    assert kvm.cmdline(host("seed-xeon4214")).get("intel_iommu") == "on"


def test_newest_kernel_by_version():
    assert kvm.newest_kernel(host("amd-epyc")) == "/boot/vmlinuz-5.15.0-101-generic"
    assert kvm.newest_kernel(host("seed-xeon4214")) == "/boot/vmlinuz-3.10.0-1160.el7.x86_64"


def test_smoke_usable_and_hung():
    s = smoke.kvm_smoke(host("seed-xeon4214"), 20)
    assert s.status == "usable" and s.usable and s.last_line.endswith(
        "Kernel Offset: 0x2a00000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)")
    h = smoke.kvm_smoke(host("lab-pvm"), 20)
    assert h.status == "not usable" and not h.usable and h.tested
    assert h.last_line == "Probing EDD (edd=off to disable)... ok"
    assert "hung" in h.reason and "20 s" in h.reason


def test_smoke_not_tested(tmp_path):
    no_qemu = variant("lab-pvm", tmp_path / "a", remove=("usr/bin/qemu-system-x86_64",))
    s = smoke.kvm_smoke(no_qemu, 20)
    assert s.status == "not tested" and "QEMU is not installed" in s.reason
    no_kernel = variant("lab-pvm", tmp_path / "b", remove=("boot",))
    s = smoke.kvm_smoke(no_kernel, 20)
    assert s.status == "not tested" and "no kernel" in s.reason


def test_smoke_qemu_error(tmp_path):
    g = host("intel-no-iommu")
    key = kvm.smoke_command("/boot/vmlinuz-6.1.0-18-amd64", 20, "kvm", "qemu-system-x86_64")
    assert key in g.commands
    g.commands[key] = Result(1, "", "Could not access KVM kernel module: Permission denied\n"
                                    "qemu-system-x86_64: failed to initialize kvm: Permission denied\n")
    s = smoke.kvm_smoke(g, 20)
    assert s.status == "not usable" and "failed to initialize kvm" in s.reason


def test_iommu_facts_by_what_is_present():
    seed = iommu.iommu(host("seed-xeon4214"))
    assert seed.tables == ["DMAR"] and seed.kind == "intel" and seed.enabled and seed.irq_remapping
    assert seed.groups == 12 and seed.class_iommu[0] == "dmar0"
    assert seed.cmdline_flags == {"intel_iommu": "on", "iommu": "pt"}
    amd = iommu.iommu(host("amd-epyc"))
    assert amd.tables == ["IVRS"] and amd.kind == "amd" and amd.irq_remapping
    assert "AMD-Vi: Interrupt remapping enabled" in amd.irq_remap_lines
    l1 = iommu.iommu(host("lab-l1"))          # AMD-flavoured CPU, Intel vIOMMU
    assert l1.kind == "intel" and l1.enabled


def test_iommu_default_domain_line_is_not_an_iommu():
    lab = iommu.iommu(host("lab-pvm"))
    assert any("Default domain type" in ln for ln in lab.lines)
    assert lab.tables == [] and lab.kind is None and not lab.enabled and lab.groups == 0


def test_kernel_log_falls_back_to_journalctl():
    io = iommu.iommu(host("intel-no-iommu"))
    assert io.log_source == "journalctl" and not io.enabled and io.tables == []
    log = iommu.kernel_log(Local(root=FIXTURES / "intel-no-iommu"))  # nothing recorded
    assert log.source == "" and "dmesg" in log.error and "journalctl" in log.error


def test_libvirt_facts():
    lv = libvirt.libvirt(host("lab-pvm"))
    assert lv.reachable and lv.libvirt_version == "9.0.0" and lv.qemu_version == "7.2.22"
    assert lv.domain_types == ["qemu", "kvm"] and lv.q35 and "pc-q35-7.2" in lv.machines
    assert lv.emulator == "/usr/bin/qemu-system-x86_64" and lv.host_iommu == "no"
    down = libvirt.libvirt(host("intel-no-iommu"))
    assert not down.reachable and "Failed to connect socket" in down.error


def test_qemu_devices():
    q = libvirt.qemu(host("lab-pvm"), "/usr/bin/qemu-system-x86_64")
    assert q.available and q.version == "7.2.22"
    assert {"intel-iommu", "amd-iommu", "nvme", "vfio-pci"} <= q.devices
    missing = libvirt.qemu(host("lab-pvm"), "/opt/qemu")
    assert not missing.available and missing.error


def test_system_facts():
    g = host("intel-no-iommu")
    m = system.memory(g)
    assert (m.total_mib, m.available_mib) == (15920, 3000)
    d = system.free_disk(g, "/var/lib/nested-nvme/nvme.raw")
    assert (d.checked, d.avail_bytes, d.mount, d.exists) == ("/var/lib", 524288000, "/", False)
    o = system.os_release(host("seed-xeon4214"))
    assert (o.id, o.version_id, o.pretty_name) == ("centos", "7", "CentOS Linux 7 (Core)")
    assert o.like("rhel") and not o.like("debian")


# ---------------------------------------------------------------- checks: whole tables

EXPECTED = {
    # the seed's host, sized like the seed's L1 (8 cores x 2 threads, 32 GiB)
    ("seed-xeon4214", "l0"): dict.fromkeys(
        [C.CPU_VIRT, C.DEV_KVM, C.KVM_HW, C.NESTED, C.IOMMU_TABLE, C.IOMMU_ON, C.IRQ_REMAP, C.IOMMU_GROUPS,
         C.CMDLINE, C.LIBVIRT, C.LIBVIRT_VERSION, C.QEMU_VERSION, "QEMU device intel-iommu", "QEMU device nvme",
         "QEMU device vfio-pci", C.MACHINE_Q35, C.DOMAIN_TYPES, C.MEMORY, C.CPUS, C.NUMA, C.DISK], "pass"),
    ("amd-epyc", "l0"): dict.fromkeys(
        [C.CPU_VIRT, C.DEV_KVM, C.KVM_HW, C.NESTED, C.IOMMU_TABLE, C.IOMMU_ON, C.IRQ_REMAP, C.IOMMU_GROUPS,
         C.CMDLINE, C.LIBVIRT, C.MACHINE_Q35, C.DOMAIN_TYPES, C.MEMORY, C.NUMA, C.DISK], "pass"),
    ("lab-pvm", "l0"): {
        C.CPU_VIRT: "warn", C.DEV_KVM: "pass", C.KVM_HW: "warn", C.NESTED: "skip",
        C.IOMMU_TABLE: "skip", C.IOMMU_ON: "skip", C.IRQ_REMAP: "skip", C.IOMMU_GROUPS: "skip", C.CMDLINE: "skip",
        C.LIBVIRT: "pass", C.LIBVIRT_VERSION: "pass", C.QEMU_VERSION: "pass", "QEMU device intel-iommu": "pass",
        "QEMU device nvme": "pass", C.MACHINE_Q35: "pass", C.DOMAIN_TYPES: "pass", C.MEMORY: "pass",
        C.CPUS: "pass", C.NUMA: "pass", C.DISK: "pass",
        C.TCG_RACE: "fail"},  # recorded with Debian 12's QEMU 7.2 and a 2-vCPU L1
    ("intel-no-iommu", "l0"): {
        C.CPU_VIRT: "pass", C.KVM_HW: "pass", C.NESTED: "warn", C.IOMMU_TABLE: "fail", C.IOMMU_ON: "fail",
        C.IRQ_REMAP: "fail", C.IOMMU_GROUPS: "fail", C.CMDLINE: "fail", C.LIBVIRT: "fail",
        C.LIBVIRT_VERSION: "skip", C.MACHINE_Q35: "skip", C.DOMAIN_TYPES: "skip", C.QEMU_VERSION: "pass",
        "QEMU device nvme": "pass", C.DISK: "fail"},
    ("lab-l1", "l1"): {
        C.CPU_VIRT: "pass", C.DEV_KVM: "pass", C.KVM_HW: "pass", C.NESTED: "skip", C.IOMMU_TABLE: "pass",
        C.IOMMU_ON: "pass", C.IRQ_REMAP: "pass", C.IOMMU_GROUPS: "pass", C.CMDLINE: "pass",
        C.LIBVIRT: "pass", "QEMU device vfio-pci": "pass", C.DOMAIN_TYPES: "pass", C.MEMORY: "pass", C.CPUS: "pass"},
}


@pytest.mark.parametrize("name, role", list(EXPECTED))
def test_verdicts(name, role):
    p = {"seed-xeon4214": seed_params(), "lab-pvm": lab_params()}.get(name, params())
    got, checks = run(name, p, role)
    assert {k: got[k].verdict for k in EXPECTED[name, role]} == EXPECTED[name, role]
    for c in checks:
        assert c.verdict in C.VERDICTS
        if c.verdict in ("warn", "fail"):
            assert c.fix.strip(), f"{c.name} has no fix"
    if role == "l1":
        assert C.DISK not in got and C.NUMA not in got


def test_lab_host_kvm_is_paravirtual_and_accel_is_tcg():
    got, checks = run("lab-pvm", lab_params())
    assert got[C.KVM_HW].observed.startswith(
        "no vmx/svm; /dev/kvm is paravirtual (kvm_pvm): guests will run under TCG")
    assert "hung" in got[C.KVM_HW].observed
    accel, why = choose_accel(checks, "auto")
    assert accel == "tcg" and "kvm_pvm" in why
    assert "L1 runs under TCG" in got[C.NESTED].observed
    # a pass that says what passed: libvirt offers the type L1 will use; kvm is listed but not used
    assert got[C.DOMAIN_TYPES].verdict == "pass"
    assert got[C.DOMAIN_TYPES].observed.startswith("libvirt offers 'qemu' (TCG), the type L1 will use")
    assert "found KVM unusable here, so 'kvm' is not used" in got[C.DOMAIN_TYPES].observed
    assert "paravirtual KVM" in got[C.NESTED].observed and "has no 'nested' parameter" in got[C.NESTED].observed
    for name in (C.IOMMU_TABLE, C.IOMMU_ON, C.IRQ_REMAP, C.IOMMU_GROUPS, C.CMDLINE):
        assert "not needed on L0 in the lab" in got[name].observed


def test_lab_host_forced_kvm_fails():
    got, checks = run("lab-pvm", lab_params(host={"accel": "kvm"}))
    assert got[C.KVM_HW].verdict == "fail" and got[C.CPU_VIRT].verdict == "fail"
    assert "host.accel: auto" in got[C.KVM_HW].fix
    accel, why = choose_accel(checks, "kvm")
    assert accel == "kvm" and "although" in why and "kvm_pvm" in why


def test_lab_host_forced_tcg_skips_the_smoke_boot():
    g = host("lab-pvm")
    p = lab_params(host={"accel": "tcg"})
    f = C.gather(g, p)
    assert f.smoke.status == "not tested" and "forced to tcg" in f.smoke.reason
    got = {c.name: c for c in C.judge(f, p)}
    assert got[C.KVM_HW].verdict == "warn" and "paravirtual (kvm_pvm)" in got[C.KVM_HW].observed
    assert choose_accel(f, "tcg") == ("tcg", "forced: accel is tcg")


def test_lab_host_requiring_an_iommu_fails():
    got, _ = run("lab-pvm", params())
    for name in (C.IOMMU_TABLE, C.IOMMU_ON, C.IRQ_REMAP, C.IOMMU_GROUPS, C.CMDLINE):
        assert got[name].verdict == "fail", name
        assert got[name].fix
    assert "firmware" in got[C.IOMMU_TABLE].fix


def test_seed_forced_tcg():
    p = params(host={"accel": "tcg"})
    got, checks = run("seed-xeon4214", p)
    assert got[C.KVM_HW].verdict == "skip" and got[C.NESTED].verdict == "skip"
    assert choose_accel(checks, "tcg")[0] == "tcg"
    assert choose_accel(checks, "auto")[0] == "kvm"


def test_nested_off():
    got, _ = run("intel-no-iommu")
    fix = got[C.NESTED].fix
    assert "echo 'options kvm_intel nested=1' > /etc/modprobe.d/kvm-nested.conf" in fix
    assert "modprobe -r kvm_intel && modprobe kvm_intel" in fix
    got, _ = run("intel-no-iommu", params(l2={"accel": "kvm"}))
    assert got[C.NESTED].verdict == "fail"


def test_nested_fix_names_the_loaded_module(tmp_path):
    g = variant("amd-epyc", tmp_path, write={"sys/module/kvm_amd/parameters/nested": "0\n"})
    got = {c.name: c for c in host_checks(g, params())}
    assert got[C.NESTED].verdict == "warn" and "options kvm_amd nested=1" in got[C.NESTED].fix


def test_kvm_checks_without_dev_kvm(tmp_path):
    g = variant("intel-no-iommu", tmp_path, remove=("dev/kvm", "sys/module/kvm_intel"),
                write={"proc/modules": "irqbypass 16384 0 - Live 0x0\n"})
    checks = host_checks(g, params())
    got = {c.name: c for c in checks}
    assert got[C.DEV_KVM].verdict == "warn" and "modprobe kvm_intel" in got[C.DEV_KVM].fix
    assert got[C.KVM_HW].verdict == "warn" and "no /dev/kvm" in got[C.KVM_HW].observed
    assert choose_accel(checks)[0] == "tcg"
    forced = {c.name: c for c in host_checks(g, params(host={"accel": "kvm"}))}
    assert forced[C.DEV_KVM].verdict == "fail" and forced[C.KVM_HW].verdict == "fail"


def test_kvm_not_smoke_tested_but_hardware(tmp_path):
    g = variant("seed-xeon4214", tmp_path, remove=("usr/libexec/qemu-kvm",))
    got = {c.name: c for c in host_checks(g, params())}
    assert got[C.KVM_HW].verdict == "warn" and "not smoke-tested" in got[C.KVM_HW].observed
    assert "install qemu-system-x86" in got[C.KVM_HW].fix
    assert choose_accel(list(got.values()))[0] == "kvm"


def test_smoke_turned_off_still_has_a_fix():
    got = {c.name: c for c in C.judge(C.gather(host("seed-xeon4214"), params(), smoke=False), params())}
    assert got[C.KVM_HW].verdict == "warn" and "vmx + kvm_intel" in got[C.KVM_HW].observed
    assert "smoke" in got[C.KVM_HW].fix


def test_seed_l1_before_intel_iommu_on_rhel(tmp_path):
    """The seed's L1 before `grubby --args intel_iommu=on`: DMAR table and IRQ
    remapping, but no DMA remapping."""
    cmdline = (FIXTURES / "seed-xeon4214/proc/cmdline").read_text().replace(" intel_iommu=on iommu=pt", "")
    dmesg = "\n".join(ln for ln in SEED_DMESG.splitlines()
                      if "IOMMU enabled" not in ln and "Directed I/O" not in ln)
    g = variant("seed-xeon4214", tmp_path, remove=("sys/class/iommu", "sys/kernel/iommu_groups"),
                write={"proc/cmdline": cmdline, "cmd/dmesg.out": dmesg})
    got = {c.name: c for c in host_checks(g, seed_params())}
    assert got[C.IOMMU_TABLE].verdict == "pass" and got[C.IRQ_REMAP].verdict == "pass"
    assert got[C.IOMMU_ON].verdict == "fail" and got[C.IOMMU_GROUPS].verdict == "fail"
    assert got[C.CMDLINE].verdict == "fail" and "intel_iommu=on missing" in got[C.CMDLINE].observed
    assert got[C.CMDLINE].fix == ("on the host: grubby --update-kernel ALL --args 'intel_iommu=on iommu=pt', "
                                  "then reboot")
    assert got[C.IOMMU_ON].fix == got[C.CMDLINE].fix


def test_debian_bootloader_fix(tmp_path):
    g = variant("intel-no-iommu", tmp_path, write={"sys/firmware/acpi/tables/DMAR": ""})
    got = {c.name: c for c in host_checks(g, params())}
    assert got[C.IOMMU_TABLE].verdict == "pass" and got[C.CMDLINE].verdict == "fail"
    fix = got[C.CMDLINE].fix
    assert "'intel_iommu=on iommu=pt'" in fix and "/etc/default/grub" in fix and "update-grub" in fix


def test_iommu_turned_off_on_cmdline(tmp_path):
    cmdline = (FIXTURES / "amd-epyc/proc/cmdline").read_text().strip() + " amd_iommu=off\n"
    g = variant("amd-epyc", tmp_path, write={"proc/cmdline": cmdline})
    got = {c.name: c for c in host_checks(g, params())}
    assert got[C.CMDLINE].verdict == "fail" and "amd_iommu=off" in got[C.CMDLINE].fix
    assert "'amd_iommu=on iommu=pt'" in got[C.CMDLINE].fix and "update-grub" in got[C.CMDLINE].fix


def test_l1_judged_by_its_iommu_not_its_cpu_vendor(tmp_path):
    """The lab's L1: AMD-flavoured CPU, Intel vIOMMU: the fix names intel_iommu."""
    cmdline = (FIXTURES / "lab-l1/proc/cmdline").read_text().replace(" intel_iommu=on iommu=pt", "")
    dmesg = "\n".join(ln for ln in (FIXTURES / "lab-l1/cmd/dmesg.out").read_text().splitlines()
                      if "IOMMU enabled" not in ln and "Directed I/O" not in ln)
    g = variant("lab-l1", tmp_path, remove=("sys/class/iommu", "sys/kernel/iommu_groups"),
                write={"proc/cmdline": cmdline, "cmd/dmesg.out": dmesg})
    got = {c.name: c for c in host_checks(g, params(), role="l1")}
    assert got[C.CPU_VIRT].observed.startswith("AuthenticAMD")
    assert got[C.CMDLINE].verdict == "fail"
    assert got[C.CMDLINE].fix.startswith("in L1: add 'intel_iommu=on iommu=pt'")
    assert "amd_iommu" not in got[C.CMDLINE].fix


def test_l1_without_viommu_fails_even_when_the_host_needs_none(tmp_path):
    g = variant("lab-l1", tmp_path, remove=("sys/firmware/acpi/tables/DMAR", "sys/class/iommu",
                                            "sys/kernel/iommu_groups"),
                write={"cmd/dmesg.out": "[    0.000000] Linux version 6.1.0-56-amd64\n"})
    got = {c.name: c for c in host_checks(g, lab_params(), role="l1")}
    assert got[C.IOMMU_TABLE].verdict == "fail"
    assert "<iommu model='intel'>" in got[C.IOMMU_TABLE].fix
    assert got[C.IRQ_REMAP].verdict == "fail" and "intremap='on'" in got[C.IRQ_REMAP].fix


def test_l1_sizes_against_l2():
    got, _ = run("lab-l1", params(l2={"memory_mib": 1500, "vcpus": 4}), role="l1")
    assert got[C.MEMORY].verdict == "warn" and "L2 needs 1500 MiB" in got[C.MEMORY].observed
    assert got[C.CPUS].verdict == "warn" and "l2.vcpus" in got[C.CPUS].fix
    got, _ = run("lab-l1", params(l1={"memory_mib": 4096}, l2={"memory_mib": 2048}), role="l1")
    assert got[C.MEMORY].verdict == "fail" and "l2.memory_mib" in got[C.MEMORY].fix


def test_l1_needs_vfio_pci_not_nvme(tmp_path):
    help_text = (FIXTURES / "lab-l1/cmd/qemu-device-help.out").read_text()
    keep = "\n".join(ln for ln in help_text.splitlines() if '"vfio-pci"' not in ln and '"nvme"' not in ln)
    g = variant("lab-l1", tmp_path, write={"cmd/qemu-device-help.out": keep})
    got = {c.name: c for c in host_checks(g, params(), role="l1")}
    assert got["QEMU device vfio-pci"].verdict == "fail"
    assert got["QEMU device nvme"].verdict == "skip"
    l0 = variant("lab-pvm", tmp_path / "l0", write={"cmd/qemu-device-help.out": keep})
    got = {c.name: c for c in host_checks(l0, lab_params())}
    assert got["QEMU device nvme"].verdict == "fail" and got["QEMU device vfio-pci"].verdict == "skip"


def test_amd_iommu_device_when_asked():
    got, _ = run("seed-xeon4214", params(l1={"iommu": "amd"}))
    assert got["QEMU device amd-iommu"].verdict == "fail"   # the seed's qemu-kvm has none
    assert "QEMU device intel-iommu" not in got


def test_libvirt_down():
    got, _ = run("intel-no-iommu")
    c = got[C.LIBVIRT]
    assert c.verdict == "fail" and "Failed to connect socket" in c.observed
    assert "virtlogd -d; libvirtd -d" in c.fix and "systemctl start libvirtd" in c.fix


def test_domain_type_missing(tmp_path):
    caps = (FIXTURES / "lab-pvm/cmd/virsh-capabilities.out").read_text().replace("<domain type='qemu'/>", "")
    g = variant("lab-pvm", tmp_path, write={"cmd/virsh-capabilities.out": caps})
    got = {c.name: c for c in host_checks(g, lab_params())}
    assert got[C.DOMAIN_TYPES].verdict == "fail" and "no 'qemu'" in got[C.DOMAIN_TYPES].observed


def test_libvirt_too_old_for_tcg(tmp_path):
    g = variant("lab-pvm", tmp_path, write={"cmd/virsh-version.out":
                                            "Using library: libvirt 6.0.0\nRunning hypervisor: QEMU 4.2.1\n"})
    got = {c.name: c for c in host_checks(g, lab_params())}
    assert got[C.LIBVIRT_VERSION].verdict == "warn" and "7.1" in got[C.LIBVIRT_VERSION].fix
    assert got[C.QEMU_VERSION].observed.startswith("QEMU 4.2.1")


def test_memory_and_cpus():
    got, _ = run("intel-no-iommu", params(l1={"memory_mib": 4096, "cores": 16}))
    assert got[C.MEMORY].verdict == "fail" and "lower l1.memory_mib to at most 2488 MiB" in got[C.MEMORY].fix
    assert got[C.CPUS].verdict == "warn" and "overcommitted" in got[C.CPUS].observed
    got, _ = run("intel-no-iommu", params(l1={"memory_mib": 2800}))
    assert got[C.MEMORY].verdict == "warn"


@pytest.mark.parametrize("cpuset, verdict, text", [
    ("16-23,40-47", "pass", "inside node 1"),
    ("8-15,32-39", "warn", "spans NUMA nodes 0, 1"),
    ("16-19", "warn", "4 CPUs for 16 vCPUs"),
    ("40-50", "fail", "48-50 are not online"),
])
def test_numa_cpuset_given(cpuset, verdict, text):
    got, _ = run("seed-xeon4214", seed_params(cpuset=cpuset))
    assert got[C.NUMA].verdict == verdict and text in got[C.NUMA].observed
    if verdict != "pass":
        assert "16-23,40-47" in got[C.NUMA].fix


def test_numa_suggestion():
    got, _ = run("seed-xeon4214", seed_params())
    assert got[C.NUMA].data == "16-23,40-47" and "node 1" in got[C.NUMA].observed
    got, _ = run("seed-xeon4214", seed_params(cores=16))        # 32 vCPUs: no node has them
    assert got[C.NUMA].verdict == "warn" and "no single NUMA node" in got[C.NUMA].observed


def test_disk(tmp_path):
    got, _ = run("intel-no-iommu")
    # a backing file bigger than the free space is a failure, even though it would be made sparse
    assert got[C.DISK].verdict == "fail" and "does not fit" in got[C.DISK].observed
    assert "at most 0.4" in got[C.DISK].fix
    full = variant("intel-no-iommu", tmp_path / "a", write={"cmd/df.out": "Type Avail Mounted on\next4 1048576 /\n"})
    assert {c.name: c for c in host_checks(full, params())}[C.DISK].verdict == "fail"
    fat = variant("intel-no-iommu", tmp_path / "c", write={"cmd/df.out": "Type Avail Mounted on\nvfat 1e12 /\n"
                                                            .replace("1e12", str(10 ** 12))})
    c = {c.name: c for c in host_checks(fat, params(nvme={"size_gib": 8}))}[C.DISK]
    assert c.verdict == "fail" and "vfat holds files of at most 4 GiB" in c.observed
    there = variant("intel-no-iommu", tmp_path / "b", write={"var/lib/nested-nvme/nvme.raw": "",
                                                              "cmd/df2.cmd": "df -B1 --output=fstype,avail,target "
                                                                             "/var/lib/nested-nvme/nvme.raw",
                                                              "cmd/df2.out": "Type Avail Mounted on\next4 524288000 /\n"})
    c = {c.name: c for c in host_checks(there, params())}[C.DISK]
    assert c.verdict == "pass" and "exists already" in c.observed


def test_choose_accel_inputs():
    u = C.KvmUsability(True, "works", True)
    assert choose_accel(u) == ("kvm", "works")
    assert choose_accel(C.KvmUsability(False, "no", True)) == ("tcg", "no")
    assert choose_accel(u, "tcg")[0] == "tcg"
    with pytest.raises(ValueError):
        choose_accel([Check("memory", "x", "pass")])


def test_check_and_table():
    with pytest.raises(ValueError):
        Check("x", "y", "ok")
    with pytest.raises(ValueError):
        host_checks(host("lab-pvm"), lab_params(), role="l2")
    text = format_table([Check("a", "seen", "fail", "do this"), Check("b", "fine", "pass")])
    assert "FAIL  a  seen" in text and "fix: do this" in text and "PASS  b  fine" in text


def test_every_fixture_loads():
    for name in HOSTS:
        g = host(name)
        assert g.commands, name
        t = 60 if name == "lab-l1" else 20
        assert any(k.startswith(f"timeout -k 5 {t} ") for k in g.commands), f"{name}: no smoke boot recorded"


# ---------------------------------------------------------------- the real host

@pytest.mark.host
def test_real_host_lab_checks():
    """This machine (no vmx/svm, kvm_pvm): TCG chosen, the KVM check says why,
    no failing check unless libvirtd is not running."""
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 not installed: run scripts/setup.sh")
    p = lab_params()
    g = Local()
    f = C.gather(g, p, "l0")
    checks = C.judge(f, p, "l0")
    print("\n" + format_table(checks))
    print(f"smoke boot: {f.smoke.status} after {f.smoke.seconds} s, last line {f.smoke.last_line!r}")
    got = {c.name: c for c in checks}
    accel, why = choose_accel(checks, p.host.accel)
    assert accel == "tcg", why
    assert "paravirtual (kvm_pvm)" in got[C.KVM_HW].observed and got[C.KVM_HW].verdict == "warn"
    assert f.smoke.status == "not usable"
    fails = {c.name for c in checks if c.verdict == "fail"}
    if not f.libvirt.reachable:   # libvirtd not started on this machine: a real, fixable failure
        fails -= {C.LIBVIRT}
    assert fails == set(), format_table(checks)


# ---------------------------------------------------------------- the TCG race

QEMU10 = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"


def test_tcg_with_several_vcpus_on_qemu_before_8_1_fails_with_the_way_out():
    got, checks = run("lab-pvm", lab_params(l1={"cores": 2}))
    c = got[C.TCG_RACE]
    assert c.verdict == "fail" and c.observed == "L1 under TCG with 2 vCPUs, QEMU 7.2.22: L1 may stall"
    assert "bookworm-backports" in c.fix and "l1.cores: 1" in c.fix and "host.accept_tcg_stall_risk: true" in c.fix


def test_tcg_race_accepted_one_vcpu_or_qemu_8_1_passes(tmp_path):
    got, _ = run("lab-pvm", lab_params(l1={"cores": 2}, host={"accept_tcg_stall_risk": True}))
    assert got[C.TCG_RACE].verdict == "warn" and "risk accepted" in got[C.TCG_RACE].observed
    got, _ = run("lab-pvm", lab_params(l1={"cores": 1}))
    assert (got[C.TCG_RACE].verdict, got[C.TCG_RACE].observed) == ("pass", "not at risk: L1 has one vCPU")
    new = variant("lab-pvm", tmp_path, write={"cmd/qemu-version.out": QEMU10,
                                               "cmd/virsh-version.out": "Running hypervisor: QEMU 10.0.2\n"})
    checks = host_checks(new, lab_params(l1={"cores": 2}), "l0")
    c = {c.name: c for c in checks}[C.TCG_RACE]
    assert c.verdict == "pass" and "QEMU 10.0.2" in c.observed


def test_tcg_race_does_not_apply_under_kvm_or_in_l1():
    got, _ = run("seed-xeon4214", seed_params())
    assert got[C.TCG_RACE].verdict == "pass" and "L1 runs under KVM" in got[C.TCG_RACE].observed
    got, _ = run("lab-l1", params(), "l1")
    assert C.TCG_RACE not in got


def test_checks_are_a_registry_of_named_functions():
    """Each check is one registered function; judge keeps the registry's order and a check
    that does not apply (NUMA, disk and the TCG race in L1) is left out, not faked."""
    names = [n for n, _ in C.REGISTRY]
    assert len(names) == len(set(names))
    for role in ("l0", "l1"):
        got = [c.name for c in host_checks(host("lab-l1"), params(), role=role)]
        assert got == [n for n in names if n in got]
        assert (C.NUMA in got) == (role == "l0") and (C.TCG_RACE in got) == (role == "l0")
    # one IOMMU device check: the model L1 gets
    amd = [c.name for c in host_checks(host("amd-epyc"), params(l1={"iommu": "amd"}))]
    assert C.qemu_device_check("amd-iommu") in amd and C.qemu_device_check("intel-iommu") not in amd


def test_a_check_that_answers_under_another_name_is_a_bug():
    f = C.gather(host("lab-l1"), params(), "l1")
    C.REGISTRY.append(("misnamed", lambda j: Check("other", "x", "pass")))
    try:
        with pytest.raises(AssertionError, match="registered as 'misnamed'"):
            C.judge(f, params(), "l1")
    finally:
        C.REGISTRY.pop()


def test_stage_01_verdict_stops_a_run_and_lets_check_mode_go_on(tmp_path, capsys):
    """With the seed's parameters on a host that fails them, a run stops at the verdict; check
    mode lists the failures and goes on, so that stage 02 still shows L1's definition."""
    from pathlib import Path

    from helpers import nb
    from helpers.errors import RunbookError
    from helpers.stages import check_host
    seed = Path(__file__).parent.parent / "parameters" / "seed-xeon4214.yaml"
    for mode in ("run", "check"):
        ctx = nb.stage("01", str(seed), str(tmp_path / f"{mode}.json"), show_picture=False, mode=mode)
        ctx.l0 = host("lab-pvm")   # this lab's host: no VT-x, no IOMMU, 4 CPUs for the seed's 16
        ran = [ctx.step(cls()) for cls in check_host.STEPS[:2]]
        assert ran[0].applied and ran[1].result[0] == "kvm"   # host.accel: kvm, whatever the host offers
        if mode == "run":
            with pytest.raises(RunbookError, match=r"check\(s\) failed on the host"):
                ctx.step(check_host.Verdict())
        else:
            verdict = ctx.step(check_host.Verdict())
            assert verdict.applied and any(c.verdict == "fail" for c in verdict.result)
            assert "a run stops here" in capsys.readouterr().out
