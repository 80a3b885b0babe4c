"""fio: the standard profiles, the command, and reading its JSON output."""
from __future__ import annotations

import json
import shlex
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import RunbookError
from ..guest import Guest

PROFILES = {
    "randread-4k": {"rw": "randread", "bs": "4k", "iodepth": 32},
    "seqread-128k": {"rw": "read", "bs": "128k", "iodepth": 8},
    "randwrite-4k": {"rw": "randwrite", "bs": "4k", "iodepth": 32},
    "seqwrite-128k": {"rw": "write", "bs": "128k", "iodepth": 8},
}
PERCENTILES = ("50.000000", "99.000000", "99.900000")


def fio_time(seconds: float) -> str:
    """fio's spelling of a duration: whole seconds as ``5``, anything finer in ms (``500ms``)."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{round(seconds * 1000)}ms"


def fio_command(target: str, profiles: Sequence[str], runtime_s: float, size_mib: int) -> list[str]:
    """One fio on ``target`` (a block device or a file) running ``profiles`` one after another.

    Direct I/O, JSON out. The options before the first ``--name`` are global;
    each profile is its own job named after it, with ``--stonewall`` on every
    job after the first so it starts only when the one before has finished
    (sequential, never in parallel). No ``--group_reporting``: each profile
    comes back as its own entry in fio's JSON ``jobs`` list.
    """
    names = list(profiles)
    if not names:
        raise RunbookError("fio: no profiles to run")
    cmd = ["fio", f"--filename={target}", "--ioengine=libaio", "--direct=1", f"--size={size_mib}M",
           f"--runtime={fio_time(runtime_s)}", "--time_based", "--output-format=json"]
    for i, profile in enumerate(names):
        p = PROFILES[profile]
        cmd += [f"--name={profile}", *(["--stonewall"] if i else []),
                f"--rw={p['rw']}", f"--bs={p['bs']}", f"--iodepth={p['iodepth']}"]
    return cmd


@dataclass
class FioResult:
    """One fio run, reduced to the figures we plot."""

    profile: str
    iops: float
    bw_mib_s: float
    lat_p50_us: float
    lat_p99_us: float
    lat_p999_us: float


def _load(what: str, text: str) -> dict:
    """fio's JSON document (tolerating the notes fio may print before or after it)."""
    start = text.find("{")
    if start < 0:
        raise RunbookError(f"fio printed no JSON for {what}: {text.strip()[:200]}")
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError as e:
        raise RunbookError(f"fio printed unreadable JSON for {what}: {e}") from None
    return data


def _result(profile: str, job: dict) -> FioResult:
    side = job["write"] if "write" in PROFILES[profile]["rw"] else job["read"]
    clat = side.get("clat_ns", {}).get("percentile", {})
    us = lambda k: clat.get(k, 0) / 1000.0  # noqa: E731
    return FioResult(profile, float(side["iops"]), side["bw"] / 1024.0,
                     us(PERCENTILES[0]), us(PERCENTILES[1]), us(PERCENTILES[2]))


def parse_all(profiles: Sequence[str], text: str) -> list[FioResult]:
    """One FioResult per profile, in ``profiles`` order, each from the job named after it."""
    data = _load(", ".join(profiles), text)
    jobs = {j.get("jobname"): j for j in data.get("jobs", [])}
    missing = [n for n in profiles if n not in jobs]
    if missing:
        raise RunbookError(f"fio JSON has no job for {', '.join(missing)} (jobs: {', '.join(map(str, jobs)) or 'none'})")
    return [_result(n, jobs[n]) for n in profiles]


def parse(profile: str, text: str) -> FioResult:
    """One profile's figures from fio's JSON."""
    return parse_all([profile], text)[0]


def run(guest: Guest, target: str, profiles: Sequence[str], runtime_s: float, size_mib: int) -> list[FioResult]:
    """Run ``profiles`` once on ``guest``, one after another in a single fio."""
    names = list(profiles)
    cmd = fio_command(target, names, runtime_s, size_mib)
    r = guest.run(shlex.join(cmd), timeout=runtime_s * len(names) * 4 + 300)
    if not r.ok:
        raise RunbookError(f"fio {','.join(names)} on {guest.name}:{target} failed: {(r.err or r.out).strip()[-300:]}",
                           hint="check that the target exists and fio is installed")
    return parse_all(names, r.out)


def run_profiles(guest: Guest, layer: str, target: str, profiles: list[str], repeats: int,
                 runtime_s: float, size_mib: int, say=print) -> list[dict]:
    """Every profile ``repeats`` times on one layer; rows for results.json (each with its seconds).

    Each repeat is one fio running all the profiles in turn (a process start
    is costly in emulated guests); a row's ``seconds`` is its share of that
    fio's time. Rows come profile by profile, runs 1..repeats within each.
    """
    names = list(profiles)
    if not names:
        return []
    per_profile: list[list[dict]] = [[] for _ in names]
    for i in range(1, repeats + 1):
        t0 = time.monotonic()
        res = run(guest, target, names, runtime_s, size_mib)
        took = (time.monotonic() - t0) / len(names)
        for k, r in enumerate(res):
            say(f"  {layer} {r.profile} run {i}/{repeats}: {r.iops:,.0f} IOPS, {r.bw_mib_s:.1f} MiB/s, "
                f"p99 {r.lat_p99_us:.0f} us")
            per_profile[k].append({"layer": layer, "target": target, "run": i, **asdict(r),
                                   "seconds": round(took, 1)})
    return [row for rows in per_profile for row in rows]


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
