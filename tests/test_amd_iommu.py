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
from helpers.checks.viommu import decide_iommu_kind
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


def domain(kind, native_amd=False, p=None):
    p = p or lab()
    dom = l1_ops.l1_domain(p, "tcg", "0-1", Path("/x/l1.qcow2"), Path("/x/console.log"),
                           native_nvme=False, iommu=kind, native_amd_iommu=native_amd)
    return dom, ET.fromstring(dom.to_xml())


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


# --- L1's domain -------------------------------------------------------------------

def test_l1_with_qemu_amd_iommu_keeps_slot_1_free_and_the_nvme_after_it():
    dom, root = domain("amd")
    assert root.find("devices/iommu") is None  # libvirt 11.3 has no model='amd'
    args = qemu_args(root)
    assert args[:2] == ["-device", "amd-iommu,intremap=on,device-iotlb=on"]
    assert args.index("amd-iommu,intremap=on,device-iotlb=on") < next(
        i for i, a in enumerate(args) if a.startswith("nvme,"))
    ports = root.findall("devices/controller[@model='pcie-root-port']")
    slots = {(p.find("address").get("slot"), p.find("address").get("function")) for p in ports}
    assert len(ports) == l1_ops.ROOT_PORTS and {s for s, _ in slots} == {"0x02"}
    assert len(slots) == len(ports)  # one function each
    assert root.find("features/ioapic").get("driver") == "qemu"  # interrupt remapping's split irqchip
    assert "--qemu-commandline='-device amd-iommu,intremap=on,device-iotlb=on'" in virt_install_command(dom)


def test_l1_with_native_amd_iommu():
    _, root = domain("amd", native_amd=True)
    iommu = root.find("devices/iommu")
    assert iommu.get("model") == "amd" and iommu.find("driver").attrib == {"intremap": "on", "iotlb": "on"}
    assert not any(a.startswith("amd-iommu") for a in qemu_args(root))
    assert root.findall("devices/controller[@model='pcie-root-port']") == []  # libvirt places its own


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
    ("auto", False, ["IVRS"], "GenuineIntel", "amd"),  # a real host: its firmware's table
    ("auto", False, ["DMAR"], "AuthenticAMD", "intel"),
    ("auto", False, [], "AuthenticAMD", "amd"),        # no table read: the CPU vendor
    ("auto", False, [], None, "intel"),
])
def test_decide_iommu_kind(value, lab_, tables, vendor, kind):
    got, why = decide_iommu_kind(with_iommu(value, lab_), tables, vendor)
    assert got == kind and why


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


def test_stage_01_on_an_amd_host_checks_qemus_amd_iommu_with_auto():
    """l1.iommu: auto on a real AMD host (IVRS): L1 will get amd-iommu, so QEMU must offer it."""
    from helpers import checks
    p = with_iommu("auto", lab_=False)
    f = checks.gather(host("amd-epyc"), p, "l0", smoke=False)
    assert checks.viommu_device(p, f) == "amd-iommu"
    assert checks.viommu_device(with_iommu("auto", lab_=True), f) == "intel-iommu"  # the lab's default
    got = checks.by_name(checks.judge(f, p, "l0"))
    assert "for L1's emulated IOMMU" in got["QEMU device amd-iommu"].observed
