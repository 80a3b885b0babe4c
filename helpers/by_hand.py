"""The commands an engineer would type to do a step by hand, at that layer's
prompt, derived from the same data the step uses. A notebook shows them next
to what the runbook did (``Stage.do(..., by_hand=...)``), so a trainee can
repeat the procedure without the runbook. Lines starting with ``#`` are notes.

Each function only builds text: nothing here reads or changes a machine."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

DEFAULT_URI = "qemu:///system"   # what `virsh` uses as root when no -c is given
QEMU_USER = "libvirt-qemu"


@dataclass
class ByHand:
    """Commands for one step, typed at ``prompt`` (root@L0, root@L1, root@L2)."""

    prompt: str
    commands: list[str] = field(default_factory=list)

    def text(self) -> str:
        """As the seed writes them: ``[root@L1] ~$ command``; notes stay as ``# ...``."""
        return "\n".join(c if c.startswith("#") else f"[{self.prompt}] ~$ {c}" for c in self.commands)

    def __add__(self, other: "ByHand") -> "ByHand":
        if other.prompt != self.prompt:
            raise ValueError(f"commands for {self.prompt} and {other.prompt} cannot be joined")
        return ByHand(self.prompt, self.commands + other.commands)


def q(x) -> str:
    return shlex.quote(str(x))


def virsh(*args: str, uri: str = DEFAULT_URI) -> str:
    """``virsh ARGS`` (with ``-c URI`` only when it is not the default system URI)."""
    return shlex.join(["virsh", *(["-c", uri] if uri != DEFAULT_URI else []), *args])


def node_device(bdf: str) -> str:
    """0000:00:10.0 -> pci_0000_00_10_0, libvirt's name for the PCI function."""
    return "pci_" + bdf.replace(":", "_").replace(".", "_")


def size_arg(size_gib: float) -> str:
    """qemu-img's size: 100 -> 100G, 0.5 -> 512M."""
    return f"{int(size_gib)}G" if float(size_gib).is_integer() else f"{int(size_gib * 1024)}M"


# --- stage 02: L1 on the host ------------------------------------------------------------------

def l1_files(workdir: Path, backing_file: Path, size_gib: float, overlay: tuple[Path, Path] | None = None,
             ssh_key: tuple[Path, Path] | None = None, known_hosts: tuple[Path, str] | None = None) -> ByHand:
    """The workdir, the NVMe's raw backing file (sparse) readable by QEMU's user and, in the
    lab, L1's overlay disk, the run's copy of the SSH key and L1's pinned host key."""
    cmds = [f"mkdir -p {q(workdir)}",
            f"qemu-img create -f raw {q(backing_file)} {size_arg(size_gib)}   # sparse; skipped when it exists",
            f"chown {QEMU_USER}:{QEMU_USER} {q(backing_file)}   # QEMU runs as {QEMU_USER}"]
    if overlay:
        golden, disk = overlay
        cmds.append(f"qemu-img create -f qcow2 -F raw -b {q(golden)} {q(disk)}   # L1's disk: an overlay")
    if ssh_key:
        src, dest = ssh_key
        cmds.append(f"install -m 600 {q(src)} {q(dest)}")
    if known_hosts:
        path, line = known_hosts
        cmds.append(f"echo {q(line)} > {q(path)}   # L1's host key, from the image: no trust on first use")
    return ByHand("root@L0", cmds)


def define(name: str, xml_file: str, uri: str = DEFAULT_URI, prompt: str = "root@L0") -> ByHand:
    """``virsh define FILE``: the XML the step defines, saved to a file (the seed: --print-xml > FILE)."""
    return ByHand(prompt, [virsh("define", xml_file, uri=uri) + f"   # {xml_file}: the XML shown above",
                           virsh("dominfo", name, uri=uri) + "   # check: it is defined"])


def start(name: str, uri: str = DEFAULT_URI, prompt: str = "root@L0") -> ByHand:
    return ByHand(prompt, [virsh("start", name, uri=uri), virsh("list", uri=uri) + f"   # {name} is running"])


# --- stage 03: inside L1 -----------------------------------------------------------------------

def kernel_args(way: str, args: Sequence[str], mkconfig: str = "update-grub") -> ByHand:
    """Add ``args`` to every boot entry, the distribution's way (stage 03's ``bootloader()``)."""
    a = " ".join(args)
    if way == "grubby":
        return ByHand("root@L1", [f"grubby --update-kernel ALL --args {q(a)}",
                                  "grubby --info=ALL | grep ^args   # check: each entry has them"])
    if way == "grub":
        cmds = ["cp /etc/default/grub /etc/default/grub.before-runbook",
                f"sed -i 's/^GRUB_CMDLINE_LINUX=\"\\(.*\\)\"/GRUB_CMDLINE_LINUX=\"\\1 {a}\"/' /etc/default/grub",
                "grep ^GRUB_CMDLINE_LINUX= /etc/default/grub   # check the line",
                mkconfig + ("   # Debian's short form of: grub-mkconfig -o /boot/grub/grub.cfg"
                            if mkconfig == "update-grub" else "")]
        return ByHand("root@L1", cmds)
    return ByHand("root@L1", [f"echo \"$(cat /etc/kernel/cmdline) {a}\" > /etc/kernel/cmdline",
                              'kernel-install add "$(uname -r)" "/lib/modules/$(uname -r)/vmlinuz"'])


def boot_kernel(release: str, way: str, kconfig: str = "CONFIG_AMD_IOMMU") -> ByHand:
    """Make the installed kernel ``release`` (which has the vIOMMU's driver) the next boot's default."""
    find = f"grep {kconfig}= /boot/config-*   # which installed kernels have the driver (=y)"
    if way == "grubby":
        return ByHand("root@L1", [find, f"grubby --set-default /boot/vmlinuz-{release}"])
    return ByHand("root@L1", [
        find,
        f"grep -o \"gnulinux-{release}-advanced-[^']*\\|gnulinux-advanced-[^']*\" /boot/grub/grub.cfg"
        "   # the submenu's and the entry's ids",
        "sed -i 's/^GRUB_DEFAULT=.*/GRUB_DEFAULT=\"<submenu id>><entry id>\"/' /etc/default/grub",
        f"# after the reboot, uname -r says {release}"])


def reboot(args: Sequence[str]) -> ByHand:
    return ByHand("root@L1", ["reboot", "# ... log in again, then:",
                              f"cat /proc/cmdline   # check: it has {' '.join(args)}",
                              "dmesg | grep -e DMAR -e IOMMU"])


def package_manager(distro_id: str, id_like: str = "") -> str:
    """apt-get for the Debian family, yum for the RHEL family (the seed's CentOS 7)."""
    family = f"{distro_id} {id_like}"
    return "apt-get" if any(d in family for d in ("debian", "ubuntu")) else "yum"


def install_virt(pm: str, packages: Sequence[str], uri: str = DEFAULT_URI) -> ByHand:
    """The seed: ``yum install libvirt qemu-kvm virt-install``; ``systemctl start libvirtd``."""
    install = (f"apt-get install -y {shlex.join(packages)}" if pm == "apt-get"
               else f"{pm} install -y {shlex.join(packages)}")
    return ByHand("root@L1", [install, "systemctl enable --now libvirtd",
                              virsh("version", uri=uri) + "   # check: libvirt answers"])


# --- stage 04: L2 inside L1 --------------------------------------------------------------------

def l2_disk(base: str, disk: str) -> ByHand:
    return ByHand("root@L1", [f"qemu-img create -f qcow2 -F raw -b {q(base)} {q(disk)}   # L2's disk: an overlay"])


def l2_define_start(name: str, xml_file: str, bdf: str, group: int | None) -> ByHand:
    """``virsh define`` and ``virsh start`` in L1; with ``managed='yes'`` libvirt detaches the
    device itself at start, which by hand is ``virsh nodedev-detach``."""
    dev = node_device(bdf)
    return ByHand("root@L1", [
        virsh("define", xml_file) + f"   # {xml_file}: the XML shown above",
        f"# managed='yes': at start libvirt does what you would otherwise type first: virsh nodedev-detach {dev}",
        virsh("start", name),
        f"lspci -k -s {bdf}   # check: Kernel driver in use: vfio-pci",
        f"ls /dev/vfio/{group if group is not None else '<group>'}   # check: VFIO's node for the IOMMU group"])


def fio(target: str, cmd: Sequence[str], repeats: int, prompt: str) -> ByHand:
    """fio as the benchmark runs it (``bench.fio.fio_command``), ``repeats`` times."""
    return ByHand(prompt, [shlex.join(cmd) + f"   # run {repeats} times on {target}"])


# --- stage 05: inside L2 -----------------------------------------------------------------------

def mkfs(device: str) -> ByHand:
    return ByHand("root@L2", [f"blkid -p {q(device)}   # a signature here means data: stop unless it is scratch",
                              f"mkfs.xfs -f {q(device)}"])


def mount(device: str, mount_point: str) -> ByHand:
    return ByHand("root@L2", [f"mkdir -p {q(mount_point)}", f"mount {q(device)} {q(mount_point)}",
                              f"df -Th {q(mount_point)}   # check: type xfs"])


# --- stage 99: teardown ------------------------------------------------------------------------

def remove_l2(name: str, disk: str | None, bdf: str | None) -> ByHand:
    """L2 away in L1; libvirt gives the managed device back to ``nvme`` (``nodedev-reattach``)."""
    cmds = [virsh("destroy", name) + "   # stop L2 (like pulling its power)", virsh("undefine", name)]
    if disk:
        cmds.append(f"rm -f {q(disk)}")
    if bdf:
        cmds += [f"# managed='yes': libvirt rebinds the NVMe to nvme; by hand: virsh nodedev-reattach {node_device(bdf)}",
                 f"lspci -k -s {bdf}   # check: Kernel driver in use: nvme", "nvme list   # check: the disk is back in L1"]
    return ByHand("root@L1", cmds)


def remove_l1(name: str, uri: str = DEFAULT_URI) -> ByHand:
    return ByHand("root@L0", [virsh("destroy", name, uri=uri), virsh("undefine", name, uri=uri)])


def remove_files(files: Sequence[Path], kept: Sequence[Path] = ()) -> ByHand:
    cmds = [f"rm -f {' '.join(q(f) for f in files)}"] if files else ["# no file to remove"]
    cmds += [f"# kept: {f} (nvme.remove_backing_file is false)" for f in kept]
    return ByHand("root@L0", cmds)
