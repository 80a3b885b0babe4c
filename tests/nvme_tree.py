"""A machine's /sys, /proc and /dev as files under a folder, shaped like the kernel's, for
``facts.pci.describe`` to read through a real shell (``root=``): PCI functions with their
driver and IOMMU group links, nvme controllers and namespaces (with or without native
multipath), partitions, holders (device-mapper, md, bcache), loop devices, mounts, swap,
processes' open files, NUMA nodes and interrupt chips. Tools the reading calls (lspci,
blkid, and pvs or zpool when a test wants them) are small scripts in the tree's bin folder,
put first on PATH by ``Tree.env``; no tool of the machine running the test is read."""
from __future__ import annotations

import os
from pathlib import Path

NVME, VIRTIO_BLK, BRIDGE, NET = "0x010802", "0x010000", "0x060400", "0x020000"
HOST_MNTNS = 4026531841


class Tree:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.sys, self.proc, self.dev, self.bin = (self.root / d for d in ("sys", "proc", "dev", "bin"))
        for d in (self.sys / "bus/pci/devices", self.sys / "class/block", self.sys / "dev/block",
                  self.sys / "class/nvme-subsystem", self.proc / "self/fd", self.dev, self.bin, self.root / "blkid"):
            d.mkdir(parents=True, exist_ok=True)
        (self.proc / "self/ns").mkdir()
        (self.proc / "self/ns/mnt").symlink_to(f"mnt:[{HOST_MNTNS}]")
        self.mountinfo: list[str] = []
        self.swaps: list[str] = []
        self.lspci: list[str] = []
        self.interrupts(remapped=True)
        self._tool("lspci", f'cat "{self.root}/lspci.txt"\n')
        self._tool("blkid", 'shift 3\nfor d in "$@"; do f="%s/blkid/${d##*/}"; [ -f "$f" ] || continue\n'
                            '  echo "DEVNAME=$d"; cat "$f"; echo; done\n' % self.root)
        self._write_lists()

    # --- PCI ---------------------------------------------------------------------------------
    def pci(self, bdf: str, cls: str = NVME, ids: str = "1b36:0010", driver: str | None = "nvme",
            group: int | None = 7, numa: int = -1, reset_method: str | None = "flr bus", reset: bool = True,
            names: tuple[str, str, str] = ("Non-Volatile memory controller [0108]", "Red Hat, Inc. [1b36]",
                                           "QEMU NVM Express Controller [0010]")) -> Path:
        d = self.sys / "bus/pci/devices" / bdf
        d.mkdir(parents=True)
        vendor, device = ids.split(":")
        for name, value in (("class", cls), ("vendor", "0x" + vendor), ("device", "0x" + device),
                            ("numa_node", str(numa))):
            (d / name).write_text(value + "\n")
        if reset_method is not None:
            (d / "reset_method").write_text(reset_method + "\n")
        if reset:
            (d / "reset").write_text("")
        if driver:
            drv = self.sys / "bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(os.path.relpath(drv, d))
        if group is not None:
            g = self.sys / "kernel/iommu_groups" / str(group) / "devices"
            g.mkdir(parents=True, exist_ok=True)
            (g / bdf).symlink_to(os.path.relpath(d, g))
            (d / "iommu_group").symlink_to(os.path.relpath(g.parent, d))
        self.lspci.append(f'{bdf} "{names[0]}" "{names[1]}" "{names[2]}" -r02 -p02 "Red Hat, Inc. [1af4]" "Device [1100]"')
        self._write_lists()
        return d

    # --- NVMe ----------------------------------------------------------------------------------
    def nvme(self, bdf: str, ctrl: str = "nvme0", serial: str = "1234", model: str = "QEMU NVMe Ctrl",
             firmware: str = "10.0.2", namespaces: dict[str, tuple[str, int]] | None = None,
             multipath: bool = False, block: int = 512) -> None:
        """An nvme controller at ``bdf`` with namespaces {name: (maj:min, size in 512-byte sectors)}.
        ``multipath``: QEMU >= 8 with nvme_core.multipath=Y: the controller's folder holds the
        path device nvme0c0n1 and the namespace's block device belongs to the subsystem."""
        c = self.sys / "bus/pci/devices" / bdf / "nvme" / ctrl
        c.mkdir(parents=True)
        for name, value in (("serial", serial + "        "), ("model", model + "                  "),
                            ("firmware_rev", firmware), ("state", "live")):
            (c / name).write_text(value + "\n")
        inst = ctrl.removeprefix("nvme")
        subsys = self.sys / "class/nvme-subsystem" / f"nvme-subsys{inst}"
        if multipath:
            subsys.mkdir(parents=True)
            (subsys / ctrl).symlink_to(os.path.relpath(c, subsys))
        for i, (ns, (dev, sectors)) in enumerate((namespaces or {f"{ctrl}n1": ("259:0", 2097152)}).items(), 1):
            nsid = ns.rsplit("n", 1)[1]
            if multipath:
                (c / f"{ctrl}c{inst}n{nsid}").mkdir()
                (c / f"ng{inst}n{nsid}").mkdir()
                (subsys / ns).mkdir()
                (subsys / f"ng{inst}n{nsid}").mkdir()
            else:
                (c / ns).mkdir()
                (c / f"ng{inst}n{nsid}").mkdir()
            b = self.block(ns, dev, sectors)
            (b / "nsid").write_text(nsid + "\n")
            (b / "queue").mkdir()
            (b / "queue/logical_block_size").write_text(f"{block}\n")

    # --- block devices -------------------------------------------------------------------------
    def block(self, name: str, dev: str, sectors: int, parent: str | None = None) -> Path:
        """A block device; with ``parent`` a partition of it (inside the parent's folder, as in sysfs)."""
        cb = self.sys / "class/block"
        if parent:
            d = cb / parent / name
            d.mkdir()
            (d / "partition").write_text(name.rsplit("p", 1)[-1] + "\n")
            (cb / name).symlink_to(os.path.relpath(d, cb))
        else:
            d = cb / name
            d.mkdir()
        (d / "holders").mkdir()
        (d / "dev").write_text(dev + "\n")
        (d / "size").write_text(f"{sectors}\n")
        (self.sys / "dev/block" / dev).symlink_to(os.path.relpath(d, self.sys / "dev/block"))
        return d

    def partition(self, ns: str, name: str, dev: str, sectors: int) -> Path:
        return self.block(name, dev, sectors, parent=ns)

    def holder(self, under: str | list[str], name: str, dev: str, sectors: int = 1024,
               dm_name: str = "", dm_uuid: str = "") -> Path:
        """``name`` (dm-0, md127, bcache0) holds ``under`` (one device or several)."""
        d = self.block(name, dev, sectors)
        if name.startswith("dm-"):
            (d / "dm").mkdir()
            (d / "dm/name").write_text(dm_name + "\n")
            (d / "dm/uuid").write_text(dm_uuid + "\n")
        if name.startswith("md"):
            (d / "md").mkdir()
        cb = self.sys / "class/block"
        for u in ([under] if isinstance(under, str) else under):
            h = cb / u / "holders"
            (h / name).symlink_to(os.path.relpath(d, h))
        return d

    def loop(self, name: str, dev: str, backing: str) -> Path:
        d = self.block(name, dev, 2048)
        (d / "loop").mkdir()
        (d / "loop/backing_file").write_text(backing + "\n")
        return d

    def bcache_registered(self, name: str) -> None:
        (self.sys / "class/block" / name / "bcache").mkdir()

    def signature(self, name: str, **fields: str) -> None:
        """What blkid -p finds on /dev/<name>: TYPE=..., PTTYPE=..."""
        (self.root / "blkid" / name).write_text("".join(f"{k}={v}\n" for k, v in fields.items()))

    # --- /proc -----------------------------------------------------------------------------------
    def mount(self, dev: str, mountpoint: str, fstype: str = "xfs", source: str = "") -> None:
        n = len(self.mountinfo) + 20
        mp = mountpoint.replace(" ", "\\040")
        self.mountinfo.append(f"{n} 1 {dev} / {mp} rw,relatime shared:{n} - {fstype} {source or '/dev/x'} rw")
        self._write_lists()

    def swap(self, path: str, kib: int = 1048572) -> None:
        self.swaps.append(f"{path}                               partition\t{kib}\t\t0\t\t-2")
        self._write_lists()

    def process(self, pid: int, comm: str, fds: dict[int, str], mntns: int = HOST_MNTNS,
                mountinfo: list[str] = ()) -> None:
        """A process with open files {fd: target}; ``mntns`` another mount namespace than
        the host's, with its own ``mountinfo`` lines."""
        p = self.proc / str(pid)
        (p / "fd").mkdir(parents=True)
        (p / "ns").mkdir()
        (p / "ns/mnt").symlink_to(f"mnt:[{mntns}]")
        (p / "comm").write_text(comm + "\n")
        (p / "mountinfo").write_text("".join(line + "\n" for line in mountinfo))
        for fd, target in fds.items():
            (p / "fd" / str(fd)).symlink_to(target)

    def node(self, n: int, cpulist: str) -> None:
        d = self.sys / "devices/system/node" / f"node{n}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpulist + "\n")

    def interrupts(self, remapped: bool) -> None:
        chip = "IR-PCI-MSIX-0000:00:10.0" if remapped else "PCI-MSIX-0000:00:10.0"
        io = "IR-IO-APIC" if remapped else "IO-APIC"
        (self.proc / "interrupts").write_text(
            "           CPU0       CPU1\n"
            f"  1:          0          9  {io}    1-edge      i8042\n"
            f" 24:          0          0  {chip} 0-edge      nvme0q0\n")

    def allow_unsafe_interrupts(self, value: str = "Y") -> None:
        d = self.sys / "module/vfio_iommu_type1/parameters"
        d.mkdir(parents=True)
        (d / "allow_unsafe_interrupts").write_text(value + "\n")

    def tool(self, name: str, output: str) -> None:
        """A tool on PATH that prints ``output`` whatever its arguments (pvs, zpool)."""
        (self.root / f"{name}.txt").write_text(output)
        self._tool(name, f'cat "{self.root}/{name}.txt"\n')

    # --- the rest ----------------------------------------------------------------------------------
    def _tool(self, name: str, body: str) -> None:
        f = self.bin / name
        f.write_text("#!/bin/sh\n" + body)
        f.chmod(0o755)

    def _write_lists(self) -> None:
        (self.proc / "self/mountinfo").write_text("".join(line + "\n" for line in self.mountinfo))
        (self.proc / "swaps").write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                                         + "".join(line + "\n" for line in self.swaps))
        (self.root / "lspci.txt").write_text("".join(line + "\n" for line in self.lspci))

    @property
    def path(self) -> str:
        """PATH for the reading: the tree's tools, then only /usr/bin and /bin (no blkid of the
        machine running the test: it lives in /usr/sbin)."""
        return f"{self.bin}:/usr/bin:/bin"


def lab_l1(tmp_path: Path, **nvme) -> Tree:
    """The lab's L1 as a tree: a host bridge, a root port, its virtio disk vda (/ on vda1),
    and the NVMe 1b36:0010 at 0000:00:10.0 with serial 1234, alone in IOMMU group 7,
    on the nvme driver, namespace nvme0n1 (1 GiB), not used."""
    t = Tree(tmp_path / "tree")
    t.pci("0000:00:00.0", cls="0x060000", ids="8086:29c0", driver=None, group=0, reset_method=None, reset=False,
          names=("Host bridge [0600]", "Intel Corporation [8086]", "82G33/G31/P35/P31 Express DRAM Controller [29c0]"))
    t.pci("0000:00:01.0", cls=BRIDGE, ids="1b36:000c", driver="pcieport", group=1, reset_method=None, reset=False,
          names=("PCI bridge [0604]", "Red Hat, Inc. [1b36]", "QEMU PCIe Root port [000c]"))
    t.pci("0000:01:00.0", cls=VIRTIO_BLK, ids="1af4:1042", driver="virtio-pci", group=1, reset_method="flr",
          names=("SCSI storage controller [0100]", "Red Hat, Inc. [1af4]", "Virtio block device [1042]"))
    t.block("vda", "254:0", 8388608)
    t.partition("vda", "vda1", "254:1", 8386560)
    t.mount("254:1", "/", "ext4", "/dev/vda1")
    t.pci("0000:00:10.0")
    t.nvme("0000:00:10.0", **nvme)
    t.process(1, "systemd", {0: "/dev/null", 1: "/dev/null"})
    t.process(700, "sshd", {0: "/dev/null", 3: "socket:[1234]"})
    return t
