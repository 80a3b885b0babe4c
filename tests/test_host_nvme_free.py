"""Proving an NVMe controller free before it leaves its machine's driver (``prove_free``),
and choosing it (``select_host_nvme``): every hazard built as a sysfs/procfs-shaped tree,
read through a real shell (the same one command a machine runs), and each refusal naming
the thing (namespace or partition, mount point, holder, process and pid) and what to do."""
from __future__ import annotations

import pytest

from helpers.checks import by_name
from helpers.checks import passthrough as pt
from helpers.errors import RunbookError
from helpers.facts import pci
from helpers.guest import Local
from helpers.params import Select
from nvme_tree import BRIDGE, NET, lab_l1

BDF = "0000:00:10.0"
HAZARDS = (pt.NOT_SYSTEM, pt.NOT_MOUNTED, pt.NOT_SWAP, pt.NO_LVM, pt.NO_MD, pt.NO_DM, pt.NO_LOOP, pt.NO_BCACHE,
           pt.NO_ZFS, pt.NOT_OPEN, pt.GROUP, pt.IRQ)


class Counting(Local):
    """This machine, counting the commands run (round trips)."""

    def __init__(self):
        super().__init__()
        self.commands_run = 0

    def _run(self, cmd, timeout, input):
        self.commands_run += 1
        return super()._run(cmd, timeout, input)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    t = lab_l1(tmp_path)
    monkeypatch.setenv("PATH", t.path)
    return t


def prove(t, role="l0", **kw):
    desc, checks = pt.prove_free(Local(), BDF, role=role, root=str(t.root), **kw)
    assert [c.name for c in checks] == list(pt.FREE_CHECKS)
    return desc, by_name(checks)


def only_failure(t, role="l0", **kw):
    """The one failed check (the test built one hazard), and refuse_unless_free's error."""
    _, c = prove(t, role, **kw)
    bad = [x for x in c.values() if x.verdict == "fail"]
    assert len(bad) == 1, [(x.name, x.observed) for x in bad]
    with pytest.raises(RunbookError) as e:
        pt.refuse_unless_free(list(c.values()), BDF)
    assert e.value.message == bad[0].observed and e.value.hint == bad[0].fix
    return bad[0]


# --- describing ---------------------------------------------------------------------------------

def test_the_lab_l1s_nvme_described_in_one_round_trip(tree):
    g = Counting()
    d = pci.describe(g, BDF, root=str(tree.root))
    assert g.commands_run == 1
    assert (d.bdf, d.pci.ids, d.pci.driver, d.model, d.serial, d.firmware) == (
        BDF, "1b36:0010", "nvme", "QEMU NVMe Ctrl", "1234", "10.0.2")
    assert d.controllers == ["nvme0"] and d.generic == ["ng0n1"] and d.disks == ["nvme0n1"]
    (ns,) = d.namespaces
    assert (ns.size_bytes, ns.logical_block, ns.nsid, ns.partitions) == (1 << 30, 512, 1, [])
    assert d.pci.iommu_group == 7 and [m.bdf for m in d.group] == [BDF]
    assert d.reset_methods == ["flr", "bus"] and d.irq_remapped == 2 and d.same_ids == []
    rows = dict(d.rows())
    assert rows["namespace /dev/nvme0n1"] == "1.00 GiB (1,073,741,824 bytes), 512-byte blocks, namespace id 1"
    assert rows["vendor:device"] == "1b36:0010 (Red Hat, Inc. QEMU NVM Express Controller)"
    assert rows["IOMMU group"] == "7: 0000:00:10.0 (nvme)" and rows["reset method"] == "flr, bus"
    assert rows["character devices"] == "/dev/nvme0, /dev/ng0n1"
    for what, value in d.rows():   # words and units, never a raw Python value
        assert isinstance(value, str) and value and not any(w in value for w in ("None", "True", "False", "[", "{"))


def test_namespaces_under_the_nvme_subsystem_qemu_10(tmp_path, monkeypatch):
    """QEMU >= 8 with native multipath: the controller's folder holds nvme0c0n1 only, the
    block device nvme0n1 belongs to nvme-subsys0; a mount there is still found and refused."""
    t = lab_l1(tmp_path, multipath=True)
    monkeypatch.setenv("PATH", t.path)
    d = pci.describe(Local(), BDF, root=str(t.root))
    assert d.disks == ["nvme0n1"] and d.generic == ["ng0n1"] and d.namespaces[0].size_bytes == 1 << 30
    t.mount("259:0", "/data", "xfs", "/dev/nvme0n1")
    assert only_failure(t).observed == f"{BDF} is in use on L0: nvme0n1 on /data (xfs)"


def test_records_cut_short_or_about_other_devices_are_left_out():
    """``holders.parse_uses`` keeps what it can place: records cut short, a holder seen twice,
    a line that is not mountinfo's, a physical volume or a pool's vdev not one of ours are left out."""
    from helpers.facts import holders
    u = holders.parse_uses([r.split("\t") for r in (
        "blk\tnvme0n1\tnamespace\t259:0\t2097152\t1\t512\t\t", "blk\tnvme0n1p1\tpartition\t259:1",
        "on\tdm-0\tnvme0n1", "on\tdm-0\tnvme0n1", "on\tdm-1", "bcache", "loop\tloop0", "sysmnt\t/", "tool",
        "fdunreadable", "mntns\tx\tsh\t36 1 259:0 / /data rw - xfs /dev/nvme0n1 rw", "open\t12",
        "open\tx\tsh\t/dev/nvme0n1", "mnt\tnot a mountinfo line", "pvs", "pvs\t  [unknown]|vg0",
        "zpool\t  pool: tank", "zpool\t\t/dev/sda1  ONLINE", "zpool\t\t/dev/nvme0n1  ONLINE", "unknown\tx")])
    assert list(u.devices) == ["nvme0n1", "dm-0"] and u.devices["dm-0"].on == ["nvme0n1"]
    assert (u.devices["nvme0n1"].size_bytes, u.devices["dm-0"].kind) == (1 << 30, "holder")
    assert (u.mounts, u.openers, u.bcache, u.tools, u.system_mounts, u.pvs, u.fd_unreadable) == ([], [], [], [], {}, {}, 0)
    assert u.zpools == {"nvme0n1": "tank"}


def test_a_clean_nvme_passes_every_hazard(tree):
    desc, c = prove(tree)
    assert all(c[n].verdict == "pass" for n in HAZARDS), [(n, c[n].observed) for n in HAZARDS if c[n].verdict != "pass"]
    assert c[pt.NOT_SYSTEM].observed == "L0's system is elsewhere (/ on vda1)"
    assert c[pt.NOT_MOUNTED].observed == "no filesystem of nvme0n1 is mounted"
    assert c[pt.NOT_OPEN].observed == "no process has nvme0n1 or its character devices open"
    assert c[pt.GROUP].observed == "group 7: 0000:00:10.0 alone"
    pt.refuse_unless_free(list(c.values()), BDF)  # nothing to refuse


def test_a_bdf_that_is_not_there_or_not_an_nvme_is_refused_named(tree):
    with pytest.raises(RunbookError, match=r"no PCI device at 0000:00:11.0 on L0"):
        pt.prove_free(Local(), "0000:00:11.0", role="l0", root=str(tree.root))
    with pytest.raises(RunbookError, match=r"0000:01:00.0 is a Virtio block device \(Red Hat, Inc., class 0x010000\), "
                                           r"not an NVMe controller"):
        pt.prove_free(Local(), "0000:01:00.0", role="l0", root=str(tree.root))


# --- what uses it ----------------------------------------------------------------------------------

def test_the_root_filesystem_on_a_partition(tree):
    tree.partition("nvme0n1", "nvme0n1p2", "259:2", 1000000)
    tree.mountinfo.clear()
    tree.mount("259:2", "/", "ext4", "/dev/nvme0n1p2")
    f = only_failure(tree)
    assert f.name == pt.NOT_SYSTEM
    assert f.observed == f"{BDF} holds L0's own root filesystem / on nvme0n1p2"
    assert "choose another NVMe: L0 cannot give away the disk it runs from" in f.fix


def test_boot_and_efi_on_it_and_the_root_through_lvm(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 1000)
    tree.partition("nvme0n1", "nvme0n1p2", "259:2", 2000)
    tree.partition("nvme0n1", "nvme0n1p3", "259:3", 3000)
    tree.holder("nvme0n1p3", "dm-0", "253:0", dm_name="vg0-root", dm_uuid="LVM-Xyz")
    tree.mountinfo.clear()
    tree.mount("253:0", "/", "ext4", "/dev/mapper/vg0-root")
    tree.mount("259:2", "/boot", "ext4", "/dev/nvme0n1p2")
    tree.mount("259:1", "/boot/efi", "vfat", "/dev/nvme0n1p1")
    _, c = prove(tree)
    assert c[pt.NOT_SYSTEM].verdict == "fail"
    assert c[pt.NOT_SYSTEM].observed == (
        f"{BDF} holds L0's own root filesystem / on dm-0 (vg0-root, on nvme0n1p3), "
        "boot filesystem /boot on nvme0n1p2, EFI system partition /boot/efi on nvme0n1p1")
    assert c[pt.NOT_MOUNTED].verdict == "pass"  # the system mounts are said once, as the system disk
    assert c[pt.NO_LVM].verdict == "fail" and "vgchange -an vg0" in c[pt.NO_LVM].fix


def test_mounted_directly(tree):
    tree.mount("259:0", "/data", "xfs", "/dev/nvme0n1")
    f = only_failure(tree)
    assert f.observed == f"{BDF} is in use on L0: nvme0n1 on /data (xfs)"
    assert f.fix == "umount /data on L0 (and take it out of /etc/fstab)"


def test_mounted_through_a_partition_with_a_space_in_its_mount_point(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 204800)
    tree.mount("259:1", "/mnt/my data", "ext4", "/dev/nvme0n1p1")
    f = only_failure(tree)
    assert f.observed == f"{BDF} is in use on L0: nvme0n1p1 on /mnt/my data (ext4)"
    assert f.fix.startswith("umount /mnt/my data on L0")


def test_a_mount_found_by_its_source_when_the_numbers_differ(tree):
    """btrfs reports an anonymous device number in mountinfo: the source names the partition."""
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 204800)
    tree.mount("0:45", "/srv", "btrfs", "/dev/nvme0n1p1")
    assert only_failure(tree).observed == f"{BDF} is in use on L0: nvme0n1p1 on /srv (btrfs)"


def test_another_disks_mounts_do_not_count(tree):
    tree.block("sda", "8:0", 1000)
    tree.mount("8:0", "/data", "xfs", "/dev/sda")
    tree.swap("/dev/sda")
    _, c = prove(tree)
    assert all(c[n].verdict == "pass" for n in HAZARDS)


def test_active_swap_on_a_partition(tree):
    tree.partition("nvme0n1", "nvme0n1p2", "259:2", 2097152)
    tree.swap("/dev/nvme0n1p2", kib=1048572)
    f = only_failure(tree)
    assert f.name == pt.NOT_SWAP
    assert f.observed == f"{BDF} is in use on L0 as swap: nvme0n1p2, 1.00 GiB"
    assert f.fix == "swapoff /dev/nvme0n1p2 on L0 (and take it out of /etc/fstab)"


def test_swap_on_an_lvm_volume(tree):
    tree.holder("nvme0n1", "dm-1", "253:1", dm_name="vg0-swap", dm_uuid="LVM-abc")
    tree.swap("/dev/dm-1", kib=524284)
    _, c = prove(tree)
    assert c[pt.NOT_SWAP].observed == f"{BDF} is in use on L0 as swap: dm-1 (vg0-swap, on nvme0n1), 512.00 MiB"
    assert c[pt.NO_LVM].verdict == "fail"


def test_an_lvm_logical_volume_mounted(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 2000000)
    tree.holder("nvme0n1p1", "dm-0", "253:0", dm_name="vg--fast-data", dm_uuid="LVM-q8WJ")
    tree.mount("253:0", "/srv", "ext4", "/dev/mapper/vg--fast-data")
    _, c = prove(tree)
    assert c[pt.NO_LVM].observed == (f"{BDF} is used by LVM on L0: dm-0 (vg--fast-data), an LVM logical volume "
                                     "of volume group vg-fast, on nvme0n1p1")
    assert c[pt.NO_LVM].fix == "vgchange -an vg-fast on L0 (after unmounting its volumes)"
    assert c[pt.NOT_MOUNTED].observed == f"{BDF} is in use on L0: dm-0 (vg--fast-data, on nvme0n1p1) on /srv (ext4)"
    assert c[pt.NO_DM].verdict == "pass"   # LVM's own target is said as LVM, once


def test_an_lvm_label_without_lvm2_installed(tree):
    tree.signature("nvme0n1", TYPE="LVM2_member", UUID="abc")
    f = only_failure(tree)
    assert f.name == pt.NO_LVM
    assert f.observed == (f"{BDF} is used by LVM on L0: nvme0n1 carries an LVM physical volume label "
                          "(blkid: LVM2_member; lvm2 is not installed here to say more)")
    assert "pvremove" in f.fix


def test_an_lvm_physical_volume_named_by_pvs(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 2000000)
    tree.signature("nvme0n1p1", TYPE="LVM2_member")
    tree.tool("pvs", "  /dev/nvme0n1p1|archive\n  /dev/sda2|system\n")
    f = only_failure(tree)
    assert f.observed == f"{BDF} is used by LVM on L0: nvme0n1p1 is a physical volume of volume group archive (pvs)"
    assert "vgchange -an archive on L0" in f.fix


def test_an_md_array_member(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 2000000)
    tree.block("sda", "8:0", 2000000)
    tree.holder(["nvme0n1p1", "sda"], "md127", "9:127")
    f = only_failure(tree)
    assert f.observed == f"{BDF} is an md RAID member on L0: md127 (an md array) holds nvme0n1p1"
    assert f.fix == "mdadm --stop /dev/md127 on L0 (after unmounting it)"


def test_an_md_superblock_of_an_array_not_running(tree):
    tree.signature("nvme0n1", TYPE="linux_raid_member")
    f = only_failure(tree)
    assert f.observed == (f"{BDF} is an md RAID member on L0: nvme0n1 carries an md RAID superblock "
                          "(blkid: linux_raid_member), of an array not running")
    assert "mdadm --zero-superblock /dev/nvme0n1" in f.fix


@pytest.mark.parametrize("uuid, kind, fix", [
    ("", "device-mapper", "dmsetup remove h23a-lin"),
    ("CRYPT-LUKS2-0123abcd-h23a-lin", "dm-crypt", "cryptsetup close h23a-lin"),
    ("mpath-3600508b400105e210000900000490000", "multipath", "multipath -f h23a-lin")])
def test_a_device_mapper_target(tree, uuid, kind, fix):
    tree.holder("nvme0n1", "dm-3", "253:3", dm_name="h23a-lin", dm_uuid=uuid)
    f = only_failure(tree)
    assert f.name == pt.NO_DM
    assert f.observed == f"{BDF} is held on L0 by device-mapper: dm-3 (h23a-lin), a {kind} target, on nvme0n1"
    assert f.fix == f"{fix} on L0 (after unmounting it)"


def test_a_loop_device_backed_by_a_partition_and_mounted(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 2000000)
    tree.loop("loop0", "7:0", "/dev/nvme0n1p1")
    tree.loop("loop1", "7:1", "/var/lib/images/other.img")   # a file elsewhere: not ours
    tree.mount("7:0", "/mnt/loop", "ext4", "/dev/loop0")
    _, c = prove(tree)
    assert c[pt.NO_LOOP].observed == f"{BDF} backs a loop device on L0: /dev/loop0 is backed by /dev/nvme0n1p1"
    assert c[pt.NO_LOOP].fix == "losetup -d /dev/loop0 on L0"
    assert c[pt.NOT_MOUNTED].observed == f"{BDF} is in use on L0: loop0 (on nvme0n1p1) on /mnt/loop (ext4)"


def test_bcache_backing_and_cache_devices_and_a_superblock(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 1000)
    tree.partition("nvme0n1", "nvme0n1p2", "259:2", 1000)
    tree.partition("nvme0n1", "nvme0n1p3", "259:3", 1000)
    tree.holder("nvme0n1p1", "bcache0", "252:0")
    tree.bcache_registered("nvme0n1p1")
    tree.bcache_registered("nvme0n1p2")
    tree.signature("nvme0n1p3", TYPE="bcache")
    f = only_failure(tree)
    assert f.observed == (f"{BDF} is used by bcache on L0: bcache0 (bcache) holds nvme0n1p1, "
                          "nvme0n1p2 is registered with bcache (a cache device), "
                          "nvme0n1p3 carries a bcache superblock (blkid: bcache)")
    assert "echo 1 > /sys/block/bcache0/bcache/stop" in f.fix and "wipefs -a /dev/nvme0n1p3" in f.fix


def test_a_zfs_pool_member_with_and_without_zpool(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 1000)
    tree.signature("nvme0n1p1", TYPE="zfs_member", LABEL="tank")
    f = only_failure(tree)
    assert f.observed == (f"{BDF} is a ZFS pool member on L0: nvme0n1p1 carries a ZFS label "
                          "(blkid: zfs_member; no zpool here to name the pool)")
    tree.tool("zpool", "  pool: tank\n state: ONLINE\nconfig:\n\n\tNAME              STATE\n\ttank              ONLINE\n"
                       "\t  /dev/nvme0n1p1  ONLINE       0     0     0\n\nerrors: No known data errors\n")
    f = only_failure(tree)
    assert f.observed == f"{BDF} is a ZFS pool member on L0: nvme0n1p1 is in ZFS pool tank"
    assert f.fix == "zpool export tank on L0"


def test_open_by_processes_named_with_their_pids(tree):
    tree.partition("nvme0n1", "nvme0n1p1", "259:1", 1000)
    tree.process(4242, "sleep", {0: "/dev/nvme0n1", 1: "/dev/null"})
    tree.process(4243, "nvme", {3: "/dev/nvme0"})
    tree.process(4244, "fio", {5: "/dev/ng0n1", 6: "/dev/nvme0n1p1"})
    tree.process(4245, "dd", {3: "/dev/nvme1n1", 4: "/dev/sda"})   # another disk: not ours
    f = only_failure(tree)
    assert f.observed == (f"{BDF} is open on L0: sleep (pid 4242) holds /dev/nvme0n1 open, "
                          "nvme (pid 4243) holds /dev/nvme0 open, fio (pid 4244) holds /dev/ng0n1 open, "
                          "fio (pid 4244) holds /dev/nvme0n1p1 open")
    assert "kill 4242" in f.fix and "kill 4243" in f.fix and "kill 4244" in f.fix and "4245" not in f.fix


def test_processes_whose_open_files_cannot_be_read(tree):
    desc = pci.describe(Local(), BDF, root=str(tree.root))
    desc.uses.fd_unreadable = 3
    c = by_name(pt.judge_free(desc, role="l0"))
    assert c[pt.NOT_OPEN].verdict == "fail"
    assert c[pt.NOT_OPEN].observed == "the open files of 3 processes on L0 could not be read"


def test_everything_at_once_is_refused_in_one_message(tree):
    tree.mount("259:0", "/data", "xfs", "/dev/nvme0n1")
    tree.process(4242, "sleep", {0: "/dev/nvme0n1"})
    _, c = prove(tree)
    with pytest.raises(RunbookError) as e:
        pt.refuse_unless_free(list(c.values()), BDF, "L0")
    assert e.value.message == (f"{BDF} may not be passed through from L0, for 2 reasons: "
                               f"{BDF} is in use on L0: nvme0n1 on /data (xfs); "
                               f"{BDF} is open on L0: sleep (pid 4242) holds /dev/nvme0n1 open")
    assert "umount /data" in e.value.hint and "kill 4242" in e.value.hint


# --- the IOMMU and interrupts ---------------------------------------------------------------------

def test_a_group_with_an_endpoint_on_a_host_driver_is_not_viable(tmp_path, monkeypatch):
    t = lab_l1(tmp_path)
    monkeypatch.setenv("PATH", t.path)
    t.pci("0000:00:10.1", cls=NET, ids="8086:10d3", driver="e1000e", group=7)
    f = only_failure(t)
    assert f.name == pt.GROUP
    assert f.observed == f"IOMMU group 7 of {BDF} is not viable: 0000:00:10.1 (driver e1000e) still on host drivers"


def test_bridges_and_vfio_bound_members_keep_the_group_viable(tree):
    tree.pci("0000:00:10.1", cls=BRIDGE, ids="1b36:000c", driver="pcieport", group=7)
    tree.pci("0000:00:10.2", cls=NET, ids="8086:10d3", driver="vfio-pci", group=7)
    _, c = prove(tree)
    assert c[pt.GROUP].verdict == "pass"
    assert c[pt.GROUP].observed == f"group 7: {BDF} with 0000:00:10.1 (bridge), 0000:00:10.2 (vfio-pci)"


def test_no_iommu_group(tmp_path, monkeypatch):
    t = lab_l1(tmp_path)
    monkeypatch.setenv("PATH", t.path)
    t.pci("0000:00:11.0", group=None)
    t.nvme("0000:00:11.0", ctrl="nvme1", serial="5678", namespaces={"nvme1n1": ("259:5", 1000)})
    _, checks = pt.prove_free(Local(), "0000:00:11.0", role="l1", root=str(t.root))
    (f,) = pt.failed(checks)
    assert f.observed == "0000:00:11.0 has no IOMMU group: the IOMMU is off in L1"
    assert f.fix == "run stage 03 (intel_iommu=on and a reboot) first"


def test_no_interrupt_remapping(tree):
    tree.interrupts(remapped=False)
    f = only_failure(tree)
    assert f.name == pt.IRQ
    assert f.observed == ("no interrupt remapping on L0 (no IR- interrupt chip in /proc/interrupts): "
                          "VFIO would need allow_unsafe_interrupts")
    tree.allow_unsafe_interrupts("Y")
    _, c = prove(tree)
    assert c[pt.IRQ].verdict == "warn" and "allow_unsafe_interrupts=Y" in c[pt.IRQ].observed


# --- warnings ---------------------------------------------------------------------------------------

def test_another_device_with_the_same_vendor_device(tree):
    tree.pci("0000:00:11.0", group=8)
    _, c = prove(tree)
    assert c[pt.SAME_IDS].verdict == "warn"
    assert c[pt.SAME_IDS].observed == ("0000:00:11.0 (nvme) is also 1b36:0010 on L0: binding by vendor:device "
                                       "(new_id, vfio-pci.ids=) would take both")
    assert "binds by address only" in c[pt.SAME_IDS].fix
    assert not pt.failed(list(c.values()))


def test_numa_node_against_l1s_cpus(tmp_path, monkeypatch):
    t = lab_l1(tmp_path)
    monkeypatch.setenv("PATH", t.path)
    t.node(0, "0-3,8-11")
    t.node(1, "4-7,12-15")
    (t.sys / "bus/pci/devices" / BDF / "numa_node").write_text("1\n")
    desc, c = prove(t)
    assert desc.node_cpus == [4, 5, 6, 7, 12, 13, 14, 15]
    assert dict(desc.rows())["NUMA node"] == "1 (CPUs 4-7,12-15)"
    assert c[pt.NUMA].verdict == "pass" and "L1 not pinned yet: place it on that node's CPUs" in c[pt.NUMA].observed
    _, c = prove(t, l1_cpus="2-5")
    assert c[pt.NUMA].verdict == "warn"
    assert c[pt.NUMA].observed == ("the device is on node 1 (CPUs 4-7,12-15), L1's CPUs 2-3 are not: every I/O "
                                   "crosses the link between the sockets")
    assert "l1.cpuset within 4-7,12-15" in c[pt.NUMA].fix
    _, c = prove(t, l1_cpus=[4, 5, 12])
    assert c[pt.NUMA].verdict == "pass"
    assert pci.numa_node_cpus(Local(root=t.root), 1) == [4, 5, 6, 7, 12, 13, 14, 15]


@pytest.mark.parametrize("method, reset, verdict, said", [
    ("flr bus", True, "pass", "reset methods: flr, bus"),
    ("bus", True, "warn", "reset methods: bus: no function-level reset, so between guests the device is reset "
                          "through its bus or slot (and all behind it)"),
    (None, False, "warn", "no reset method at all: no function-level reset, so between guests the device is reset "
                          "not at all"),
    (None, True, "warn", "unknown: the kernel has no reset_method file (before 5.15); a reset exists")])
def test_reset_methods(tmp_path, monkeypatch, method, reset, verdict, said):
    t = lab_l1(tmp_path)
    monkeypatch.setenv("PATH", t.path)
    d = t.sys / "bus/pci/devices" / BDF
    for f in ("reset_method", "reset"):
        (d / f).unlink()
    if method is not None:
        (d / "reset_method").write_text(method + "\n")
    if reset:
        (d / "reset").write_text("")
    _, c = prove(t)
    assert (c[pt.RESET].verdict, c[pt.RESET].observed) == (verdict, said)


def test_already_on_vfio_pci(tmp_path, monkeypatch):
    """An earlier run gave it to VFIO: no block device of it is left here, nothing uses it."""
    t = lab_l1(tmp_path)
    monkeypatch.setenv("PATH", t.path)
    t.pci("0000:00:11.0", driver="vfio-pci", group=8)
    desc, checks = pt.prove_free(Local(), "0000:00:11.0", role="l1", root=str(t.root))
    assert desc.namespaces == [] and desc.serial is None and not pt.failed(checks)
    assert by_name(checks)[pt.DRIVER].observed == "vfio-pci: already given to VFIO, no block device of it in L1"
    assert dict(desc.rows())["namespaces"] == "none visible (driver vfio-pci, not nvme)"
    c = by_name(checks)
    assert c[pt.NOT_MOUNTED].observed == "no namespace of it in L1: nothing mounted"
    assert c[pt.NOT_OPEN].observed == "no process has its character devices open (none in L1)"


# --- choosing the host's NVMe ---------------------------------------------------------------------------

def _two_nvmes(t):
    """The lab L1 plus a second NVMe (serial S5GX, model 'Samsung SSD 980') holding / and /boot."""
    t.pci("0000:00:11.0", ids="144d:a809", group=8,
          names=("Non-Volatile memory controller [0108]", "Samsung Electronics Co Ltd [144d]", "NVMe SSD Controller 980 [a809]"))
    t.nvme("0000:00:11.0", ctrl="nvme1", serial="S5GX", model="Samsung SSD 980 1TB",
           namespaces={"nvme1n1": ("259:5", 1953525168)})
    t.partition("nvme1n1", "nvme1n1p1", "259:6", 1000000)
    t.partition("nvme1n1", "nvme1n1p2", "259:7", 1900000000)
    t.mount("259:7", "/", "ext4", "/dev/nvme1n1p2")
    t.mount("259:6", "/boot", "ext4", "/dev/nvme1n1p1")


def test_the_only_nvme_is_never_taken_by_default(tree):
    _two_nvmes(tree)
    with pytest.raises(RunbookError) as e:
        pt.select_host_nvme(Local(), Select(), root=str(tree.root))
    assert e.value.message == (
        "nvme.select names no NVMe controller: the runbook never takes 'the only NVMe' on L0 by default (it may be "
        "L0's system disk); NVMe controllers on L0: 0000:00:10.0 (serial 1234, model QEMU NVMe Ctrl, 1.00 GiB), "
        "0000:00:11.0 (serial S5GX, model Samsung SSD 980 1TB, 931.51 GiB, holds /, /boot)")
    assert e.value.hint == "set nvme.select.serial (or nvme.select.bdf) to the controller you mean to give away"


def test_even_with_one_nvme_an_empty_selection_is_refused(tree):
    with pytest.raises(RunbookError, match="names no NVMe controller"):
        pt.select_host_nvme(Local(), Select(), root=str(tree.root))


def test_select_by_serial_bdf_or_model(tree):
    _two_nvmes(tree)
    g = Counting()
    d = pt.select_host_nvme(g, Select(serial="1234"), root=str(tree.root))
    assert g.commands_run == 1 and d.bdf == BDF and d.disks == ["nvme0n1"]
    assert pt.select_host_nvme(Local(), Select(bdf="0000:00:11.0"), root=str(tree.root)).serial == "S5GX"
    assert pt.select_host_nvme(Local(), Select(model="Samsung"), root=str(tree.root)).bdf == "0000:00:11.0"
    chosen = pt.select_host_nvme(Local(), Select(serial="S5GX"), root=str(tree.root))
    assert by_name(pt.judge_free(chosen, role="l0"))[pt.NOT_SYSTEM].verdict == "fail"   # then proved, and refused


def test_a_bdf_that_is_not_an_nvme_is_refused_naming_what_it_is(tree):
    with pytest.raises(RunbookError) as e:
        pt.select_host_nvme(Local(), Select(bdf="0000:01:00.0"), root=str(tree.root))
    assert e.value.message == ("0000:01:00.0 is a Virtio block device (Red Hat, Inc., class 0x010000), "
                               "not an NVMe controller (class 0x010802)")
    assert "0000:00:10.0 (serial 1234" in e.value.hint


def test_a_selection_that_matches_nothing_or_several(tree):
    _two_nvmes(tree)
    with pytest.raises(RunbookError, match=r"no NVMe controller on L0 matches serial 9999 \(found: 0000:00:10.0"):
        pt.select_host_nvme(Local(), Select(serial="9999"), root=str(tree.root))
    with pytest.raises(RunbookError, match=r"no PCI device at 0000:00:1f.0 on L0"):
        pt.select_host_nvme(Local(), Select(bdf="0000:00:1f.0"), root=str(tree.root))
    tree.pci("0000:00:12.0", group=9)
    tree.nvme("0000:00:12.0", ctrl="nvme2", serial="1234", namespaces={"nvme2n1": ("259:9", 1000)})
    with pytest.raises(RunbookError, match=r"2 NVMe controllers on L0 match: 0000:00:10.0 \(serial 1234\), "
                                           r"0000:00:12.0 \(serial 1234\)"):
        pt.select_host_nvme(Local(), Select(serial="1234"), root=str(tree.root))


# --- the lab's hazards (tests/hostnvme_hazards.py), without a lab ----------------------------------------

def test_hazards_are_made_only_on_the_labs_scratch_nvme(tree):
    import hostnvme_hazards as hz
    assert hz.lab_namespace(Local(), BDF, root=str(tree.root)) == "nvme0n1"
    with pytest.raises(RuntimeError, match="is not the lab's scratch NVMe"):
        hz.lab_namespace(Local(), BDF, serial="S5GX", root=str(tree.root))
    with pytest.raises(RuntimeError, match="is not the lab's scratch NVMe"):
        hz.lab_namespace(Local(), "0000:01:00.0", root=str(tree.root))


def test_the_hazards_partition_table_is_one_linux_partition_to_the_end(tmp_path):
    """What partition_mounted writes with printf and dd, read back by partx (util-linux, as in the lab's L1)."""
    import subprocess

    import hostnvme_hazards as hz
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8 << 20))
    subprocess.run(["sh", "-c", f"printf '{hz._mbr(16384)}' | dd of={disk} bs=1 seek=446 conv=notrunc status=none && "
                                f"printf '\\125\\252' | dd of={disk} bs=1 seek=510 conv=notrunc status=none"], check=True)
    out = subprocess.run(["partx", "--pairs", "-o", "NR,START,SECTORS,TYPE", str(disk)],
                         capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == 'NR="1" START="2048" SECTORS="14336" TYPE="0x83"'


def test_l1s_cpuset_is_placed_on_the_nvmes_node(tree):
    desc = pci.describe(Local(), BDF, root=str(tree.root))
    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    siblings = {c: [c] for c in range(8)}
    desc.pci.numa_node = 0
    assert pt.cpuset_near(desc, nodes, siblings, 2) == ("2-3", "node 0: 2 CPUs on separate physical cores, "
                                                        "on the NVMe's NUMA node")
    desc.pci.numa_node = 1
    assert pt.cpuset_near(desc, nodes, siblings, 2)[0] == "6-7"
    cpuset, why = pt.cpuset_near(desc, {0: list(range(8)), 1: [8]}, {c: [c] for c in range(9)}, 2)
    assert cpuset == "6-7" and "the NVMe's node 1 has no room for 2 vCPUs" in why
    desc.pci.numa_node = None
    assert pt.cpuset_near(desc, nodes, siblings, 2)[1].endswith("(the NVMe reports no NUMA node)")


def test_a_swap_file_on_one_of_its_filesystems(tree):
    """swapoff first, or the umount the mount check asks for fails."""
    tree.mount("259:0", "/data", "xfs", "/dev/nvme0n1")
    tree.swap("/data/swapfile", kib=262140)
    tree.swap("/datastore/swapfile", kib=262140)   # another filesystem whose path only starts alike
    _, c = prove(tree)
    assert c[pt.NOT_SWAP].observed == f"{BDF} is in use on L0 as swap: nvme0n1 (swap file /data/swapfile), 256.00 MiB"
    assert c[pt.NOT_SWAP].fix == "swapoff /data/swapfile on L0 (and take it out of /etc/fstab)"
    assert c[pt.NOT_MOUNTED].verdict == "fail"


def test_a_mount_in_another_mount_namespace(tree):
    """A container or a service with private mounts: not in L0's own mount table, still mounted."""
    line = "301 290 259:0 / /var/lib/data rw,relatime - xfs /dev/nvme0n1 rw"
    tree.process(5000, "postgres", {}, mntns=4026532400, mountinfo=["290 1 0:50 / / rw - overlay overlay rw", line])
    tree.process(5001, "postgres", {}, mntns=4026532400, mountinfo=[line])   # the same namespace: read once
    tree.process(5002, "bash", {}, mountinfo=[line])   # L0's own namespace: its table is read as L0's
    f = only_failure(tree)
    assert f.observed == (f"{BDF} is in use on L0: nvme0n1 on /var/lib/data (xfs; in the mount namespace of "
                          "postgres, pid 5000)")
    assert f.fix == "nsenter -t 5000 -m umount /var/lib/data on L0, or stop postgres"
    tree.mount("259:0", "/var/lib/data", "xfs", "/dev/nvme0n1")   # propagated to L0's own table too: said once
    assert only_failure(tree).observed == f"{BDF} is in use on L0: nvme0n1 on /var/lib/data (xfs)"
