"""fio: the standard profiles, the command, and reading its JSON output."""
from __future__ import annotations

import json
import shlex
import statistics
import time
from dataclasses import asdict, dataclass

from ..errors import RunbookError
from ..guest import Guest

PROFILES = {
    "randread-4k": {"rw": "randread", "bs": "4k", "iodepth": 32},
    "seqread-128k": {"rw": "read", "bs": "128k", "iodepth": 8},
    "randwrite-4k": {"rw": "randwrite", "bs": "4k", "iodepth": 32},
    "seqwrite-128k": {"rw": "write", "bs": "128k", "iodepth": 8},
}
PERCENTILES = ("50.000000", "99.000000", "99.900000")


def fio_command(target: str, profile: str, runtime_s: int, size_mib: int) -> list[str]:
    """fio on ``target`` (a block device or a file), direct I/O, JSON out."""
    p = PROFILES[profile]
    return ["fio", f"--name={profile}", f"--filename={target}", f"--rw={p['rw']}", f"--bs={p['bs']}",
            f"--iodepth={p['iodepth']}", "--ioengine=libaio", "--direct=1", f"--size={size_mib}M",
            f"--runtime={runtime_s}", "--time_based", "--group_reporting", "--output-format=json"]


@dataclass
class FioResult:
    """One fio run, reduced to the figures we plot."""

    profile: str
    iops: float
    bw_mib_s: float
    lat_p50_us: float
    lat_p99_us: float
    lat_p999_us: float


def parse(profile: str, text: str) -> FioResult:
    """Read fio's JSON (tolerating the notes fio may print before it)."""
    start = text.find("{")
    if start < 0:
        raise RunbookError(f"fio printed no JSON for {profile}: {text.strip()[:200]}")
    data = json.loads(text[start:])
    job = data["jobs"][0]
    side = job["write"] if "write" in PROFILES[profile]["rw"] else job["read"]
    clat = side.get("clat_ns", {}).get("percentile", {})
    us = lambda k: clat.get(k, 0) / 1000.0  # noqa: E731
    return FioResult(profile, float(side["iops"]), side["bw"] / 1024.0,
                     us(PERCENTILES[0]), us(PERCENTILES[1]), us(PERCENTILES[2]))


def run(guest: Guest, target: str, profile: str, runtime_s: int, size_mib: int) -> FioResult:
    """Run one profile once on ``guest``."""
    cmd = fio_command(target, profile, runtime_s, size_mib)
    r = guest.run(shlex.join(cmd), timeout=runtime_s * 4 + 300)
    if not r.ok:
        raise RunbookError(f"fio {profile} on {guest.name}:{target} failed: {(r.err or r.out).strip()[-300:]}",
                           hint="check that the target exists and fio is installed")
    return parse(profile, r.out)


def run_profiles(guest: Guest, layer: str, target: str, profiles: list[str], repeats: int,
                 runtime_s: int, size_mib: int, say=print) -> list[dict]:
    """Every profile ``repeats`` times on one layer; rows for results.json (each with its seconds)."""
    rows = []
    for profile in profiles:
        for i in range(1, repeats + 1):
            t0 = time.monotonic()
            res = run(guest, target, profile, runtime_s, size_mib)
            took = time.monotonic() - t0
            say(f"  {layer} {profile} run {i}/{repeats}: {res.iops:,.0f} IOPS, {res.bw_mib_s:.1f} MiB/s, "
                f"p99 {res.lat_p99_us:.0f} us")
            rows.append({"layer": layer, "target": target, "run": i, **asdict(res), "seconds": round(took, 1)})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread (stdev, min, max) per layer and profile."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["profile"]), []).append(r)
    out = []
    for (layer, profile), rs in groups.items():
        iops = [r["iops"] for r in rs]
        bw = [r["bw_mib_s"] for r in rs]
        out.append({"layer": layer, "profile": profile, "runs": len(rs),
                    "iops_mean": statistics.fmean(iops), "iops_stdev": statistics.pstdev(iops),
                    "iops_min": min(iops), "iops_max": max(iops),
                    "bw_mib_s_mean": statistics.fmean(bw), "bw_mib_s_stdev": statistics.pstdev(bw),
                    "lat_p50_us": statistics.fmean(r["lat_p50_us"] for r in rs),
                    "lat_p99_us": statistics.fmean(r["lat_p99_us"] for r in rs),
                    "lat_p999_us": statistics.fmean(r["lat_p999_us"] for r in rs)})
    return out


def relative(summary: list[dict], layer: str = "L2", base: str = "L1") -> list[dict]:
    """L2 as a percentage of L1, per profile (IOPS and bandwidth)."""
    by = {(s["layer"], s["profile"]): s for s in summary}
    out = []
    for (lay, profile), s in by.items():
        b = by.get((base, profile))
        if lay == layer and b and b["iops_mean"]:
            out.append({"profile": profile, "iops_pct": 100 * s["iops_mean"] / b["iops_mean"],
                        "bw_pct": 100 * s["bw_mib_s_mean"] / b["bw_mib_s_mean"] if b["bw_mib_s_mean"] else 0.0})
    return out
