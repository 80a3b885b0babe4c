"""The commands an engineer would type to do a step by hand, at that layer's
prompt, derived from the same data the step uses. A notebook shows them next
in each step's plan (``Action.commands``), so a trainee can
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
    """0000:00:10.0 -> pci_0000_00_10_0, libvirt's name for the PCI function (one definition:
    ``facts.pci.node_device_name``)."""
    from .facts.pci import node_device_name
    return node_device_name(bdf)


def size_arg(size_gib: float) -> str:
    """qemu-img's size: 100 -> 100G, 0.5 -> 512M."""
    return f"{int(size_gib)}G" if float(size_gib).is_integer() else f"{int(size_gib * 1024)}M"


# --- stage 02: L1 on the host ------------------------------------------------------------------

def mkdir(workdir: Path) -> list[str]:
    return [f"mkdir -p {q(workdir)}"]


def backing_file(path: Path, size_gib: float) -> list[str]:
    """The NVMe's raw backing file: sparse (no block written), skipped when it exists."""
    return [f"truncate -s {size_arg(size_gib)} {q(path)}   # sparse; skipped when it exists"]


def overlay(golden: Path, disk: Path) -> list[str]:
    return [f"qemu-img create -f qcow2 -F raw -b {q(golden)} {q(disk)}   # L1's disk: an overlay"]


def install_key(src: Path, dest: Path) -> list[str]:
    return [f"install -m 600 {q(src)} {q(dest)}"]


def known_hosts(path: Path, line: str) -> list[str]:
    return [f"echo {q(line)} > {q(path)}   # L1's host key, from the image: no trust on first use"]


def define(name: str, xml_file: str, uri: str = DEFAULT_URI, prompt: str = "root@L0",
           replace: bool = False, running: bool = False) -> ByHand:
    """``virsh define FILE``: the XML the step defines, saved to a file (the seed: --print-xml > FILE);
    replacing a definition: the running domain destroyed and the old one undefined first."""
    first = ([virsh("destroy", name, uri=uri) + "   # it runs"] if replace and running else []) + \
        ([virsh("undefine", name, uri=uri)] if replace else [])
    return ByHand(prompt, first + [virsh("define", xml_file, uri=uri) + f"   # {xml_file}: the XML below (its content), saved to that file",
                                   virsh("dominfo", name, uri=uri) + "   # check: it is defined"])


def start(name: str, uri: str = DEFAULT_URI, prompt: str = "root@L0") -> ByHand:
    return ByHand(prompt, [virsh("start", name, uri=uri), virsh("list", uri=uri) + f"   # check: {name} is running"])


# --- stage 03: inside L1: the plans of helpers.distro's classes carry the commands -----------


# --- stage 04: L2 inside L1 --------------------------------------------------------------------

def l2_disk(base: str, disk: str) -> ByHand:
    return ByHand("root@L1", [f"qemu-img create -f qcow2 -F raw -b {q(base)} {q(disk)}   # L2's disk: an overlay"])


def l2_define_start(name: str, xml_file: str, bdf: str, group: int | None) -> ByHand:
    """``virsh define`` and ``virsh start`` in L1; with ``managed='yes'`` libvirt detaches the
    device itself at start, which by hand is ``virsh nodedev-detach``."""
    dev = node_device(bdf)
    return ByHand("root@L1", [
        virsh("define", xml_file) + f"   # {xml_file}: the XML below (its content), saved to that file",
        f"# managed='yes': at start libvirt does what you would otherwise type first: virsh nodedev-detach {dev}",
        virsh("start", name),
        f"lspci -k -s {bdf}   # check: Kernel driver in use: vfio-pci",
        f"ls /dev/vfio/{group if group is not None else '<group>'}   # check: VFIO's node for the IOMMU group"])


def fio(target: str, cmd: Sequence[str], repeats: int, prompt: str) -> ByHand:
    """fio as the benchmark runs it (``bench.fio.fio_command``), ``repeats`` times."""
    return ByHand(prompt, [shlex.join(cmd) + f"   # run {repeats} times on {target}"])


# --- stage 05: inside L2 -----------------------------------------------------------------------

def mkfs(device: str) -> ByHand:
    return ByHand("root@L2", [f"blkid -p {q(device)}   # check: a signature here means data: stop unless it is scratch",
                              f"mkfs.xfs -f {q(device)}"])


def mount(device: str, mount_point: str) -> ByHand:
    return ByHand("root@L2", [f"mkdir -p {q(mount_point)}", f"mount {q(device)} {q(mount_point)}",
                              f"df -Th {q(mount_point)}   # check: type xfs"])


# --- stage 99: teardown ------------------------------------------------------------------------

def remove_l2_parts(name: str, disk: str | None, bdf: str | None, running: bool = True, defined: bool = True,
                    stuck: bool = False, virtio: str | None = None) -> list[tuple[str, list[str]]]:
    """L2 away in L1, part by part (what, commands): stop it if ``running``, undefine it if
    ``defined``, remove its disk; libvirt gives the managed device back to ``nvme`` when L2
    stops (``nodedev-reattach``), typed only when it is ``stuck`` on vfio-pci with L2 stopped."""
    parts = []
    if running:
        parts.append((f"stop {name} (like pulling its power)", [virsh("destroy", name) + "   # stop L2 (like pulling its power)"]))
    if defined:
        parts.append((f"undefine {name}", [virsh("undefine", name)]))
    if disk:
        parts.append((f"remove L2's disk {disk}", [f"rm -f {q(disk)}"]))
    if virtio:
        parts.append((f"remove the emulated disk's file {virtio} (bench.emulated)", [f"rm -f {q(virtio)}"]))
    if bdf:
        checks = [f"lspci -k -s {bdf}   # check: Kernel driver in use: nvme", "nvme list   # check: the disk is back in L1"]
        if stuck:
            parts.append((f"the NVMe {bdf} back to L1's nvme driver (still on vfio-pci with {name} stopped)",
                          [virsh("nodedev-reattach", node_device(bdf))] + checks))
        else:
            parts.append((f"the NVMe {bdf} back to L1's nvme driver: libvirt does it when {name} stops (managed='yes')",
                          [f"# managed='yes': libvirt rebinds the NVMe to nvme; by hand: virsh nodedev-reattach {node_device(bdf)}"]
                          + checks))
    return parts


def remove_l2(name: str, disk: str | None, bdf: str | None) -> ByHand:
    """L2 away in L1; libvirt gives the managed device back to ``nvme`` (``nodedev-reattach``)."""
    return ByHand("root@L1", [c for _, cmds in remove_l2_parts(name, disk, bdf) for c in cmds])


def remove_files(files: Sequence[Path], kept: Sequence[Path] = ()) -> ByHand:
    cmds = [f"rm -f {' '.join(q(f) for f in files)}"] if files else ["# no file to remove"]
    cmds += [f"# kept: {f} (nvme.remove_backing_file is false)" for f in kept]
    return ByHand("root@L0", cmds)
