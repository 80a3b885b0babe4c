"""Stage 99's reads and checks (the steps are in ``stages/teardown.py``): is L1 reachable,
which files the runbook may have made, and the NVMe back on L1's nvme driver."""
from __future__ import annotations

import time
from pathlib import Path

from .. import record
from ..facts import pci
from ..guest import Guest
from ..params import Params
from ..paths import paths
from ..state import State
from ..virt import Virsh
from . import Change, no_change


def l1_reachable(l1: Guest | None) -> bool:
    return l1 is not None and l1.read("true", timeout=20).ok


def return_nvme(p: Params, l1: Guest | None, state: State, timeout: float = 60) -> list[Change]:
    """The NVMe back on L1's nvme driver and in `nvme list` again."""
    bdf = (state.get("nvme") or {}).get("bdf_in_l1")
    if not bdf or not l1_reachable(l1):
        return [no_change("return the NVMe to L1", "no passthrough recorded or L1 not running")]
    deadline = time.monotonic() + timeout
    with record.reading():
        driver = pci.driver_of(l1, bdf)
    if driver == "vfio-pci":  # managed='yes' reattaches on destroy; do it by hand if it did not (unplanned: recorded)
        Virsh(l1).nodedev("nodedev-reattach", pci.node_device_name(bdf))
    with record.reading():
        while pci.driver_of(l1, bdf) != "nvme" and time.monotonic() < deadline:
            time.sleep(1)
        driver = pci.driver_of(l1, bdf)
        serial = p.nvme.serial
        listed = [d for d in pci.nvme_list(l1) if d.get("SerialNumber", "").strip() == serial]
    state.update("teardown", nvme_driver_in_l1=driver, nvme_listed_in_l1=bool(listed))
    ok = driver == "nvme" and bool(listed)
    return [Change("return the NVMe to L1", ok,
                   f"{bdf} driver {driver}; nvme list {'shows' if listed else 'does not show'} serial {serial}")]


def file_candidates(p: Params, state: State) -> list[Path]:
    """Files on L0 the runbook may have made, each once; the backing file only with consent."""
    ps = paths(p)
    candidates = [ps.l1_console, ps.known_hosts, ps.lab_key, ps.l0_bench] + ([ps.l1_disk] if p.l1.image in ("lab", "lab-l2") else [])
    candidates += [Path(f) for f in state.created("files")]
    if p.nvme.remove_backing_file:
        candidates.append(Path(p.nvme.backing_file))
    return list(dict.fromkeys(candidates))


