"""Stage 04's choices: node device XML, the NVMe selection, IOMMU group viability, refusals."""
from pathlib import Path

import pytest

from helpers.errors import RunbookError
from helpers.facts import pci
from helpers.checks import passthrough as pt
from helpers.guest import Local
from helpers.params import Select
from machines import Machine

FIX = Path(__file__).parent / "fixtures" / "nodedev"


def devices():
    return [pci.parse_nodedev((FIX / f).read_text()) for f in
            ("seed-nvme.xml", "root-port.xml", "virtio-blk.xml", "usb-no-iommu.xml")]


def test_the_seeds_nodedev_dumpxml_is_read_like_the_seed_reads_it():
    d = pci.parse_nodedev((FIX / "seed-nvme.xml").read_text())
    assert d.name == "pci_0000_00_02_0" and d.bdf == "0000:00:02.0"
    assert d.is_nvme and d.driver == "nvme" and d.iommu_group == 7 and d.numa_node == 0
    assert d.ids == "1b36:0010" and d.product == "QEMU NVM Express Controller"
    assert d.group_members == ["0000:00:02.0"]
    assert pci.bdf_fields(d.bdf) == {"domain": "0000", "bus": "00", "device": "02", "function": "0"}


def test_bridges_and_devices_without_a_group():
    port, blk, usb = devices()[1:]
    assert port.is_bridge and not blk.is_bridge
    assert blk.group_members == ["0000:00:01.0", "0000:01:00.0"]
    assert usb.iommu_group is None and usb.numa_node is None


def test_a_non_pci_node_device_is_skipped():
    assert pci.parse_nodedev("<device><name>computer</name><capability type='system'/></device>") is None


SERIALS = {"0000:00:02.0": "1234"}


def test_select_by_serial_or_bdf_or_the_only_one():
    assert pt.select_nvme(devices(), Select(serial="1234"), SERIALS).bdf == "0000:00:02.0"
    assert pt.select_nvme(devices(), Select(bdf="0000:00:02.0"), SERIALS).bdf == "0000:00:02.0"
    assert pt.select_nvme(devices(), Select(), SERIALS).bdf == "0000:00:02.0"


def test_select_from_devices_read_off_sysfs():
    devs = pci.parse_sysfs_listing((FIX.parent / "pci" / "sysfs-l1.txt").read_text())
    dev = pt.select_nvme(devs, Select(serial="1234"), {"0000:00:10.0": "1234"})
    assert dev.bdf == "0000:00:10.0" and dev.name == "pci_0000_00_10_0" and dev.iommu_group == 7


def test_a_wrong_bdf_is_refused_with_what_exists():
    with pytest.raises(RunbookError, match=r"no PCI device at 0000:00:09.0 in L1 \(NVMe controllers there: 0000:00:02.0 \(serial 1234\)\)"):
        pt.select_nvme(devices(), Select(bdf="0000:00:09.0"), SERIALS)


def test_a_non_nvme_device_is_refused():
    with pytest.raises(RunbookError, match=r"0000:01:00.0 is Red Hat, Inc. Virtio block device \(class 0x010000\), not an NVMe"):
        pt.select_nvme(devices(), Select(bdf="0000:01:00.0"), SERIALS)


def test_a_serial_that_matches_nothing():
    with pytest.raises(RunbookError, match="no NVMe controller in L1 matches serial 9999"):
        pt.select_nvme(devices(), Select(serial="9999"), SERIALS)


def test_two_nvmes_need_a_narrower_selection():
    second = pci.parse_nodedev((FIX / "seed-nvme.xml").read_text().replace("<slot>2</slot>", "<slot>3</slot>"))
    with pytest.raises(RunbookError, match="2 NVMe controllers match"):
        pt.select_nvme(devices() + [second], Select(), {"0000:00:02.0": "1234", "0000:00:03.0": "5678"})


NVME, BRIDGE, NET = 0x010802, 0x060400, 0x020000


def test_group_viability():
    assert pt.group_offenders({"0000:00:02.0": ("nvme", NVME)}, "0000:00:02.0") == []
    assert pt.group_offenders({"0000:00:02.0": ("nvme", NVME), "0000:00:01.0": ("pcieport", BRIDGE)},
                              "0000:00:02.0") == []
    assert pt.group_offenders({"0000:00:02.0": ("nvme", NVME), "0000:00:02.1": ("vfio-pci", NET),
                               "0000:00:02.2": (None, NET)}, "0000:00:02.0") == []
    assert pt.group_offenders({"0000:00:02.0": ("nvme", NVME), "0000:00:02.1": ("e1000e", NET)},
                              "0000:00:02.0") == ["0000:00:02.1 (driver e1000e)"]


@pytest.fixture
def l1(tmp_path, monkeypatch):
    """The seed's L1 as a sysfs/procfs-shaped tree (its NVMe at 0000:00:02.0 in group 7,
    / on vda1), read through a real shell: ``l1(mounted=..., root=..., companion=...)``
    gives the Tree (``str(tree.root)`` to read it under)."""
    from nvme_tree import NET, Tree

    def build(mounted: str | None = None, root: str = "vda", companion: str | None = None) -> Tree:
        t = Tree(tmp_path / "tree")
        monkeypatch.setenv("PATH", t.path)
        t.pci("0000:00:02.0", group=7)
        t.nvme("0000:00:02.0")
        t.block("vda", "254:0", 8388608)
        t.partition("vda", "vda1", "254:1", 8386560)
        t.mount("259:0" if root == "nvme0n1" else "254:1", "/", "ext4")
        if mounted:
            t.mount("259:0", mounted, "xfs", "/dev/nvme0n1")
        if companion:
            t.pci(companion, cls=NET, ids="8086:10d3", driver="e1000e", group=7)
        return t
    return build


def test_a_free_nvme_in_its_own_group_passes(l1):
    r = pt.check_passable(Local(), devices()[0], root=str(l1().root))
    assert r.disks == ["nvme0n1"] and r.mounts == [] and r.root_disk == "vda"
    assert r.group_members == {"0000:00:02.0": ("nvme", NVME)} and r.description.serial == "1234"


def test_a_mounted_nvme_is_refused(l1):
    with pytest.raises(RunbookError, match="in use in L1: nvme0n1 on /data"):
        pt.check_passable(Local(), devices()[0], root=str(l1(mounted="/data").root))


def test_l1s_own_system_disk_is_refused(l1):
    with pytest.raises(RunbookError, match="holds L1's own root filesystem"):
        pt.check_passable(Local(), devices()[0], root=str(l1(root="nvme0n1").root))


def test_a_group_with_a_bound_companion_is_refused_and_named(l1):
    with pytest.raises(RunbookError, match=r"IOMMU group 7 of 0000:00:02.0 is not viable: 0000:00:02.1 \(driver e1000e\)"):
        pt.check_passable(Local(), devices()[0], root=str(l1(companion="0000:00:02.1").root))


def test_stage_04_refuses_swap_holders_and_open_files_in_l1_too(l1):
    """The same proof as a host NVMe's: swap, a device-mapper target, a process holding it."""
    t = l1()
    t.swap("/dev/nvme0n1")
    t.holder("nvme0n1", "dm-0", "253:0", dm_name="h23a-lin")
    t.process(4242, "sleep", {0: "/dev/nvme0n1"})
    with pytest.raises(RunbookError) as e:
        pt.check_passable(Local(), devices()[0], root=str(t.root))
    assert e.value.message == ("0000:00:02.0 may not be passed through from L1, for 3 reasons: "
                               "0000:00:02.0 is in use in L1 as swap: nvme0n1, 1.00 GiB; "
                               "0000:00:02.0 is held in L1 by device-mapper: dm-0 (h23a-lin), a device-mapper target, "
                               "on nvme0n1; 0000:00:02.0 is open in L1: sleep (pid 4242) holds /dev/nvme0n1 open")
    assert e.value.hint == ("swapoff /dev/nvme0n1 in L1 (and take it out of /etc/fstab); dmsetup remove h23a-lin in L1 "
                            "(after unmounting it); close it: stop sleep (kill 4242) in L1")


SEED_L2_LSPCI = ("0000:00:00.0 Host bridge [0600]: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller [8086:29c0]\n"
                 "0000:05:00.0 Non-Volatile memory controller [0108]: Red Hat, Inc. QEMU NVM Express Controller "
                 "[1b36:0010] (rev 02)\n")


def test_what_l2_sees_is_read_by_facts_and_judged_by_checks():
    from helpers.facts import storage
    (c,) = storage.parse_lspci(SEED_L2_LSPCI)   # the seed's `lspci -Dnn|grep NVM` in L2
    assert (c.bdf, c.pci_class, c.ids) == ("0000:05:00.0", "0108", "1b36:0010")
    l2 = Machine(answers={r"^lspci -Dnn$": SEED_L2_LSPCI, r"^nvme list -o json$": '{"Devices": []}'}, name="l2")
    assert pt.l2_controller(l2)[0] == c
    with pytest.raises(RunbookError, match="`nvme list` in l2 shows no namespace"):
        pt.l2_namespaces(l2)
    bare = Machine(answers={r"^lspci -Dnn$": SEED_L2_LSPCI.splitlines()[0] + "\n"}, name="l2")
    assert storage.nvme_controllers(bare)[0] == []                   # a fact: nothing there
    with pytest.raises(RunbookError, match="l2 sees no NVMe controller"):  # a judgment: there must be one
        pt.l2_controller(bare)
