"""Which stages a run takes: the stage notebooks (``NN_name.ipynb``), the parameters
their parameters cell declares, which can run in check mode, and ``--stages``/``--from``
read into a list, or refused in one line with what to type."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import RunbookError
from . import ROOT

NOTEBOOKS = ROOT / "notebooks"
MAIN_STAGES = ("01", "02", "03", "04", "05")
STAGE_PARAMETERS = ("params_file", "state_file", "interactive", "mode")  # what every notebook's parameters cell takes
# Stages that only read (no step changes anything): in check mode they run even before their notebook
# takes the `mode` parameter.
READ_ONLY_STAGES = ("01",)


def notebook_parameters(template: Path) -> set[str]:
    """The names the notebook's parameters cell declares."""
    try:
        cells = json.loads(template.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return set()
    for c in cells:
        if "parameters" in c.get("metadata", {}).get("tags", []):
            src = "".join(c["source"])
            return set(re.findall(r"^(\w+)\s*[:=]", src, re.M))
    return set()


def plannable(stage: str, template: Path) -> bool:
    """Can the stage run in check mode? Its notebook takes `mode`, or it only reads."""
    return "mode" in notebook_parameters(template) or stage in READ_ONLY_STAGES


def stages(notebooks: Path = NOTEBOOKS) -> dict[str, Path]:
    """Stage number -> notebook template, from the files NN_name.ipynb."""
    found = {}
    for nb in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        found[nb.name[:2]] = nb
    return found


STAGE_RE = re.compile(r"^\d{1,2}$")


def _stage_number(text: str, option: str, available: dict[str, Path]) -> str:
    """'3' -> '03', or why it is not a stage."""
    if not STAGE_RE.match(text):
        raise RunbookError(f"{option}: `{text}` is not a stage number: stages are {', '.join(available)}")
    return text.zfill(2)


def pick_stages(available: dict[str, Path], only: str | None, start: str | None) -> list[str]:
    """The stages to run: ``--stages 01,02``, ``--from 03``, or the main ones.
    Refused, in one line with what to type: an empty list, a stage that is not
    one, a stage given twice, stages out of order, ``--from 99``."""
    if only is not None and start is not None:
        raise RunbookError("--stages and --from cannot be used together: type one of them, "
                           "e.g. `--from 03` or `--stages 03,04`")
    if only is not None:
        parts = [s.strip() for s in only.split(",") if s.strip()]
        if not parts:
            raise RunbookError("--stages is empty: give the stages to run, e.g. `--stages 01,02`, "
                               "or `--stages 99` to tear down")
        chosen = [_stage_number(s, f"--stages {only}", available) for s in parts]
        twice = sorted({s for s in chosen if chosen.count(s) > 1})
        if twice:
            raise RunbookError(f"--stages {only}: stage {', '.join(twice)} given twice: "
                               f"type `--stages {','.join(sorted(set(chosen)))}`")
        if chosen != sorted(chosen):
            raise RunbookError(f"--stages {only}: stages run in order: type `--stages {','.join(sorted(chosen))}`")
    elif start is not None:
        if not start.strip():
            raise RunbookError("--from is empty: give the stage to start from, e.g. `--from 03`")
        start = _stage_number(start.strip(), f"--from {start}", available)
        if start not in MAIN_STAGES and start in available:
            raise RunbookError(f"--from {start}: stage {start} is not followed by others "
                               f"(teardown runs alone): type `--stages {start}`")
        if start not in available:
            raise RunbookError(f"--from {start}: no such stage: stages are {', '.join(available)}")
        chosen = [s for s in available if s in MAIN_STAGES and s >= start]
    else:
        chosen = [s for s in available if s in MAIN_STAGES]
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise RunbookError(f"--stages {only}: no notebook for stage(s) {', '.join(unknown)}: "
                           f"stages are {', '.join(available)}")
    return chosen
