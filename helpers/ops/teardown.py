"""Stage 99: give everything back, in reverse order; each step says what it did
or that there was nothing to do."""
from __future__ import annotations

import time
from pathlib import Path

from ..facts import pci
from ..guest import Guest
from ..params import Params
from ..paths import paths
from ..state import State
from ..virt import Libvirt, Virsh
from . import Change, did, domain, no_change


def l1_reachable(l1: Guest | None) -> bool:
    return l1 is not None and l1.run("true", timeout=20).ok


def remove_l2(p: Params, l1: Guest | None, state: State) -> list[Change]:
    """Stop and undefine L2 in L1; the managed hostdev goes back to L1's nvme driver."""
    if not l1_reachable(l1):
        return [no_change(f"remove {p.l2.name}", "L1 is not running: nothing to stop in it")]
    lv = Virsh(l1)
    changes = domain.remove(lv, p.l2.name)
    disk = paths(p).l2_disk
    if p.l2.image == "lab" and l1.run(["test", "-e", disk]).ok:
        l1.run(["rm", "-f", disk], check=True)
        changes.append(did(f"remove {disk} in L1", "L2's overlay"))
    return changes


def return_nvme(p: Params, l1: Guest | None, state: State, timeout: float = 60) -> list[Change]:
    """The NVMe back on L1's nvme driver and in `nvme list` again."""
    bdf = (state.get("nvme") or {}).get("bdf_in_l1")
    if not bdf or not l1_reachable(l1):
        return [no_change("return the NVMe to L1", "no passthrough recorded or L1 not running")]
    deadline = time.monotonic() + timeout
    driver = pci.driver_of(l1, bdf)
    if driver == "vfio-pci":  # managed='yes' reattaches on destroy; do it by hand if it did not
        l1.run(f"virsh nodedev-reattach pci_{bdf.replace(':', '_').replace('.', '_')}", timeout=60)
    while pci.driver_of(l1, bdf) != "nvme" and time.monotonic() < deadline:
        time.sleep(1)
    driver = pci.driver_of(l1, bdf)
    serial = p.nvme.serial
    listed = [d for d in pci.nvme_list(l1) if d.get("SerialNumber", "").strip() == serial]
    state.update("teardown", nvme_driver_in_l1=driver, nvme_listed_in_l1=bool(listed))
    ok = driver == "nvme" and bool(listed)
    return [Change("return the NVMe to L1", ok,
                   f"{bdf} driver {driver}; nvme list {'shows' if listed else 'does not show'} serial {serial}")]


def remove_l1(p: Params, lv: Libvirt) -> list[Change]:
    return domain.remove(lv, p.l1.name)


def file_candidates(p: Params, state: State) -> list[Path]:
    """Files on L0 the runbook may have made, each once; the backing file only with consent."""
    ps = paths(p)
    candidates = [ps.l1_console, ps.known_hosts, ps.lab_key, ps.l0_bench] + ([ps.l1_disk] if p.l1.image == "lab" else [])
    candidates += [Path(f) for f in state.created("files")]
    if p.nvme.remove_backing_file:
        candidates.append(Path(p.nvme.backing_file))
    return list(dict.fromkeys(candidates))


def remove_files(p: Params, state: State, l0: Guest) -> list[Change]:
    """Files the runbook made on L0 (through its command interface); the backing file
    only with consent. With a remote L0, also this machine's copies of L1's key and host key."""
    changes = []
    for f in file_candidates(p, state):
        if f == Path(p.nvme.backing_file) and not p.nvme.remove_backing_file:
            changes.append(no_change(f"remove {f}", "kept: nvme.remove_backing_file is false"))
            continue
        if l0.remove(str(f)):
            state.forget_created("files", str(f))
            changes.append(did(f"remove {f}"))
    from .. import l0 as l0_mod
    if l0_mod.remote(p):
        from ..access import lab_credentials
        for f in lab_credentials(p):
            if f is not None and f.exists():
                f.unlink()
                changes.append(did(f"remove {f} (this machine)"))
    if not changes:
        changes.append(no_change("remove the run's files", "none left"))
    for d in state.created("dirs"):
        if l0.rmdir(d):
            state.forget_created("dirs", d)
            changes.append(did(f"remove {d}", "empty"))
    return changes
