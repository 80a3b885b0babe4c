"""The AMD vIOMMU path: the kind decided once, the domain built for it (libvirt's
<iommu model='amd'> from 11.5, QEMU's amd-iommu through <qemu:commandline> before),
the kernel that has its driver, and the kernel-log checks that follow the kind."""
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import params
from helpers.errors import RunbookError
from helpers.facts import iommu as iommu_facts
from helpers.libvirt_xml import (IOMMU, amd_iommu_qemu_args, supports_native_amd_iommu, virt_install_command)
from helpers.distro import boot as distro_boot
from helpers.facts import kernel as ik
from helpers.checks.viommu import amd_iommu_options, decide_iommu_kind
from helpers.ops import l1 as l1_ops
from helpers.ops.l1_config import reboot as l1_reboot
from helpers.guest import Result
from hosts import host
from machines import Machine

ROOT = Path(__file__).resolve().parent.parent
QEMU_ARG = "{http://libvirt.org/schemas/domain/qemu/1.0}arg"


def lab(name="lab-amd.yaml", **over):
    p = params.load(ROOT / "parameters" / name)
    return p.model_copy(update=over) if over else p


def domain(kind, native_amd=False, p=None, amd=None):
    p = p or lab()
    dom = l1_ops.l1_domain(p, "tcg", "0-1", Path("/x/l1.qcow2"), Path("/x/console.log"),
                           native_nvme=False, iommu=kind, native_amd_iommu=native_amd, amd=amd)
    return dom, ET.fromstring(dom.to_xml())


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "qemu-amd-iommu"


def recorded(version):
    """`qemu-system-x86_64 -device amd-iommu,help` of that QEMU, parsed (see the fixtures' README)."""
    from helpers.facts.libvirt import parse_device_properties
    return parse_device_properties((FIXTURES / f"{version}.txt").read_text())


def qemu_args(root):
    return [a.get("value") for a in root.iter(QEMU_ARG)]


# --- the libvirt and QEMU forms ---------------------------------------------------

def test_native_amd_iommu_from_libvirt_11_5():
    assert not supports_native_amd_iommu(11_003_000)  # L0 here: its schema offers intel, smmuv3, virtio
    assert supports_native_amd_iommu(11_005_000)


def test_amd_iommu_element_has_no_caching_mode():
    el = IOMMU(model="amd", intremap=True, caching_mode=None, iotlb=True).to_element()
    assert el.get("model") == "amd"
    assert el.find("driver").attrib == {"intremap": "on", "iotlb": "on"}
    el = IOMMU(model="amd", caching_mode=None, passthrough=False, xtsup=True).to_element()
    assert el.find("driver").get("passthrough") == "off" and el.find("driver").get("xtsup") == "on"
    with pytest.raises(ValueError, match="no caching_mode"):
        IOMMU(model="amd", caching_mode=True)
    with pytest.raises(ValueError, match="attribute of iommu model 'amd'"):
        IOMMU(model="intel", xtsup=True)
    with pytest.raises(ValueError, match="iommu model"):
        IOMMU(model="virtio")


def test_amd_iommu_qemu_args():
    assert amd_iommu_qemu_args() == ["-device", "amd-iommu,intremap=on,device-iotlb=on"]
    assert amd_iommu_qemu_args(intremap=False, device_iotlb=False, pt=True, xtsup=False) == [
        "-device", "amd-iommu,intremap=off,device-iotlb=off,pt=on,xtsup=off"]
    assert amd_iommu_qemu_args(device_iotlb=None, pt=False, dma_remap=True) == [
        "-device", "amd-iommu,intremap=on,pt=off,dma-remap=on"]


# --- L1's domain -------------------------------------------------------------------

def test_l1_with_qemu_amd_iommu_keeps_slot_1_free_and_the_nvme_after_it():
    dom, root = domain("amd")
    assert root.find("devices/iommu") is None  # libvirt 11.3 has no model='amd'
    args = qemu_args(root)
    # no QEMU version given: pt=off, harmless where pt is ignored, needed on 9.2 to 10.0.2
    assert args[:2] == ["-device", "amd-iommu,intremap=on,pt=off"]
    assert args.index("amd-iommu,intremap=on,pt=off") < next(
        i for i, a in enumerate(args) if a.startswith("nvme,"))
    assert "bus=pcie.0" in next(a for a in args if a.startswith("nvme,"))  # bus 0
    ports = root.findall("devices/controller[@model='pcie-root-port']")
    slots = {(p.find("address").get("slot"), p.find("address").get("function")) for p in ports}
    assert len(ports) == l1_ops.ROOT_PORTS and {s for s, _ in slots} == {"0x02"}
    assert len(slots) == len(ports)  # one function each
    assert root.find("features/ioapic").get("driver") == "qemu"  # interrupt remapping's split irqchip
    assert "--qemu-commandline='-device amd-iommu,intremap=on,pt=off'" in virt_install_command(dom)


def test_l1_with_native_amd_iommu():
    _, root = domain("amd", native_amd=True)
    iommu = root.find("devices/iommu")
    assert iommu.get("model") == "amd" and iommu.find("driver").attrib == {"intremap": "on", "passthrough": "off"}
    assert not any(a.startswith("amd-iommu") for a in qemu_args(root))
    assert root.findall("devices/controller[@model='pcie-root-port']") == []  # libvirt places its own


def test_l1_on_qemu_10_2_gets_dma_remap_through_qemu_args_even_with_a_native_libvirt():
    """libvirt's <iommu model='amd'> has no dma-remap: QEMU's device then, with it on."""
    amd = amd_iommu_options("10.2.0", recorded("10.2.0"))
    _, root = domain("amd", native_amd=True, amd=amd)
    assert root.find("devices/iommu") is None
    assert qemu_args(root)[:2] == ["-device", "amd-iommu,intremap=on,dma-remap=on"]


# --- amd-iommu's options for the QEMU that runs L1 (recorded -device amd-iommu,help) ----------

def test_recorded_property_lists_parse():
    assert recorded("7.2.22") == {"device-iotlb": "false", "intremap": "auto", "pt": "true"}
    assert recorded("10.0.2") == {"device-iotlb": "off", "intremap": "auto", "pt": "on", "xtsup": "off"}
    assert "dma-remap" in recorded("10.2.0") and "dma-remap" not in recorded("10.1.0")


@pytest.mark.parametrize("version, device, pt_hazard, bus0", [
    ("7.2.22", "amd-iommu,intremap=on", False, True),          # before pass-through mode: pt ignored
    ("10.0.2", "amd-iommu,intremap=on,pt=off", True, True),    # the lab's L0: pt=on bypasses translation
    ("10.1.0", "amd-iommu,intremap=on", False, True),          # 31753d5a336f: pt ignored again
    ("10.2.0", "amd-iommu,intremap=on,dma-remap=on", False, False),  # dma-remap listed: on
])
def test_options_follow_the_qemu_that_runs_l1(version, device, pt_hazard, bus0):
    c = amd_iommu_options(version, recorded(version))
    assert not c.refused and c.device == device
    assert ("pt=off" in c.option_text) == pt_hazard
    assert any("untranslated DMA" in h.what for h in c.hazards) == pt_hazard
    assert c.nvme_on_bus0 is bus0 and any("bus other than 0" in h.what for h in c.hazards) is bus0
    assert "device-iotlb" not in c.options and any("no ATS capability" in w for w in c.why)


def test_the_version_decides_where_the_property_list_cannot_tell():
    """pt is listed by every version (x86-iommu's property): only the version tells 10.0.2 from 10.0.3."""
    assert recorded("10.0.2").keys() <= recorded("10.1.0").keys()
    assert amd_iommu_options("10.0.2", recorded("10.0.2")).options.get("pt") == "off"
    assert "pt" not in amd_iommu_options("10.0.3", recorded("10.0.2")).options  # the stable fix
    assert amd_iommu_options("9.2.0", None).options.get("pt") == "off"
    assert "pt" not in amd_iommu_options("9.1.2", None).options
    unknown = amd_iommu_options(None, None)  # nothing read: pt=off (harmless), the NVMe on bus 0
    assert unknown.options == {"intremap": "on", "pt": "off"} and unknown.nvme_on_bus0 and not unknown.hazards
    assert amd_iommu_options("10.2.1", None).options.get("dma-remap") == "on"  # no list: the version


def test_a_qemu_on_which_the_amd_chain_cannot_work_is_refused_with_the_fix():
    no_dma_remap = amd_iommu_options("10.2.0", recorded("10.1.0"))  # a 10.2 build without dma-remap
    assert "dma-remap" in no_dma_remap.refused and "l1.iommu: intel" in no_dma_remap.fix
    no_pt = {k: v for k, v in recorded("10.0.2").items() if k != "pt"}
    assert "no pt property" in amd_iommu_options("10.0.2", no_pt).refused
    no_ir = {k: v for k, v in recorded("10.0.2").items() if k != "intremap"}
    assert "interrupt remapping" in amd_iommu_options("10.0.2", no_ir).refused
    assert not amd_iommu_options("10.0.2", recorded("10.0.2")).refused


def test_stage_02_refuses_amd_on_such_a_qemu_and_keeps_the_nvme_on_bus_0(monkeypatch):
    from helpers.stages import build_l1
    from helpers.checks import viommu
    monkeypatch.setattr(build_l1, "amd_iommu", lambda ctx: viommu.amd_iommu_options("10.2.0", recorded("10.1.0")))

    class Ctx:
        params = lab()
        state = {"accel": "tcg", "environment": {"L0": {"qemu": "10.2.0"}}}
        l0 = None
    monkeypatch.setattr(build_l1, "iommu_kind", lambda ctx: ("amd", "l1.iommu: amd in the parameters"))
    monkeypatch.setattr(build_l1.cpu_facts, "topology", lambda g: type("T", (), {"nodes": {0: [0, 1]},
                                                                                 "siblings": {}})())
    monkeypatch.setattr(build_l1.l0, "libvirt", lambda p: type("L", (), {"lib_version": lambda self: 11_005_000})())
    with pytest.raises(RunbookError, match="l1.iommu: amd cannot work on L0's QEMU") as e:
        build_l1.definition(Ctx())
    assert "dma-remap" in e.value.hint
    monkeypatch.setattr(build_l1, "amd_iommu", lambda ctx: viommu.amd_iommu_options("10.0.2", recorded("10.0.2")))
    d = build_l1.definition(Ctx())  # libvirt 11.5 could define the NVMe natively, behind a root port
    assert not d.native_nvme and "bus 0" in d.nvme_reason
    root = ET.fromstring(d.xml)  # libvirt 11.5 says intremap and pt itself: <iommu model='amd'>
    assert root.find("devices/iommu").find("driver").attrib == {"intremap": "on", "passthrough": "off"}
    assert any(a.startswith("nvme,drive=nvm") and "bus=pcie.0" in a for a in qemu_args(root))
    assert d.amd.record()["options"] == "intremap=on,pt=off"


def test_l1_intel_unchanged():
    _, root = domain("intel", p=lab("lab.yaml"))
    iommu = root.find("devices/iommu")
    assert iommu.get("model") == "intel"
    assert iommu.find("driver").attrib == {"intremap": "on", "caching_mode": "on", "iotlb": "on"}
    assert not any(a.startswith("amd-iommu") for a in qemu_args(root))
    assert root.findall("devices/controller[@model='pcie-root-port']") == []


# --- the kind, decided once -----------------------------------------------------------

def with_iommu(value, lab_=True):
    p = lab("lab.yaml")
    return p.model_copy(update={"lab": lab_, "l1": p.l1.model_copy(update={"iommu": value})})


@pytest.mark.parametrize("value, lab_, tables, vendor, kind", [
    ("amd", True, [], "GenuineIntel", "amd"),          # the parameter wins
    ("intel", False, ["IVRS"], "AuthenticAMD", "intel"),
    ("auto", True, [], "AuthenticAMD", "intel"),        # the lab's default stays Intel
    ("auto", False, ["IVRS"], "GenuineIntel", "intel"),  # auto: Intel on every host, AMD firmware too
    ("auto", False, ["DMAR"], "AuthenticAMD", "intel"),
    ("auto", False, [], "AuthenticAMD", "intel"),       # an AMD CPU too
    ("auto", False, [], None, "intel"),
])
def test_decide_iommu_kind(value, lab_, tables, vendor, kind):
    got, why = decide_iommu_kind(with_iommu(value, lab_), tables, vendor)
    assert got == kind and why


def test_auto_says_why_intel_on_an_amd_host():
    _, why = decide_iommu_kind(with_iommu("auto", False), ["IVRS"], "AuthenticAMD")
    assert "every host, Intel or AMD" in why and "fully emulated" in why and "l1.iommu: amd" in why
    assert "ACPI IVRS" in why and "AuthenticAMD" in why


def test_lab_amd_parameters_keep_apart_from_the_intel_lab():
    amd, intel = lab(), lab("lab.yaml")
    assert amd.l1.iommu == "amd" and amd.l1.name == "nested-kvm-amd" and amd.l1.network.ssh_port == 2226
    assert str(amd.host.workdir) == "/var/lib/nested-nvme-amd"
    assert str(amd.nvme.backing_file).startswith("/var/lib/nested-nvme-amd/")
    assert (amd.l1.name, amd.l1.network.ssh_port) != (intel.l1.name, intel.l1.network.ssh_port)


# --- the kernel log follows the kind ----------------------------------------------------

def test_amd_host_shows_amd_vi_on():
    f = iommu_facts.iommu(host("amd-epyc"))
    assert iommu_facts.missing_on(f, "amd") == []
    assert "the ACPI DMAR table" in " ".join(iommu_facts.missing_on(f, "intel"))


def test_an_intel_l1_asked_to_be_amd_says_which_vIOMMU_it_has():
    f = iommu_facts.iommu(host("lab-l1"))  # the lab's L1 with the Intel vIOMMU
    missing = " ".join(iommu_facts.missing_on(f, "amd"))
    assert "ACPI IVRS table" in missing and "L1 has DMAR: the intel vIOMMU" in missing
    assert "AMD-Vi: Interrupt remapping enabled" in missing
    assert iommu_facts.missing_on(f, "intel") == []


def test_hints_follow_the_kind():
    assert "amd-iommu,intremap=on" in iommu_facts.l1_hint("amd")
    assert "intel IOMMU" in iommu_facts.l1_hint("intel")


# --- a kernel with the driver -----------------------------------------------------------

CLOUD, GENERIC = "6.1.0-57-cloud-amd64", "6.1.0-57-amd64"
UUID = "0741d9c0-ca8c-44a1-b423-7241ea0320a4"
GRUB_CFG = f"""\
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-{UUID}' {{
}}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-{UUID}' {{
\tmenuentry 'Debian GNU/Linux, with Linux {CLOUD}' --class debian $menuentry_id_option 'gnulinux-{CLOUD}-advanced-{UUID}' {{
\t}}
\tmenuentry 'Debian GNU/Linux, with Linux {GENERIC}' --class debian $menuentry_id_option 'gnulinux-{GENERIC}-advanced-{UUID}' {{
\t}}
}}
"""


def l1_machine(running=CLOUD, generic=True):
    files = {f"/boot/config-{CLOUD}": "CONFIG_INTEL_IOMMU=y\n# CONFIG_AMD_IOMMU is not set\n",
             "/boot/grub/grub.cfg": GRUB_CFG, "/etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\n'}
    if generic:
        files[f"/boot/config-{GENERIC}"] = "CONFIG_AMD_IOMMU=y\nCONFIG_INTEL_IOMMU=y\n"
    boots = [f"vmlinuz-{CLOUD}"] + ([f"vmlinuz-{GENERIC}"] if generic else [])
    return Machine(files=files, programs={"update-grub"},
                   answers={r"^uname -r$": running + "\n", r"^ls -1A /boot$": "\n".join(boots),
                            r"^update-grub$": ""})


def test_has_driver_reads_the_kernel_config():
    assert ik.has_driver("CONFIG_AMD_IOMMU=y\n", "amd") is True
    assert ik.has_driver("# CONFIG_AMD_IOMMU is not set\nCONFIG_AMD_IOMMU_V2=m\n", "amd") is False
    assert ik.has_driver(None, "amd") is None


def test_grub_entry_id_and_default():
    assert distro_boot.grub_entry_id(GRUB_CFG, GENERIC) == f"gnulinux-advanced-{UUID}>gnulinux-{GENERIC}-advanced-{UUID}"
    assert distro_boot.grub_entry_id(GRUB_CFG, "5.10.0-1-amd64") is None
    assert distro_boot.set_grub_default("GRUB_DEFAULT=0\nX=1\n", "a>b") == 'GRUB_DEFAULT="a>b"\nX=1\n'
    assert distro_boot.set_grub_default("X=1\n", "a") == 'X=1\nGRUB_DEFAULT="a"\n'


def test_cloud_kernel_gives_way_to_the_generic_one_for_amd():
    m = l1_machine()
    choice = ik.kernel_for(m, "amd")
    assert choice.running == CLOUD and choice.boot == GENERIC
    grub = distro_boot.DefaultGrub("update-grub")
    plan = grub.plan_default_kernel(m, GENERIC)
    assert plan.changes and "update-grub" in plan.commands()
    assert not m.ran(r"^update-grub$")  # planning changes nothing
    assert grub.apply_default_kernel(m, plan).changed
    assert f'GRUB_DEFAULT="gnulinux-advanced-{UUID}>gnulinux-{GENERIC}-advanced-{UUID}"' in m.files["/etc/default/grub"]
    assert m.ran(r"^update-grub$")
    again = grub.plan_default_kernel(m, GENERIC)  # GRUB_DEFAULT set already, not yet rebooted
    assert not again.changes and "already starts" in again.reason


def test_grubby_sets_the_default_kernel():
    m = Machine(answers={r"^grubby --default-kernel$": f"/boot/vmlinuz-{CLOUD}\n"})
    plan = distro_boot.Grubby().plan_default_kernel(m, GENERIC)
    assert plan.commands() == [f"grubby --set-default /boot/vmlinuz-{GENERIC}"]


def test_the_cloud_kernel_is_kept_for_intel_and_after_the_switch():
    choice = ik.kernel_for(l1_machine(), "intel")
    assert choice.boot is None and "has CONFIG_INTEL_IOMMU=y" in choice.reason
    assert ik.kernel_for(l1_machine(running=GENERIC), "amd").boot is None


def test_no_kernel_with_the_driver_is_a_clear_error():
    choice = ik.kernel_for(l1_machine(generic=False), "amd")  # a fact: it never refuses
    assert choice.boot is None and choice.lacking == "CONFIG_AMD_IOMMU"
    from helpers.stages.configure_l1 import kernel_or_refuse
    with pytest.raises(RunbookError, match="built without CONFIG_AMD_IOMMU") as e:
        kernel_or_refuse(choice, "amd")
    assert "linux-image-amd64" in e.value.hint


def test_reboot_waits_for_the_chosen_kernel():
    state = {"release": CLOUD}
    m = Machine(files={"/proc/cmdline": "ro iommu=pt\n", "/proc/sys/kernel/random/boot_id": "a"},
                answers={r"^uname -r$": lambda c: Result(0, state["release"] + "\n", "")})

    def reboot(cmd):
        state["release"] = GENERIC
        m.files["/proc/sys/kernel/random/boot_id"] = "b"
        return Result(0, "", "")

    m.answers[r"systemctl reboot"] = reboot
    ch = l1_reboot(m, ["iommu=pt"], timeout=10, kernel=GENERIC)
    assert ch.changed and GENERIC in ch.detail
    assert len(m.ran("systemctl reboot")) == 1


def test_reboot_into_another_kernel_than_chosen_is_named():
    m = Machine(files={"/proc/cmdline": "ro iommu=pt\n", "/proc/sys/kernel/random/boot_id": "a"},
                answers={r"^uname -r$": CLOUD + "\n"})
    m.answers[r"systemctl reboot"] = lambda c: (m.files.update({"/proc/sys/kernel/random/boot_id": "b"}),
                                                Result(0, "", ""))[1]
    with pytest.raises(RunbookError, match=f"rebooted into kernel {CLOUD}, not {GENERIC}") as e:
        l1_reboot(m, ["iommu=pt"], timeout=10, kernel=GENERIC)
    assert "GRUB_DEFAULT" in e.value.hint


def test_stage_01_on_an_amd_host_checks_qemus_amd_iommu_when_asked():
    """l1.iommu: amd on a real AMD host (IVRS): L1 will get amd-iommu, so QEMU must offer it;
    auto gives the Intel vIOMMU there too."""
    from helpers import checks
    p = with_iommu("amd", lab_=False)
    f = checks.gather(host("amd-epyc"), p, "l0", smoke=False)
    assert checks.viommu_device(p, f) == "amd-iommu"
    assert checks.viommu_device(with_iommu("auto", lab_=True), f) == "intel-iommu"  # the lab's default
    assert checks.viommu_device(with_iommu("auto", lab_=False), f) == "intel-iommu"  # an AMD host too
    got = checks.by_name(checks.judge(f, p, "l0"))
    assert "for L1's emulated IOMMU" in got["QEMU device amd-iommu"].observed


def amd_host_facts(tmp_path, version):
    """The amd-epyc fixture host with QEMU ``version`` and its recorded -device amd-iommu,help."""
    from helpers import checks
    from hosts import variant
    g = variant("amd-epyc", tmp_path, write={
        "cmd/qemu-version.out": f"QEMU emulator version {version} (recorded)\n",
        "cmd/amd-iommu-help.cmd": "/usr/bin/qemu-system-x86_64 -device amd-iommu,help\n",
        "cmd/amd-iommu-help.out": (FIXTURES / f"{version}.txt").read_text(),
        "cmd/virsh-version.out": (Path(__file__).parent / "fixtures/hosts/amd-epyc/cmd/virsh-version.out")
        .read_text().replace("QEMU 6.2.0", f"QEMU {version}")})
    return checks.gather(g, with_iommu("amd", lab_=False), "l0", smoke=False)


@pytest.mark.parametrize("version, verdict, words", [
    ("10.0.2", "warn", ["QEMU 10.0.2", "untranslated DMA", "bus other than 0"]),
    ("10.1.0", "warn", ["QEMU 10.1.0", "bus other than 0"]),
    ("10.2.0", "pass", ["no known amd-iommu hazard", "dma-remap=on"]),
    ("7.2.22", "warn", ["not measured", "bus other than 0"]),
])
def test_stage_01_names_the_running_qemus_hazard_and_what_the_runbook_does(tmp_path, version, verdict, words):
    from helpers import checks
    f = amd_host_facts(tmp_path, version)
    got = checks.by_name(checks.judge(f, with_iommu("amd", lab_=False), "l0"))[checks.AMD_VIOMMU]
    assert got.verdict == verdict and all(w in got.observed for w in words), got
    if verdict == "warn":
        assert got.fix.startswith("nothing to do: ") and "the runbook keeps the NVMe on pcie.0 (bus 0)" in got.fix
    if version == "10.0.2":
        assert "the runbook sets pt=off" in got.fix and "amd-iommu,intremap=on,pt=off" in got.fix
    intel = checks.by_name(checks.judge(f, with_iommu("auto", lab_=False), "l0"))
    assert checks.AMD_VIOMMU not in intel  # only with l1.iommu: amd


def test_stage_01_refuses_a_qemu_on_which_the_amd_chain_cannot_work(tmp_path):
    from helpers import checks
    from hosts import variant
    help_text = (FIXTURES / "10.1.0.txt").read_text()  # a "10.2" build whose amd-iommu lists no dma-remap
    g = variant("amd-epyc", tmp_path, write={
        "cmd/qemu-version.out": "QEMU emulator version 10.2.0\n",
        "cmd/amd-iommu-help.cmd": "/usr/bin/qemu-system-x86_64 -device amd-iommu,help\n",
        "cmd/amd-iommu-help.out": help_text,
        "cmd/virsh-version.out": (Path(__file__).parent / "fixtures/hosts/amd-epyc/cmd/virsh-version.out")
        .read_text().replace("QEMU 6.2.0", "QEMU 10.2.0")})
    p = with_iommu("amd", lab_=False)
    got = checks.by_name(checks.judge(checks.gather(g, p, "l0", smoke=False), p, "l0"))[checks.AMD_VIOMMU]
    assert got.verdict == "fail" and "dma-remap" in got.observed and "l1.iommu: intel" in got.fix


@pytest.mark.parametrize("version, target, verdict", [
    ("10.0.2", "l2", "fail"),   # no dma-remap: QEMU refuses VFIO behind amd-iommu
    ("10.1.0", "l2", "fail"),
    ("10.2.0", "l2", "pass"),   # dma-remap=on passes L0's controller on
    ("10.0.2", "l1", None),     # target l1: L1 has no vIOMMU, the check does not apply
])
def test_stage_01_judges_a_host_nvme_behind_amd_iommu_by_l0s_qemu(tmp_path, version, target, verdict):
    from helpers import checks
    f = amd_host_facts(tmp_path, version)
    p = with_iommu("amd", lab_=False)
    p = p.model_copy(update={"nvme": p.nvme.model_copy(update={"source": "host", "target": target})})
    got = checks.by_name(checks.judge(f, p, "l0")).get(checks.AMD_VIOMMU)
    if target == "l1":
        assert got is None or "dma-remap property" not in got.observed
        return
    assert got.verdict == verdict, got
    if verdict == "fail":
        assert "cannot pass a device assigned from L0 on to L2" in got.observed and f"QEMU {version}" in got.observed
        assert "l1.iommu: intel" in got.fix and "nvme.target: l1" in got.fix and "QEMU 10.2" in got.fix


def test_reboot_tries_no_ssh_while_the_guest_agent_is_away():
    """Between the shutdown and the new boot's guest agent, no boot_id is asked over SSH
    (through QEMU's user-mode network such an attempt hangs until its connect timeout)."""
    m = Machine(files={"/proc/cmdline": "ro iommu=pt\n", "/proc/sys/kernel/random/boot_id": "a"})
    m.answers[r"systemctl reboot"] = Result(0, "", "")
    answers = iter([True, False, False, True])  # up before the reboot; away twice; back (a new boot)

    def agent_up() -> bool:
        up = next(answers, True)
        if up and m.ran("systemctl reboot"):
            m.files["/proc/sys/kernel/random/boot_id"] = "b"
        return up
    l1_reboot(m, ["iommu=pt"], timeout=10, agent_up=agent_up)
    assert len(m.ran("boot_id")) == 2  # the one before the reboot, the one once the agent was back


def test_reboot_without_a_guest_agent_asks_ssh_alone():
    m = Machine(files={"/proc/cmdline": "ro iommu=pt\n", "/proc/sys/kernel/random/boot_id": "a"})
    m.answers[r"systemctl reboot"] = lambda c: (m.files.update({"/proc/sys/kernel/random/boot_id": "b"}),
                                                Result(0, "", ""))[1]
    ch = l1_reboot(m, ["iommu=pt"], timeout=10, agent_up=lambda: False)  # never answered, not even before
    assert ch.changed
