"""Time the runner with each stage's kernel started ahead (helpers/run/prewarm.py) and without
(papermill starting every kernel, as before): not a test, prints figures, one per line.

    .venv/bin/python scripts/bench_kernels.py [--params P] [--outputs DIR] [--repeat 3]
                                              [--check] [--warm RUN_ID] [--no-stage-01]

- stage 01 alone, in a folder of its own (it starts no guest: no lab lock needed);
- ``--check``: check mode on stages 01-04 (it reads L1: a lab must be up; under the lab lock);
- ``--warm RUN_ID``: a warm rerun of stages 01-04 in ``--outputs``/RUN_ID, a run whose lab is up
  (under the lab lock).
Each is run ``--repeat`` times each way, alternately; printed for each way: the wall seconds of the
command and, per stage, its seconds and those outside its steps (medians).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import timing  # noqa: E402

# The runner with papermill starting every kernel: the measurement's "before", not an option of the runner.
WITHOUT = """import contextlib, sys
sys.modules.setdefault("rfc3987_syntax", None)
from helpers.run import prewarm

@contextlib.contextmanager
def papermill_starts_it(self, template, following):
    yield None

prewarm.Kernels.for_stage = papermill_starts_it
from helpers.run.cli import main
sys.exit(main(sys.argv[1:]))
"""
WAYS = {"ahead": [sys.executable, "-m", "helpers"], "papermill": [sys.executable, "-c", WITHOUT]}


def once(way: str, outputs: Path, run_id: str, args: list[str]) -> tuple[float, dict] | None:
    """One runner invocation: its wall seconds and its summary, or None (said why) if it failed."""
    t0 = time.monotonic()
    r = subprocess.run([*WAYS[way], "run", "-q", "--outputs", str(outputs), "--run-id", run_id, *args],
                       cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        print(f"{way} {run_id} FAILED (rc {r.returncode}): {' / '.join(r.stderr.strip().splitlines()[-3:])}")
        return None
    return wall, json.loads((outputs / run_id / "summary.json").read_text())


def measure(name: str, outputs: Path, run_ids, args: list[str], repeat: int) -> None:
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    stages: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i in range(repeat):
        for way in WAYS:
            got = once(way, outputs, run_ids(way, i), args)
            if got is None:
                continue
            walls[way].append(got[0])
            for e in got[1]["stages"]:
                if e["stage"] in args[args.index("--stages") + 1].split(","):
                    stages.setdefault((way, e["stage"]), []).append((e["seconds"], timing.outside_steps(e) or 0.0))
    for way, w in walls.items():
        if not w:
            continue
        print(f"{name}-{way}-seconds {statistics.median(w):.1f} (runs: {', '.join(f'{x:.1f}' for x in w)})")
        for (way_, stage), times in sorted(stages.items()):
            if way_ == way:
                print(f"{name}-{way}-stage-{stage}-seconds {statistics.median(t for t, _ in times):.1f} "
                      f"outside the steps {statistics.median(o for _, o in times):.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="parameters/lab.yaml")
    ap.add_argument("--outputs", help="where run folders go (default: a new temporary folder)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="also check mode on 01-04 (a lab must be up)")
    ap.add_argument("--warm", metavar="RUN_ID", help="also a warm rerun of 01-04 in this run (its lab up)")
    ap.add_argument("--no-stage-01", action="store_true", help="leave out stage 01 alone")
    args = ap.parse_args()
    out = Path(args.outputs) if args.outputs else Path(tempfile.mkdtemp(prefix="bench-kernels-"))
    params = ["--params", args.params]
    stamp = time.strftime("%H%M%S")
    if not args.no_stage_01:
        alone = Path(tempfile.mkdtemp(prefix="bench-kernels-01-"))  # not --outputs: its `latest` stays the lab's run
        measure("stage-01", alone, lambda way, i: f"k01-{way}-{i}", [*params, "--stages", "01"], args.repeat)
    if args.check:
        measure("check-01-04", out, lambda way, i: f"kcheck-{stamp}-{way}-{i}",
                [*params, "--check", "--stages", "01,02,03,04"], args.repeat)
    if args.warm:
        measure("warm-01-04", out, lambda way, i: args.warm, [*params, "--stages", "01,02,03,04"], args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
