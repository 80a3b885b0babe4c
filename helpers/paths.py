"""Where the runbook keeps its files, derived from the parameters alone, so
teardown finds them even without a run state."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .params import Params


@dataclass(frozen=True)
class Paths:
    workdir: Path
    l1_disk: Path            # the lab's qcow2 overlay on the golden image (a real host: its own image)
    l1_console: Path         # L1's serial console log
    known_hosts: Path        # L1's pinned host key (lab)
    lab_key: Path            # the run's copy of the lab's SSH key (the image cache may be rebuilt meanwhile)
    l0_bench: Path           # scratch file for fio on L0, beside the backing file
    l2_disk: str             # inside L1: L2's overlay on the lab's L2 image
    l2_console: str          # inside L1: L2's serial console log
    l2_virtio: str           # inside L1: the raw file behind L2's virtio-blk disk (bench.emulated)


def paths(p: Params) -> Paths:
    w = Path(p.host.workdir)
    lab_disk = w / f"{p.l1.name}.qcow2"
    return Paths(
        workdir=w,
        l1_disk=lab_disk if p.l1.image in ("lab", "lab-l2") else Path(p.l1.image).expanduser(),
        l1_console=w / f"{p.l1.name}-console.log",
        known_hosts=w / "known_hosts",
        lab_key=w / "lab_key",
        l0_bench=Path(p.nvme.backing_file).parent / "l0-bench.raw",
        l2_disk=f"/var/lib/libvirt/images/{p.l2.name}.qcow2" if p.l2.image == "lab" else p.l2.image,
        l2_console=f"/var/log/libvirt/qemu/{p.l2.name}-console.log",
        l2_virtio=f"/var/lib/libvirt/images/{p.l2.name}-virtio.raw",
    )


def nvme_bdf_in_l1(p: Params) -> str:
    """The emulated NVMe's BDF in L1: slot ``nvme.pci_addr`` on L1's root bus (0x10 -> 0000:00:10.0)."""
    return f"0000:00:{int(p.nvme.pci_addr, 16):02x}.0"
