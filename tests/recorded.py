"""Recorded run states and the results documents built from them (tests/fixtures/results/)."""
from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

from helpers import params as params_mod
from helpers.bench import fio, results

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "results"
LAB_PARAMS = ROOT / "parameters" / "lab.yaml"
LAB_RUN = FIXTURES / "lab-run"   # a real lab run (state.json, summary.json, and its results.json of before versions)
WRITTEN = datetime(2026, 12, 3, 13, 0, 0)


def state(name: str = "synthetic-state.json") -> dict:
    """A run state: the synthetic one (every field the current stages record), or ``lab-run/state.json``."""
    return json.loads((FIXTURES / name).read_text())


def real_state() -> dict:
    """The state of a real lab run, recorded before the checks recorded the environment."""
    return state("lab-run/state.json")


def real_doc(run_dir: Path = LAB_RUN) -> dict:
    """The results document stage 05 writes for the recorded real run."""
    return lab_doc(real_state(), run_dir=run_dir)


def lab_doc(state_: dict | None = None, rows: list[dict] | None = None, run_dir: Path = Path("outputs/r1")) -> dict:
    """The results document stage 05 writes for a recorded state (its fio rows, or ``rows``)."""
    st = copy.deepcopy(state_ if state_ is not None else state())
    if rows is None:
        rows = (st.get("bench_l0") or []) + (st.get("baseline") or []) + (st.get("bench_l2") or [])
    s = fio.summarize(rows)
    run = results.run_info(run_dir, LAB_PARAMS, "lab", WRITTEN)
    return results.document(st, params_mod.load(LAB_PARAMS), run, rows, s, fio.comparisons(s))
