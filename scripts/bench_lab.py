"""Benchmark the lab (not a test): prints figures, one per line.

    .venv/bin/python scripts/bench_lab.py [--params parameters/lab.yaml] [--no-floor]

1. the plain-QEMU floor: ../shared/tools/raw-chain.sh (kernel-only guests, no libvirt);
2. a cold run of stages 01-05 (lab images already built, no guest running);
3. check mode on the warm lab, stages 01-04 (`--check`): every step planned, nothing changed;
4. a warm rerun of stages 01-04 with everything up: must change nothing;
5. teardown.
The cold and the warm run are also printed step by step (plan, apply, the waits for a machine
and what each stage spent outside its steps: ``helpers.timing``), with the cold run's slowest steps.
Goals (issues 13 and 26): cold 01-04 plus 05's verification (the benchmark's fio runs excluded)
within 3x the floor, the whole run with the short benchmark within 4x, the warm rerun within 12 s
with no change, check mode on the warm lab no slower than the warm rerun.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import timing  # noqa: E402

RAW_CHAIN = ROOT.parent / "shared" / "tools" / "raw-chain.sh"


def sh(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, **kw)
    return time.monotonic() - t0, r


def runner(outputs: Path, params: str, *args) -> tuple[float, subprocess.CompletedProcess]:
    return sh([sys.executable, "-m", "helpers", "run", "--params", params, "--outputs", str(outputs), "-q", *args])


def failed(out: Path, params: str, which: str, r: subprocess.CompletedProcess) -> int:
    """A failed run's times measure nothing: say why, tear down, and stop."""
    reason = r.stderr.strip().splitlines()[-3:]
    print(f"{which}-run FAILED, figures above are not a measurement: {' / '.join(reason)}")
    td, _ = runner(out, params, "--stages", "99", "--run-id", "cold")
    print(f"teardown-seconds {td:.0f}")
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="parameters/lab.yaml")
    ap.add_argument("--no-floor", action="store_true", help="skip the raw-chain floor")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    sh([sys.executable, "-m", "helpers.lab.images"])  # built once, not timed
    runner(out, args.params, "--stages", "99", "--run-id", "pre")
    floor = None
    if not args.no_floor:
        if not RAW_CHAIN.exists():
            print(f"floor: {RAW_CHAIN} not found", file=sys.stderr)
        else:
            _, r = sh(["bash", str(RAW_CHAIN), str(out / "raw-chain")], timeout=1200)
            m = re.search(r"raw-chain-seconds (\d+)", r.stdout)
            floor = int(m.group(1)) if m else None
            print(f"floor-seconds {floor if floor else 'FAILED'}")
    total, r = runner(out, args.params, "--run-id", "cold")
    summary = json.loads((out / "cold" / "summary.json").read_text())
    print(f"cold-total-seconds {total:.0f} status {summary.get('status')}")
    for s in summary["stages"]:
        print(f"cold-stage-{s['stage']}-seconds {s['seconds']}")
    for line in timing.text_lines(summary, "cold-"):
        print(line)
    for t in timing.slowest(summary, 8):
        print(f"cold-slowest {t.stage} {t.step!r} {t.total:.1f} s (waiting {t.wait:.1f} s)")
    if r.returncode != 0:
        return failed(out, args.params, "cold", r)
    state = json.loads((out / "cold" / "state.json").read_text())
    bench_s = sum(r.get("seconds", 0) for k in ("baseline", "bench_l2", "bench_l2_virtio", "bench_l0")
                 for r in state.get(k) or [])
    through_verify = sum(s["seconds"] for s in summary["stages"]) - (bench_s or 0)
    print(f"cold-through-verify-seconds {through_verify:.0f} (fio runs excluded: {bench_s:.0f} s)")
    if floor:
        print(f"ratio-cold-through-verify-to-floor {through_verify / floor:.2f} (goal 3)")
        print(f"ratio-cold-total-to-floor {total / floor:.2f} (goal 4)")
    check, r = runner(out, args.params, "--check", "--stages", "01,02,03,04", "--run-id", "warm-check")
    steps = [w for s in json.loads((out / "warm-check" / "summary.json").read_text())["stages"]
             for w in s.get("steps", [])] if (out / "warm-check" / "summary.json").exists() else []
    print(f"check-01-04-seconds {check:.1f} steps {len(steps)} planned changes "
          f"{sum(bool(w['changes']) for w in steps)} unknown {sum(bool(w['unknown']) for w in steps)} "
          f"rc {r.returncode} (goal: no slower than the warm rerun, 0 changes)")
    warm, r = runner(out, args.params, "--stages", "01,02,03,04", "--run-id", "cold")
    changes = json.loads((out / "cold" / "state.json").read_text()).get("changes", {})
    did = sum(c["changed"] for st in ("01", "02", "03", "04") for step in changes.get(st, {}).values() for c in step)
    print(f"warm-01-04-seconds {warm:.1f} changes {did} (goal: 12 s, 0 changes)")
    if r.returncode != 0:
        return failed(out, args.params, "warm", r)
    warm_summary = json.loads((out / "cold" / "summary.json").read_text())
    warm_summary["stages"] = [st for st in warm_summary["stages"] if st["stage"] < "05"]
    for st in warm_summary["stages"]:
        print(f"warm-stage-{st['stage']}-seconds {st['seconds']}")
    for line in timing.text_lines(warm_summary, "warm-"):
        print(line)
    td, r = runner(out, args.params, "--stages", "99", "--run-id", "cold")
    print(f"teardown-seconds {td:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
