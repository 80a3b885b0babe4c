"""helpers.libvirt_xml: the XML each builder writes is what libvirt's schemas and
libvirt itself (its test driver) accept, and compare/virt-install behave.
"""
from __future__ import annotations

import shutil
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers.libvirt_xml import (
    CPU,
    IOMMU,
    OS,
    QEMU_NS,
    RNG,
    VCPU,
    Channel,
    Controller,
    Disk,
    Domain,
    Features,
    HostdevPCI,
    Interface,
    Memballoon,
    QemuCommandline,
    Serial,
    differences,
    nvme_qemu_args,
    supports_native_nvme,
    user_net_qemu_args,
    virt_install_command,
)

VALIDATOR = shutil.which("virt-xml-validate")
needs_validator = pytest.mark.skipif(
    VALIDATOR is None, reason="virt-xml-validate not installed (Debian package libvirt-clients)")


# --- the domains the runbook builds -------------------------------------------------------

def seed_l1() -> Domain:
    """The seed's L1 on a real host: KVM, host CPU, pinned, two vhost NICs, NVMe via QEMU args."""
    return Domain(
        name="nested-kvm", type="kvm", memory_mib=32768,
        vcpu=VCPU(16, cpuset="16-23,40-47"),
        os=OS(machine="q35"),
        cpu=CPU("host-passthrough", sockets=1, cores=8, threads=2),
        features=Features(ioapic_driver="qemu", kvm_hidden=True),
        devices=[
            Disk("/kvm/nested/img-nested.qcow2", "qcow2", "vda", "virtio", cache="none"),
            Interface("bridge", "bridge0", driver_name="vhost", queues=8),
            Interface("bridge", "bridge0", driver_name="vhost", queues=8),
            IOMMU("intel", intremap=True, caching_mode=True, iotlb=True),
        ],
        qemu_args=QemuCommandline(nvme_qemu_args("/kvm/nested/nvme-em/nvme.raw", "1234")),
    )


def lab_l1() -> Domain:
    """The lab's L1: TCG, cpu maximum, SSH-only user net and the NVMe via QEMU args."""
    return Domain(
        name="lab-l1", type="qemu", memory_mib=2048,
        vcpu=VCPU(2),
        cpu=CPU("maximum"),
        features=Features(ioapic_driver="qemu"),
        devices=[
            Disk("/var/lib/nested-nvme/l1.raw", "raw", cache="unsafe"),
            IOMMU(),
            Serial("/var/lib/nested-nvme/l1-serial.log"),
            Channel(),
            RNG(),
            Memballoon("none"),
        ],
        qemu_args=QemuCommandline(
            nvme_qemu_args("/var/lib/nested-nvme/nvme.raw", "1234")
            + user_net_qemu_args(2222)),
        description="nested-nvme lab L1",
    )


def l2() -> Domain:
    """L2 inside L1: KVM, direct kernel boot, the NVMe passed through by VFIO."""
    return Domain(
        name="nvmetest", type="kvm", memory_mib=8192,
        vcpu=VCPU(4),
        os=OS(kernel="/var/lib/nested-nvme/vmlinuz", initrd="/var/lib/nested-nvme/initrd.img",
              cmdline="console=ttyS0 root=/dev/vda rw"),
        cpu=CPU("host-passthrough"),
        devices=[
            Disk("/var/lib/nested-nvme/nvmetest.qcow2", "qcow2", cache="none"),
            Interface("bridge", "bridge0", driver_name="vhost", queues=2),
            HostdevPCI.from_bdf("0000:00:02.0"),
            Serial("/var/lib/nested-nvme/l2-serial.log", kind="pty"),
            Channel(),
            Memballoon(),
        ],
        uuid="6f1d8a38-8f0e-4b5e-9d0e-7c1c2a4b5e01",
    )


def every_option() -> Domain:
    """Every other branch the builders have, so the schema sees them all."""
    return Domain(
        name="every-option", type="kvm", memory_mib=1024,
        vcpu=VCPU(4, cpuset="0-3"),
        os=OS(boot_dev="hd"),
        cpu=CPU("custom", sockets=2, cores=1, threads=2, check="partial", model="qemu64"),
        features=Features(acpi=False, apic=True, ioapic_driver="kvm"),
        devices=[
            Disk("/dev/vg0/root", "raw", "sda", "sata", cache="writeback", serial="ROOT0", readonly=True),
            Disk("/srv/b.qcow2", "qcow2", "vdb", "virtio", cache="directsync"),
            Interface("user", mac="52:54:00:12:34:56"),
            Interface("bridge", "br0", model="e1000e"),
            IOMMU(intremap=False, caching_mode=True, iotlb=None, eim=False),
            HostdevPCI.from_nodedev("pci_0000_03_00_1", managed=False),
            Serial("/var/log/every.log", kind="file", console=False, append=True),
            Channel("org.example.ch.0"),
            RNG("/dev/random"),
            Memballoon("virtio"),
            Controller("pci", model="pcie-root-port"),
        ],
        uuid="0b7d4b0e-21b5-4c52-8d4e-6f8a6e0c1d23",
        description="all branches",
    )


def native_nvme() -> Domain:
    """The NVMe as a disk on libvirt's native NVMe bus (libvirt >= 11.5) instead of QEMU args."""
    return Domain(
        name="nvme-native", type="qemu", memory_mib=2048,
        vcpu=VCPU(2), cpu=CPU("maximum"), features=Features(ioapic_driver="qemu"),
        devices=[
            Disk("/var/lib/nested-nvme/l1.raw", "raw", cache="unsafe"),
            Disk("/var/lib/nested-nvme/nvme.raw", "raw", bus="nvme", serial="1234"),
            IOMMU(),
        ],
    )


SCHEMA_VALID = {"seed_l1": seed_l1, "lab_l1": lab_l1, "l2": l2, "every_option": every_option}


def validate(xml: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return subprocess.run([VALIDATOR, str(path), "domain"], capture_output=True, text=True, timeout=60)


@pytest.fixture
def test_conn():
    """libvirt's own test driver: libvirt's parser and normalizer, no hypervisor."""
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def define_and_dump(conn, xml: str) -> str:
    """Define under a unique name (test:///default is shared in the process), dump, undefine."""
    root = ET.fromstring(xml)
    root.find("name").text += "-" + uuidlib.uuid4().hex[:8]
    unique = ET.tostring(root, encoding="unicode")
    dom = conn.defineXML(unique)
    try:
        dumped = dom.XMLDesc(0)
    finally:
        dom.undefine()
    # put the name back so the comparison is about everything else
    back = ET.fromstring(dumped)
    back.find("name").text = ET.fromstring(xml).find("name").text
    return ET.tostring(back, encoding="unicode")


# --- schema and libvirt acceptance --------------------------------------------------------

@needs_validator
@pytest.mark.parametrize("name", sorted(SCHEMA_VALID))
def test_schema_accepts(name, tmp_path):
    result = validate(SCHEMA_VALID[name]().to_xml(), tmp_path, name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_validator
def test_schema_check_can_fail(tmp_path):
    """The validator really judges: a vcpu count that is not a number is refused."""
    xml = seed_l1().to_xml().replace(">16</vcpu>", ">sixteen</vcpu>")
    assert validate(xml, tmp_path, "broken").returncode != 0


@pytest.mark.parametrize("name", sorted(SCHEMA_VALID))
def test_test_driver_defines_and_normalized_xml_still_matches(name, test_conn):
    domain = SCHEMA_VALID[name]()
    desired = domain.to_xml()
    actual = define_and_dump(test_conn, desired)
    assert ET.fromstring(actual).get("type") == domain.type  # the test driver keeps kvm/qemu
    expected = []
    if domain.qemu_args is not None:
        # The test driver does not keep the qemu namespace (the qemu driver does): the one
        # difference left is the whole <qemu:commandline>, and differences() must say so.
        assert "commandline" not in actual
        expected = ["qemu:commandline: missing"]
    assert differences(desired, actual) == expected


def test_native_nvme_disk_form():
    """libvirt 11.5 NEWS: <target dev='nvme0n1' bus='nvme'/> plus a <serial> (QEMU needs one)."""
    root = ET.fromstring(native_nvme().to_xml())
    nvme = [d for d in root.iter("disk") if d.find("target").get("bus") == "nvme"]
    assert len(nvme) == 1
    assert nvme[0].find("target").attrib == {"dev": "nvme0n1", "bus": "nvme"}
    assert nvme[0].findtext("serial") == "1234"
    assert nvme[0].find("driver").get("type") == "raw"
    assert root.find(f"{{{QEMU_NS}}}commandline") is None
    controller = ET.fromstring(Controller("nvme", index=0, serial="1234").to_xml())
    assert controller.attrib == {"type": "nvme", "index": "0"} and controller.findtext("serial") == "1234"
    with pytest.raises(ValueError, match="serial"):
        Disk("/srv/nvme.raw", "raw", bus="nvme")
    with pytest.raises(ValueError, match="nvme0n1"):
        Disk("/srv/nvme.raw", "raw", target_dev="vdb", bus="nvme", serial="1")


@needs_validator
def test_native_nvme_against_installed_libvirt(tmp_path, test_conn):
    """On libvirt >= 11.5 schema and parser accept the native bus; older ones refuse exactly it."""
    libvirt = pytest.importorskip("libvirt")
    xml = native_nvme().to_xml()
    without = native_nvme()
    without.devices = [d for d in without.devices if not (isinstance(d, Disk) and d.bus == "nvme")]
    assert validate(without.to_xml(), tmp_path, "without-nvme").returncode == 0
    result = validate(xml, tmp_path, "native-nvme")
    if supports_native_nvme(test_conn.getLibVersion()):
        assert result.returncode == 0, result.stdout + result.stderr
        assert differences(xml, define_and_dump(test_conn, xml)) == []
    else:
        assert result.returncode != 0
        with pytest.raises(libvirt.libvirtError, match="nvme"):
            test_conn.defineXML(xml)


def test_supports_native_nvme_threshold():
    assert not supports_native_nvme(9_000_000)
    assert not supports_native_nvme(11_004_000)
    assert supports_native_nvme(11_005_000)
    assert supports_native_nvme(12_000_000)


# --- the XML itself ------------------------------------------------------------------------

def test_seed_l1_xml_says_what_the_seed_says():
    root = ET.fromstring(seed_l1().to_xml())
    assert root.get("type") == "kvm"
    assert root.findtext("memory") == str(32768 * 1024) and root.find("memory").get("unit") == "KiB"
    vcpu = root.find("vcpu")
    assert (vcpu.text, vcpu.get("placement"), vcpu.get("cpuset")) == ("16", "static", "16-23,40-47")
    assert root.find("os/type").attrib == {"arch": "x86_64", "machine": "q35"}
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("cpu/topology").attrib == {"sockets": "1", "cores": "8", "threads": "2"}
    assert root.find("features/ioapic").get("driver") == "qemu"
    assert root.find("features/kvm/hidden").get("state") == "on"
    assert root.find("devices/iommu/driver").attrib == {"intremap": "on", "caching_mode": "on", "iotlb": "on"}
    nics = root.findall("devices/interface")
    assert len(nics) == 2
    for nic in nics:
        assert nic.find("source").get("bridge") == "bridge0"
        assert nic.find("driver").attrib == {"name": "vhost", "queues": "8"}
    disk = root.find("devices/disk")
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    args = [a.get("value") for a in root.find(f"{{{QEMU_NS}}}commandline")]
    assert args == ["-drive", "file=/kvm/nested/nvme-em/nvme.raw,if=none,id=nvm,format=raw",
                    "-device", "nvme,drive=nvm,serial=1234,bus=pcie.0,addr=0x10"]


def test_qemu_namespace_only_with_qemu_args():
    assert "xmlns:qemu=" in seed_l1().to_xml()
    assert "xmlns:qemu" not in l2().to_xml()
    assert "qemu:" not in l2().to_xml()


def test_topology_only_when_given():
    assert ET.fromstring(CPU("maximum").to_xml()).find("topology") is None
    with pytest.raises(ValueError, match="together"):
        CPU("host-passthrough", sockets=1, cores=8)


def test_l2_direct_kernel_boot_and_hostdev():
    root = ET.fromstring(l2().to_xml())
    assert root.findtext("os/kernel") == "/var/lib/nested-nvme/vmlinuz"
    assert root.findtext("os/initrd") == "/var/lib/nested-nvme/initrd.img"
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/vda rw"
    hostdev = root.find("devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    assert hostdev.find("source/address").attrib == {
        "domain": "0x0000", "bus": "0x00", "slot": "0x02", "function": "0x0"}


def test_serial_forms_log_to_a_file():
    file_serial = ET.fromstring(Serial("/tmp/s.log").to_xml())
    assert file_serial.get("type") == "file" and file_serial.find("source").get("path") == "/tmp/s.log"
    assert file_serial.find("target").get("port") == "0"
    pty = ET.fromstring(Serial("/tmp/s.log", kind="pty").to_xml())
    assert pty.get("type") == "pty" and pty.find("log").get("file") == "/tmp/s.log"
    devices = ET.fromstring(lab_l1().to_xml()).find("devices")
    assert devices.find("console/target").attrib == {"type": "serial", "port": "0"}


def test_lab_l1_user_net_is_ssh_only_on_loopback():
    assert user_net_qemu_args(2222) == [
        "-netdev", "user,id=labnet,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", "virtio-net-pci,netdev=labnet,bus=pcie.0,addr=0x11,romfile="]
    root = ET.fromstring(lab_l1().to_xml())
    assert root.find("devices/interface") is None  # no libvirt NIC: the only door is the forward
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("cpu").get("mode") == "maximum" and root.get("type") == "qemu"


def test_qemu_arg_builders_refuse_and_escape():
    assert nvme_qemu_args("/a,b/n.raw", "S1", addr="0x12")[1] == "file=/a,,b/n.raw,if=none,id=nvm,format=raw"
    with pytest.raises(ValueError):
        nvme_qemu_args("/n.raw", "")
    with pytest.raises(ValueError):
        nvme_qemu_args("/n.raw", "1", addr="16")
    with pytest.raises(ValueError):
        user_net_qemu_args(70000)


def test_domain_refuses_what_would_not_start():
    tcg_passthrough = lab_l1()
    tcg_passthrough.cpu = CPU("host-passthrough")
    with pytest.raises(ValueError, match="maximum"):
        tcg_passthrough.to_xml()
    wrong_topology = seed_l1()
    wrong_topology.vcpu = VCPU(8, "16-23")
    with pytest.raises(ValueError, match="16 vCPUs"):
        wrong_topology.to_xml()
    no_split = seed_l1()
    no_split.features = Features(kvm_hidden=True)
    with pytest.raises(ValueError, match="ioapic"):
        no_split.to_xml()
    with pytest.raises(ValueError):
        Domain(name="x", type="xen", memory_mib=1, vcpu=VCPU(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Disk("relative.qcow2")
    with pytest.raises(ValueError):
        Interface("bridge")


# --- BDF ----------------------------------------------------------------------------------

def test_hostdev_from_bdf_and_nodedev():
    dev = HostdevPCI.from_bdf("0000:00:02.0")
    assert (dev.domain, dev.bus, dev.slot, dev.function, dev.managed) == (0, 0, 2, 0, True)
    assert dev.bdf == "0000:00:02.0"
    assert HostdevPCI.from_bdf("0001:3B:1f.7").bdf == "0001:3b:1f.7"
    assert HostdevPCI.from_nodedev("pci_0000_00_02_0") == dev


@pytest.mark.parametrize("bad", ["00:02.0", "0000:00:02", "0000:00:02.8", "0000:00:20.0",
                                 "000:00:02.0", "0000-00-02.0", "zzzz:00:02.0", "", "pci_0000_00_02_0",
                                 " 0000:00:02.0x"])
def test_hostdev_refuses_malformed_bdf(bad):
    with pytest.raises(ValueError, match=r"DDDD:BB:DD\.F"):
        HostdevPCI.from_bdf(bad)


def test_hostdev_refuses_out_of_range_fields():
    with pytest.raises(ValueError):
        HostdevPCI(0, 0, 0x20, 0)
    with pytest.raises(ValueError):
        HostdevPCI(0, 0x100, 0, 0)


# --- compare ------------------------------------------------------------------------------

def test_identical_is_no_difference():
    for build in (seed_l1, lab_l1, l2, every_option, native_nvme):
        xml = build().to_xml()
        assert differences(xml, xml) == []


def test_changed_vcpu_and_memory_are_reported():
    desired = l2().to_xml()
    changed = l2()
    changed.vcpu = VCPU(2)
    changed.memory_mib = 4096
    assert differences(desired, changed.to_xml()) == ["memory: 8388608 KiB -> 4194304 KiB", "vcpu: 4 -> 2"]


def test_memory_units_are_normalized():
    desired = "<domain type='kvm'><memory unit='MiB'>2048</memory></domain>"
    assert differences(desired, "<domain type='kvm'><memory unit='KiB'>2097152</memory></domain>") == []
    assert differences(desired, "<domain type='kvm'><memory>2097152</memory></domain>") == []
    assert differences(desired, "<domain type='kvm'><memory unit='GiB'>4</memory></domain>") == [
        "memory: 2097152 KiB -> 4194304 KiB"]


def test_missing_hostdev_is_reported():
    desired = l2()
    actual = l2()
    actual.devices = [d for d in actual.devices if not isinstance(d, HostdevPCI)]
    assert differences(desired.to_xml(), actual.to_xml()) == [
        "devices/hostdev[source/address=0000:00:02.0]: missing"]


def test_other_hostdev_is_reported_both_ways():
    actual = l2()
    actual.devices = [HostdevPCI.from_bdf("0000:00:03.0") if isinstance(d, HostdevPCI) else d
                      for d in actual.devices]
    assert differences(l2().to_xml(), actual.to_xml()) == [
        "devices/hostdev[source/address=0000:00:02.0]: missing",
        "devices/hostdev[source/address=0000:00:03.0]: not in desired"]


def test_reordered_devices_and_libvirt_defaults_are_no_difference():
    desired = seed_l1().to_xml()
    root = ET.fromstring(desired)
    devices = root.find("devices")
    children = list(devices)
    for child in children:
        devices.remove(child)
    for child in reversed(children):  # libvirt reorders devices
        devices.append(child)
    ET.SubElement(devices, "controller", type="pci", index="0", model="pcie-root")
    ET.SubElement(devices, "input", type="mouse", bus="ps2")
    for nic in devices.iter("interface"):
        ET.SubElement(nic, "mac", address="52:54:00:aa:bb:cc")
    ET.SubElement(root, "uuid").text = "11111111-2222-3333-4444-555555555555"  # desired has none
    root.find("os/type").set("machine", "pc-q35-7.2")  # libvirt expands the alias
    root.find("cpu").set("check", "none")
    root.find("cpu/topology").set("dies", "1")
    for address in root.iter("address"):
        address.set("slot", "2")  # decimal for 0x02
    assert differences(desired, ET.tostring(root, encoding="unicode")) == []


def test_changed_attributes_are_reported_with_their_path():
    desired = seed_l1()
    actual = seed_l1()
    actual.devices = list(actual.devices)
    actual.devices[0] = Disk("/kvm/nested/img-nested.qcow2", "qcow2", cache="writeback")
    actual.devices[2] = Interface("bridge", "bridge1", driver_name="vhost", queues=8)
    actual.os = OS(machine="pc")
    lines = differences(desired.to_xml(), actual.to_xml())
    assert lines == ["os/type@machine: q35 -> pc",
                     "devices/disk[vda]/driver@cache: none -> writeback",
                     "devices/interface[type=bridge]#2/source@bridge: bridge0 -> bridge1"]


def test_qemu_args_compared_as_a_whole():
    desired = seed_l1()
    other = seed_l1()
    other.qemu_args = QemuCommandline(nvme_qemu_args("/kvm/nested/nvme-em/nvme.raw", "9999"))
    [line] = differences(desired.to_xml(), other.to_xml())
    assert line.startswith("qemu:commandline: -drive") and "serial=1234" in line and "serial=9999" in line
    none = seed_l1()
    none.qemu_args = None
    assert differences(desired.to_xml(), none.to_xml()) == ["qemu:commandline: missing"]
    assert differences(none.to_xml(), desired.to_xml())[0].startswith("qemu:commandline: not in desired")


def test_uuid_checked_only_when_desired_sets_it():
    with_uuid = l2()
    other = l2()
    other.uuid = "00000000-0000-0000-0000-000000000001"
    assert differences(with_uuid.to_xml(), other.to_xml()) == [
        "uuid: 6f1d8a38-8f0e-4b5e-9d0e-7c1c2a4b5e01 -> 00000000-0000-0000-0000-000000000001"]
    other.uuid = None
    assert differences(other.to_xml(), with_uuid.to_xml()) == []


def test_domain_type_change_is_reported():
    desired = lab_l1()
    actual = lab_l1()
    actual.type = "kvm"
    assert differences(desired.to_xml(), actual.to_xml()) == ["domain@type: qemu -> kvm"]


# --- virt-install -------------------------------------------------------------------------

def test_virt_install_command_has_the_seeds_flags():
    cmd = virt_install_command(seed_l1())
    lines = cmd.splitlines()
    assert lines[0] == "virt-install \\"
    assert all(line.endswith(" \\") for line in lines[:-1]) and lines[-1].strip() == "--print-xml"
    for flag in ("--machine q35", "--virt-type=kvm", "--name=nested-kvm", "--features kvm_hidden=on,ioapic.driver=qemu",
                 "--vcpus sockets=1,cores=8,threads=2,placement=static,cpuset=16-23,40-47",
                 "--cpu=host-passthrough", "--memory=32768",
                 "--disk path=/kvm/nested/img-nested.qcow2,driver.type=qcow2,cache=none,bus=virtio",
                 "--network bridge=bridge0,model=virtio,driver_name=vhost,driver_queues=8",
                 "--iommu model=intel,driver.intremap=on,driver.caching_mode=on,driver.iotlb=on",
                 "--qemu-commandline='-drive file=/kvm/nested/nvme-em/nvme.raw,if=none,id=nvm,format=raw'",
                 "--qemu-commandline='-device nvme,drive=nvm,serial=1234,bus=pcie.0,addr=0x10'",
                 "--nographics"):
        assert f"    {flag} \\" in lines, flag
    assert sum("--network bridge=bridge0" in line for line in lines) == 2


def test_virt_install_command_l2():
    cmd = virt_install_command(l2())
    assert "--hostdev 0000:00:02.0 \\" in cmd
    assert "--vcpus 4,placement=static" in cmd
    assert "--boot 'kernel=/var/lib/nested-nvme/vmlinuz,initrd=/var/lib/nested-nvme/initrd.img," \
           "kernel_args=\"console=ttyS0 root=/dev/vda rw\"'" in cmd
    assert "--virt-type=qemu" in virt_install_command(lab_l1())
    assert "--cpu=maximum" in virt_install_command(lab_l1())
    assert "bus=nvme" in virt_install_command(native_nvme())
    virt_install_command(every_option())  # every part has a flag


def test_runbook_l1_has_no_usb_and_its_nic_no_option_rom():
    """Nothing for SeaBIOS and L1's kernel to probe at each boot that the runbook never uses."""
    from pathlib import Path

    from helpers import params
    from helpers.ops.l1 import l1_domain
    p = params.load(Path(__file__).parent.parent / "parameters" / "lab.yaml")
    root = ET.fromstring(l1_domain(p, "tcg", "0-1", Path("/x/l1.qcow2"), Path("/x/console.log"),
                                   native_nvme=False).to_xml())
    usb = root.findall("devices/controller[@type='usb']")
    assert [c.get("model") for c in usb] == ["none"]
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    nic = next(a for a in args if a.startswith("virtio-net-pci,"))
    assert nic.endswith(",romfile=")


def test_cpu_flags_hidden_from_the_guest():
    """A hidden flag is a <feature policy='disable'>, before the topology, and the same in virt-install's form."""
    cpu = ET.fromstring(CPU("maximum", sockets=1, cores=2, threads=1, disabled=("erms", "fsrm")).to_xml())
    assert [(f.get("policy"), f.get("name")) for f in cpu.findall("feature")] == [("disable", "erms"), ("disable", "fsrm")]
    assert [c.tag for c in cpu] == ["feature", "feature", "topology"]
    dom = lab_l1()
    dom.cpu = CPU("maximum", disabled=("erms",))
    assert "--cpu=maximum,disable=erms " in virt_install_command(dom) + " "
    with pytest.raises(ValueError, match="libvirt feature name"):
        CPU("maximum", disabled=("erms'/><x",))


def test_l1_under_tcg_hides_the_fast_string_flags_and_under_kvm_sees_the_host_cpu():
    """Under TCG QEMU runs rep movsb/stosb a byte per loop turn: L1's emulated CPU does not offer
    ERMS/FSRM, so Linux copies and zeroes 8 bytes at a time. Under KVM L1 has the host's CPU as it is."""
    from pathlib import Path

    from helpers import params
    from helpers.ops.l1 import l1_domain
    p = params.load(Path(__file__).parent.parent / "parameters" / "lab.yaml")

    def hidden(accel):
        root = ET.fromstring(l1_domain(p, accel, "0-1", Path("/x/l1.qcow2"), Path("/x/console.log"),
                                       native_nvme=False).to_xml())
        return root.find("cpu").get("mode"), [f.get("name") for f in root.findall("cpu/feature[@policy='disable']")]

    assert hidden("tcg") == ("maximum", ["erms", "fsrm"])
    assert hidden("kvm") == ("host-passthrough", [])
    forced = p.model_copy(deep=True)
    forced.l1.cpu_mode = "host-model"
    root = ET.fromstring(l1_domain(forced, "kvm", "0-1", Path("/x/l1.qcow2"), Path("/x/console.log"),
                                   native_nvme=False).to_xml())
    assert root.find("cpu").get("mode") == "host-model" and root.findall("cpu/feature") == []
