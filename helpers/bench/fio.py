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


def is_write(profile: str) -> bool:
    """A profile that writes to its target (needs the consent that covers destroying that data)."""
    return "write" in PROFILES[profile]["rw"]


def split_by_consent(profiles: Sequence[str], may_write: bool) -> tuple[list[str], list[str]]:
    """(the profiles to run, the write profiles left out): reads always, writes only with consent."""
    names = list(profiles)
    return ([p for p in names if may_write or not is_write(p)], [p for p in names if not may_write and is_write(p)])


# what a row measured: the namespace as a block device (on L0: the emulated drive's backing file,
# the namespace's bytes), a virtio-blk disk L1's QEMU emulates for L2, or a file of a filesystem
TARGET_KINDS = ("namespace", "virtio-blk", "file")
TARGET_NAMES = {"namespace": "raw namespace", "virtio-blk": "virtio-blk (emulated)", "file": "filesystem file"}


def run_profiles(guest: Guest, layer: str, target: str, profiles: list[str], repeats: int,
                 runtime_s: float, size_mib: int, say=print, target_kind: str = "namespace",
                 accel: str | None = None, iommu: str | None = None) -> list[dict]:
    """Every profile ``repeats`` times on one layer; rows for results.json (each with its seconds).

    Each repeat is one fio running all the profiles in turn (a process start
    is costly in emulated guests); a row's ``seconds`` is its share of that
    fio's time. Rows come profile by profile, runs 1..repeats within each.
    Each row names its target's kind, and the accelerator and IOMMU mode of the
    layer that did the I/O (``results.schema.json`` says what each means).
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
            say(f"  {layer} {TARGET_NAMES[target_kind]} {r.profile} run {i}/{repeats}: {r.iops:,.0f} IOPS, "
                f"{r.bw_mib_s:.1f} MiB/s, p99 {r.lat_p99_us:.0f} µs")
            per_profile[k].append({"layer": layer, "target": target, "target_kind": target_kind,
                                   "accel": accel, "iommu": iommu, "run": i, **asdict(r),
                                   "seconds": round(took, 1)})
    return [row for rows in per_profile for row in rows]


def series_of(row: dict) -> tuple[str, str]:
    """(layer, target kind): one bar in the plot, one line per profile in the table.
    A row of results version 1 has no target kind: L2 measured a file of its XFS then,
    L1 the raw namespace, L0 a scratch file."""
    kind = row.get("target_kind") or ("namespace" if row["layer"] == "L1" else "file")
    return row["layer"], kind


def series_name(layer: str, kind: str) -> str:
    return f"{layer} {TARGET_NAMES.get(kind, kind)}"


def summarize(rows: list[dict]) -> list[dict]:
    """Per layer, target kind and profile: the median and the spread (min, max, stdev) of the
    repeats. The median, not the mean: with a handful of repeats one disturbed run (another
    guest's burst on a shared machine) moves a mean but not a median."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*series_of(r), r["profile"]), []).append(r)
    out = []
    for (layer, kind, profile), rs in groups.items():
        iops = [r["iops"] for r in rs]
        bw = [r["bw_mib_s"] for r in rs]
        p99 = [r["lat_p99_us"] for r in rs]
        out.append({"layer": layer, "target_kind": kind, "profile": profile, "runs": len(rs),
                    "accel": rs[0].get("accel"), "iommu": rs[0].get("iommu"),
                    "iops_median": statistics.median(iops), "iops_mean": statistics.fmean(iops),
                    "iops_stdev": statistics.pstdev(iops), "iops_min": min(iops), "iops_max": max(iops),
                    "bw_mib_s_median": statistics.median(bw), "bw_mib_s_mean": statistics.fmean(bw),
                    "bw_mib_s_stdev": statistics.pstdev(bw), "bw_mib_s_min": min(bw), "bw_mib_s_max": max(bw),
                    "lat_p50_us": statistics.median(r["lat_p50_us"] for r in rs),
                    "lat_p99_us": statistics.median(p99), "lat_p99_us_min": min(p99), "lat_p99_us_max": max(p99),
                    "lat_p999_us": statistics.median(r["lat_p999_us"] for r in rs),
                    "iops_runs": iops})
    return out


def separation_p(n_a: int, n_b: int) -> float:
    """How often two sets of ``n_a`` and ``n_b`` repeats of the SAME thing would come out with
    no overlap at all, either way round, by chance alone: 2 / C(n_a + n_b, n_a) (the exact
    two-sided Mann-Whitney test at its extreme). 3 and 3 repeats: 0.10; 4 and 4: 0.029;
    5 and 5: 0.008."""
    from math import comb
    return min(1.0, 2 / comb(n_a + n_b, n_a))


def verdict(a: Sequence[float], b: Sequence[float]) -> dict:
    """A against B from their repeats: the ratio of the medians, the range of every ratio of
    a repeat of A to a repeat of B, and a verdict: "faster" when every repeat of A beat every
    repeat of B (the whole range above 1), "slower" when every one fell short (below 1),
    "within noise" otherwise. Separated ranges are a rank test: ``p`` is the chance that
    repeats of two equal things separate like that."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b or min(b) <= 0:
        return {"ratio_median": None, "ratio_low": None, "ratio_high": None, "verdict": "not measured", "p": None}
    low, high = min(a) / max(b), max(a) / min(b)
    word = "faster" if low > 1 else "slower" if high < 1 else "within noise"
    return {"ratio_median": statistics.median(a) / statistics.median(b), "ratio_low": low, "ratio_high": high,
            "verdict": word, "p": separation_p(len(a), len(b)) if word != "within noise" else None}


# the comparisons stage 05 reports, each "A against B": (A, B, what it asks)
COMPARISONS = (
    (("L2", "namespace"), ("L2", "virtio-blk"),
     "passthrough vs emulated in the same guest: the NVMe through VFIO against a virtio-blk disk L1's QEMU emulates"),
    (("L2", "namespace"), ("L1", "namespace"),
     "the same namespace in L2 (through VFIO) against in L1 (before it was given away)"),
    (("L1", "namespace"), ("L0", "namespace"),
     "the same namespace in L1 (the emulated NVMe) against its backing file on L0"),
)


def comparisons(summary: list[dict]) -> list[dict]:
    """Every comparison of ``COMPARISONS`` both sides measured, per profile, on IOPS (bandwidth is
    IOPS times the block size: the same ratio)."""
    by = {(s["layer"], s["target_kind"], s["profile"]): s for s in summary}
    profiles = list(dict.fromkeys(s["profile"] for s in summary))
    out = []
    for (la, ka), (lb, kb), what in COMPARISONS:
        for p in profiles:
            sa, sb = by.get((la, ka, p)), by.get((lb, kb, p))
            if sa is None or sb is None:
                continue
            out.append({"a": {"layer": la, "target_kind": ka}, "b": {"layer": lb, "target_kind": kb},
                        "question": what, "profile": p, "metric": "iops",
                        **verdict(sa["iops_runs"], sb["iops_runs"])})
    return out


def relative(summary: list[dict], layer: str = "L2", base: str = "L1") -> list[dict]:
    """L2 as a percentage of L1 on the raw namespace, per profile (IOPS and bandwidth, medians)."""
    by = {(s["layer"], s.get("target_kind", "namespace"), s["profile"]): s for s in summary}
    out = []
    for (lay, kind, profile), s in by.items():
        b = by.get((base, "namespace", profile))
        if lay == layer and kind == "namespace" and b and b["iops_median"]:
            out.append({"profile": profile, "iops_pct": 100 * s["iops_median"] / b["iops_median"],
                        "bw_pct": 100 * s["bw_mib_s_median"] / b["bw_mib_s_median"] if b["bw_mib_s_median"] else 0.0})
    return out
