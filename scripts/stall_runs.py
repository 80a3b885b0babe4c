"""Cold lab runs back to back (not a test): do stalls and L2 crashes still happen?

    .venv/bin/python scripts/stall_runs.py [-n 10] [--params parameters/lab.yaml]

Each run tears the lab down, runs stages 01-05 from nothing into a run folder of
its own, and is classed from the runner's own words: passed, "L1 stalled" (a
stall), "L2 crashed" (a crash of L2's kernel under nested emulation), or another
failure. Prints one line per run, then, one per line: runs, passed, stalls,
L2 crashes, other failures, and the median and spread (min-max) of each stage's
seconds over the passed runs. The lab gets its own name, port and folder
(nested-kvm-stall, 2224, /var/lib/nested-nvme-stall), so a lab brought up with
`make run` is left alone. Exit status 0 only when every run passed.
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
OWN = {"l1": {"name": "nested-kvm-stall", "network": {"ssh_port": 2224}},
       "host": {"workdir": "/var/lib/nested-nvme-stall"},
       "nvme": {"backing_file": "/var/lib/nested-nvme-stall/nvme.raw"}}


def own_params(src: Path, dest: Path) -> Path:
    """The parameter file with the script's own L1 name, port and folder."""
    data = yaml.safe_load(src.read_text())
    for section, values in OWN.items():
        for key, value in values.items():
            if isinstance(value, dict):
                data[section].setdefault(key, {}).update(value)
            else:
                data[section][key] = value
    dest.write_text(yaml.safe_dump(data))
    return dest


def runner(outputs: Path, params: Path, *args: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "helpers", "run", "--params", str(params), "--outputs", str(outputs), "-q", *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=timeout)
    return time.monotonic() - t0, r


def classify(r: subprocess.CompletedProcess) -> str:
    """passed, stall, l2-crash or failed, from the runner's exit status and its message."""
    if r.returncode == 0:
        return "passed"
    if "stalled" in r.stderr:
        return "stall"
    if "L2 crashed" in r.stderr:
        return "l2-crash"
    return "failed"


def spread(values: list[float]) -> str:
    if not values:
        return "no passed run"
    return f"median {statistics.median(values):.1f} s, spread {min(values):.1f}-{max(values):.1f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10, help="cold runs (default 10)")
    ap.add_argument("--params", default=str(ROOT / "parameters" / "lab.yaml"))
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="stall-runs-"))
    params = own_params(Path(args.params), out / "params.yaml")
    subprocess.run([sys.executable, "-m", "helpers.lab.images"], cwd=ROOT, capture_output=True)  # built once
    print(f"{args.n} cold runs of stages 01-05, run folders in {out}", flush=True)
    kinds: dict[str, int] = {"passed": 0, "stall": 0, "l2-crash": 0, "failed": 0}
    times: dict[str, list[float]] = {}
    totals: list[float] = []
    for i in range(1, args.n + 1):
        runner(out, params, "--stages", "99", "--run-id", f"pre-{i}")
        total, r = runner(out, params, "--run-id", f"run-{i}")
        kind = classify(r)
        kinds[kind] += 1
        stages = json.loads((out / f"run-{i}" / "summary.json").read_text()).get("stages", [])
        per = " ".join(f"{s['stage']}={s['seconds']}" for s in stages)
        why = "" if kind == "passed" else " / " + " ".join(r.stderr.strip().splitlines()[-2:])[:300]
        print(f"run {i}: {kind} in {total:.0f} s ({per}){why}", flush=True)
        if kind == "passed":
            totals.append(total)
            for s in stages:
                times.setdefault(s["stage"], []).append(s["seconds"])
    runner(out, params, "--stages", "99", "--run-id", "final")
    print(f"runs {args.n}")
    print(f"passed {kinds['passed']}")
    print(f"stalls {kinds['stall']}")
    print(f"l2-crashes {kinds['l2-crash']}")
    print(f"other-failures {kinds['failed']}")
    print(f"total {spread(totals)}")
    for stage in sorted(times):
        print(f"stage-{stage} {spread(times[stage])}")
    return 0 if kinds["passed"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
