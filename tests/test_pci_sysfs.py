"""L1's PCI devices from sysfs and lspci in one command: the same PciDevice values
libvirt's nodedev XML gives, without one virsh process per device."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.facts import pci
from helpers.guest import Local
from machines import Machine

FIX = Path(__file__).parent / "fixtures"
L1 = (FIX / "pci" / "sysfs-l1.txt").read_text()
HOST = (FIX / "pci" / "sysfs-host.txt").read_text()


def by_bdf(text: str) -> dict[str, pci.PciDevice]:
    return {d.bdf: d for d in pci.parse_sysfs_listing(text)}


def test_the_nvme_of_the_lab_l1():
    d = by_bdf(L1)["0000:00:10.0"]
    assert d.is_nvme and not d.is_bridge
    assert d.name == "pci_0000_00_10_0" and d.bdf == "0000:00:10.0" and d.pci_class == 0x010802
    assert d.ids == "1b36:0010" and (d.vendor_id, d.product_id) == ("0x1b36", "0x0010")
    assert d.driver == "nvme" and d.iommu_group == 7 and d.group_members == ["0000:00:10.0"]
    assert d.vendor == "Red Hat, Inc." and d.product == "QEMU NVM Express Controller"
    assert d.numa_node is None  # numa_node -1: libvirt omits <numa>


def test_bridges_and_a_device_without_driver():
    devs = by_bdf(L1)
    host_bridge, port = devs["0000:00:00.0"], devs["0000:00:01.0"]
    assert host_bridge.is_bridge and port.is_bridge
    assert host_bridge.driver is None and port.driver == "pcieport"
    assert (host_bridge.iommu_group, port.iommu_group) == (0, 1)
    assert host_bridge.vendor == "Intel Corporation"
    assert host_bridge.product == "82G33/G31/P35/P31 Express DRAM Controller"
    assert port.product == "QEMU PCIe Root port"


def test_ordered_by_bdf():
    shuffled = "\n".join(reversed(L1.partition(pci.LSPCI_SEP)[0].splitlines())) + "\n" + pci.LSPCI_SEP
    assert [d.bdf for d in pci.parse_sysfs_listing(shuffled)] == ["0000:00:00.0", "0000:00:01.0", "0000:00:10.0"]


def test_a_device_without_iommu_group():
    line = ("0000:00:1d.0 class=0x0c0300 vendor=0x8086 device=0x2934 driver=uhci_hcd "
            "iommu_group= numa_node= members=\n")
    (d,) = pci.parse_sysfs_listing(line + pci.LSPCI_SEP + "\n")
    assert d.iommu_group is None and d.group_members == [] and d.numa_node is None
    assert d.driver == "uhci_hcd" and d.vendor == "" and d.product == ""


def test_without_lspci_names_are_empty_and_the_rest_is_there():
    sysfs_only = L1.partition(pci.LSPCI_SEP)[0]
    for text in (sysfs_only, sysfs_only + pci.LSPCI_SEP + "\n"):  # no part at all; lspci missing in the guest
        devs = by_bdf(text)
        assert all(d.vendor == "" and d.product == "" for d in devs.values())
        assert devs["0000:00:10.0"].is_nvme and devs["0000:00:10.0"].iommu_group == 7


def test_the_same_values_as_libvirts_nodedev_xml():
    """The seed's nodedev-dumpxml samples, described as sysfs and lspci describe them."""
    text = """\
0000:00:02.0 class=0x010802 vendor=0x1b36 device=0x0010 driver=nvme iommu_group=7 numa_node=0 members=0000:00:02.0
0000:00:01.0 class=0x060400 vendor=0x1b36 device=0x000c driver=pcieport iommu_group=1 numa_node=-1 members=0000:01:00.0,0000:00:01.0
0000:01:00.0 class=0x010000 vendor=0x1af4 device=0x1042 driver=virtio-pci iommu_group=1 numa_node=-1 members=0000:00:01.0,0000:01:00.0
0000:00:1d.0 class=0x0c0300 vendor=0x8086 device=0x2934 driver=uhci_hcd iommu_group= numa_node=-1 members=
----lspci----
0000:00:01.0 "PCI bridge [0604]" "Red Hat, Inc. [1b36]" "QEMU PCIe Root port [000c]" -p00 "Red Hat, Inc. [1b36]" "Device [0000]"
0000:00:02.0 "Non-Volatile memory controller [0108]" "Red Hat, Inc. [1b36]" "QEMU NVM Express Controller [0010]" -r02 -p02 "Red Hat, Inc. [1af4]" "Device [1100]"
0000:00:1d.0 "USB controller [0c03]" "Intel Corporation [8086]" "82801I (ICH9 Family) USB UHCI Controller #1 [2934]" -r03 "Red Hat, Inc. [1af4]" "QEMU Virtual Machine [1100]"
0000:01:00.0 "SCSI storage controller [0100]" "Red Hat, Inc. [1af4]" "Virtio block device [1042]" -r01 "Red Hat, Inc. [1af4]" "Device [1100]"
"""
    from_sysfs = by_bdf(text)
    for f in ("seed-nvme.xml", "root-port.xml", "virtio-blk.xml", "usb-no-iommu.xml"):
        from_libvirt = pci.parse_nodedev((FIX / "nodedev" / f).read_text())
        assert from_sysfs[from_libvirt.bdf] == from_libvirt, f


def test_lspci_names_are_parsed_robustly():
    text = """0000:00:03.0 class=0x020000 vendor=0x8086 device=0x10d3 driver=e1000e iommu_group=3 numa_node=-1 members=0000:00:03.0
0000:00:04.0 class=0x020000 vendor=0x1234 device=0xabcd driver= iommu_group=4 numa_node=-1 members=0000:00:04.0
0000:00:05.0 class=0x020000 vendor=0x1af4 device=0x1041 driver= iommu_group=5 numa_node=-1 members=0000:00:05.0
----lspci----
0000:00:03.0 "Ethernet controller [0200]" "Intel Corporation [8086]" "82574L Gigabit Network Connection [10d3]" -p00 "Red Hat, Inc. [1af4]" "Device [0000]"
0000:00:04.0 "Ethernet controller [0200]" "Vendor [1234]" "Device [abcd]" -p00 "" ""
0000:00:05.0 "Ethernet controller [0200]" "Red Hat, Inc. [1af4]" "Virtio "odd name [1041]" -r01
"""
    devs = by_bdf(text)
    assert (devs["0000:00:03.0"].vendor, devs["0000:00:03.0"].product) == (
        "Intel Corporation", "82574L Gigabit Network Connection")
    assert (devs["0000:00:04.0"].vendor, devs["0000:00:04.0"].product) == ("", "")  # unknown to pci.ids
    assert devs["0000:00:05.0"].vendor == "Red Hat, Inc."  # an unbalanced quote: shlex fails, the line still counts


def test_the_real_host_capture():
    sysfs_part = HOST.partition(pci.LSPCI_SEP)[0]
    bdfs = [line.split()[0] for line in sysfs_part.splitlines() if line.strip()]
    devs = pci.parse_sysfs_listing(HOST)
    assert len(devs) > 0 and [d.bdf for d in devs] == sorted(bdfs)
    assert all(d.name == pci.node_device_name(d.bdf) and d.pci_class > 0 for d in devs)
    assert all(d.vendor_id.startswith("0x") and len(d.vendor_id) == 6 for d in devs)
    assert any(d.vendor for d in devs)  # names came from the real lspci


def test_one_round_trip():
    m = Machine(answers={r"/sys/bus/pci/devices": L1})
    devs = pci.pci_devices(m)
    assert len(m.log) == 1 and "virsh" not in m.log[0] and "lspci -Dmmnn" in m.log[0]
    assert [d.bdf for d in devs] == ["0000:00:00.0", "0000:00:01.0", "0000:00:10.0"]


def _fake_sysfs(root: Path) -> Path:
    """A tree shaped like sysfs: devices/<bdf>/{class,...}, driver and iommu_group symlinks."""
    devices, drivers, groups = root / "devices", root / "drivers", root / "iommu_groups"
    for bdf, cls, ven, dev, drv, grp, numa in [
            ("0000:00:10.0", "0x010802", "0x1b36", "0x0010", "nvme", "7", "0"),
            ("0000:00:1f.2", "0x010601", "0x8086", "0x2922", "ahci", "9", "-1"),
            ("0000:00:1f.3", "0x0c0500", "0x8086", "0x2930", None, "9", "-1"),
            ("0000:00:00.0", "0x060000", "0x8086", "0x29c0", None, None, "-1")]:
        d = devices / bdf
        d.mkdir(parents=True)
        for name, value in (("class", cls), ("vendor", ven), ("device", dev), ("numa_node", numa)):
            (d / name).write_text(value + "\n")
        if drv:
            (drivers / drv).mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(os.path.relpath(drivers / drv, d))
        if grp:
            (groups / grp / "devices").mkdir(parents=True, exist_ok=True)
            (groups / grp / "devices" / bdf).symlink_to(os.path.relpath(d, groups / grp / "devices"))
            (d / "iommu_group").symlink_to(os.path.relpath(groups / grp, d))
    return devices


def test_the_script_reads_a_sysfs_shaped_tree(tmp_path):
    devices = _fake_sysfs(tmp_path)
    script = pci.SYSFS_SCRIPT.replace("/sys/bus/pci/devices/*", f"{devices}/*")
    assert script != pci.SYSFS_SCRIPT
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    devs = by_bdf(out.partition(pci.LSPCI_SEP)[0])
    assert list(devs) == ["0000:00:00.0", "0000:00:10.0", "0000:00:1f.2", "0000:00:1f.3"]
    nvme, sata, smbus, host = devs["0000:00:10.0"], devs["0000:00:1f.2"], devs["0000:00:1f.3"], devs["0000:00:00.0"]
    assert nvme.is_nvme and nvme.driver == "nvme" and nvme.iommu_group == 7 and nvme.numa_node == 0
    assert nvme.group_members == ["0000:00:10.0"] and nvme.ids == "1b36:0010"
    assert sata.iommu_group == smbus.iommu_group == 9
    assert sata.group_members == smbus.group_members == ["0000:00:1f.2", "0000:00:1f.3"]
    assert smbus.driver is None and sata.driver == "ahci"
    assert host.iommu_group is None and host.group_members == [] and host.numa_node is None


@pytest.mark.skipif(not os.path.isdir("/sys/bus/pci/devices") or not os.listdir("/sys/bus/pci/devices"),
                    reason="no PCI devices in this machine's sysfs")
def test_this_machine_through_a_local_guest():
    devs = pci.pci_devices(Local())
    assert [d.bdf for d in devs] == sorted(os.listdir("/sys/bus/pci/devices"))
    for d in devs:
        cls = Path(f"/sys/bus/pci/devices/{d.bdf}/class").read_text()
        assert d.pci_class == int(cls, 16)
    if shutil.which("lspci"):
        assert any(d.vendor for d in devs)


def _controller_tree(root: Path, multipath: bool) -> None:
    """The sysfs shape of one NVMe controller at 0000:00:10.0 with one namespace, as
    QEMU 7.2 (no multipath: nvme0/nvme0n1) and QEMU 10 (native multipath: nvme0/nvme0c0n1,
    the block device nvme0n1 in nvme-subsys0) present it to Debian 12's kernel."""
    ctrl = root / "bus/pci/devices/0000:00:10.0/nvme/nvme0"
    ctrl.mkdir(parents=True)
    (ctrl / "serial").write_text("1234\n")
    if multipath:
        (ctrl / "nvme0c0n1").mkdir()
        subsys = root / "class/nvme-subsystem/nvme-subsys0"
        (subsys / "nvme0n1").mkdir(parents=True)
        (subsys / "nvme0").symlink_to(ctrl)
        other = root / "class/nvme-subsystem/nvme-subsys1"  # another controller's subsystem
        (other / "nvme1n1").mkdir(parents=True)
    else:
        (ctrl / "nvme0n1").mkdir()


@pytest.mark.parametrize("multipath", [False, True], ids=["qemu7-no-multipath", "qemu10-native-multipath"])
def test_namespaces_of_a_controller_are_found_with_and_without_native_multipath(tmp_path, multipath):
    _controller_tree(tmp_path, multipath)
    assert pci.block_devices(Local(), "0000:00:10.0", sysfs=str(tmp_path)) == ["nvme0n1"]


def test_no_namespace_and_no_controller_give_no_block_device(tmp_path):
    (tmp_path / "bus/pci/devices/0000:00:10.0/nvme/nvme0").mkdir(parents=True)
    assert pci.block_devices(Local(), "0000:00:10.0", sysfs=str(tmp_path)) == []
    assert pci.block_devices(Local(), "0000:00:11.0", sysfs=str(tmp_path)) == []
