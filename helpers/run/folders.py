"""Run folders: ``--outputs`` and ``--run-id`` checked, a new folder (or the one resumed),
``latest`` pointing at it, its ``summary.json``, and a check run's state seeded from the
latest run."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

from ..errors import RunbookError
from . import ROOT

OUTPUTS = ROOT / "outputs"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_run_id(run_id: str | None, outputs: Path | None = None) -> None:
    """A run id is a plain folder name under --outputs (no '/', no '..'), not a file there."""
    if run_id is None:
        return
    if not RUN_ID_RE.match(run_id):
        raise RunbookError(f"--run-id {run_id!r}: not a plain folder name: give a name such as `try-2` "
                           "(letters, digits, '.', '_', '-'; it becomes a folder under --outputs)")
    if outputs is not None and (outputs / run_id).exists() and not (outputs / run_id).is_dir():
        raise RunbookError(f"--run-id {run_id}: {outputs / run_id} is a file, not a run folder: give another name")


def check_outputs(outputs: Path) -> None:
    """--outputs is a folder, or can become one, where run folders can be written."""
    resolved = Path(os.path.abspath(outputs))
    tree = next((t for t in ("/proc", "/sys", "/dev") if resolved == Path(t) or Path(t) in resolved.parents), None)
    if tree:
        raise RunbookError(f"--outputs {outputs} is under {tree}, where the kernel keeps its own state: "
                           "give a folder on a disk, e.g. `--outputs outputs`")
    here = outputs
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        what = "is a file" if here == outputs else f"is under {here}, a file"
        raise RunbookError(f"--outputs {outputs} {what}, not a folder: give a folder (it is created if missing), "
                           "e.g. `--outputs outputs`")
    if not os.access(here, os.W_OK | os.X_OK):
        raise RunbookError(f"--outputs {outputs}: {here} is not writable for this user: give a folder you can "
                           "write, e.g. `--outputs outputs`")


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def run_dir_for(outputs: Path, run_id: str | None, resume: bool, check: bool = False) -> Path:
    """A new run folder, or the given/latest one when resuming. A check run always gets
    a new folder of its own (``<time>-check``) and does not become ``latest``."""
    check_outputs(outputs)
    check_run_id(run_id, outputs)
    latest = outputs / "latest"
    suffix = "-check" if check else ""
    if run_id:
        d = outputs / run_id
        if check and d.exists():
            raise RunbookError(f"--run-id {run_id}: {d} exists; a check run never writes into an earlier run: "
                               "give a new name, or leave --run-id out")
    elif resume and latest.exists() and not check:
        d = latest.resolve()
    else:
        d = outputs / (new_run_id() + suffix)
        n = 1
        while d.exists():
            d = outputs / f"{new_run_id()}-{n}{suffix}"
            n += 1
    d.mkdir(parents=True, exist_ok=True)
    if check:
        return d
    if latest.is_symlink() or not latest.exists():
        if latest.is_symlink():
            latest.unlink()
        latest.symlink_to(d.name)
    return d


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def seed_check_state(run_dir: Path, params_file: Path, state_file: Path) -> str | None:
    """A check run plans what resuming the latest run would do: it starts from a copy of
    that run's state (what it learned: the accelerators, the BDF, the baseline) when the
    latest run used the same parameter file. The latest run itself is left as it is."""
    latest = run_dir.parent / "latest"
    try:
        earlier = latest.resolve()
        used = json.loads((earlier / "summary.json").read_text()).get("params")
        data = json.loads((earlier / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if used != str(params_file):
        return None
    data.pop("steps", None)
    state_file.write_text(json.dumps(data, indent=2, sort_keys=True))
    return earlier.name


def resume_command(params_file: Path, run_dir: Path, stage: str) -> str:
    return (f"python -m helpers run --params {params_file} --outputs {run_dir.parent} "
            f"--run-id {run_dir.name} --from {stage}")
