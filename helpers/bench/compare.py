"""Several runs side by side: their figures per profile and layer, their
environments, and what makes their figures incomparable.

    python -m helpers compare outputs/RUN_A outputs/RUN_B [...] [--plot FILE]

Each run is its folder's results.json (see results.schema.json). Two runs'
figures are comparable only when they were measured alike: the same
accelerator on each layer, the same kernel, QEMU, libvirt and CPU on L0 and in
L1, and the same fio settings. Every difference in those is said plainly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunbookError
from . import fio, results

MIN_RUNS = 2


@dataclass
class Run:
    """One run's results: ``label`` (its folder's name) and the validated document."""

    label: str
    path: Path
    doc: dict


@dataclass
class Difference:
    """One setting that differs between runs (or that a run did not record)."""

    what: str
    values: dict[str, Any]   # run label -> value (None: not recorded)

    @property
    def unknown(self) -> list[str]:
        return [k for k, v in self.values.items() if v is None]


def load_run(path: str | Path) -> Run:
    """A run folder (or its results.json), validated; a RunbookError saying why not."""
    p = Path(path)
    if not p.exists():
        raise RunbookError(f"{path}: no such run folder", hint="give run folders under outputs/, e.g. outputs/latest")
    folder = p if p.is_dir() else p.parent
    return Run(folder.resolve().name, p, results.load(p))


def load_runs(paths: list[str | Path]) -> list[Run]:
    """At least two distinct runs, in the order given."""
    if len(paths) < MIN_RUNS:
        raise RunbookError(f"compare needs at least {MIN_RUNS} runs, got {len(paths)}",
                           hint="give two or more run folders; one run's figures are in its own stage 05")
    runs = [load_run(p) for p in paths]
    seen: dict[str, Run] = {}
    for r in runs:
        key = str((r.path if r.path.is_dir() else r.path.parent).resolve())
        if key in seen:
            raise RunbookError(f"{r.path} is given twice (as {seen[key].path})", hint="give each run once")
        seen[key] = r
    labels = [r.label for r in runs]
    for r in runs:  # two folders of the same name (copies elsewhere): tell them apart by their path
        if labels.count(r.label) > 1:
            r.label = str(r.path)
    return runs


def latest_runs(outputs: Path, count: int = MIN_RUNS) -> list[Path]:
    """The ``count`` newest run folders under ``outputs`` that have a results.json, oldest first."""
    found = sorted((d for d in Path(outputs).iterdir() if d.is_dir() and not d.is_symlink()
                    and (d / "results.json").exists()), key=lambda d: (d / "results.json").stat().st_mtime)
    return found[-count:]


# --- what must match --------------------------------------------------------------------------

def settings(doc: dict) -> dict[str, Any]:
    """What a run's figures depend on, by a readable name: accelerators, versions, CPU, fio."""
    out: dict[str, Any] = {}
    for layer in ("L1", "L2"):
        out[f"{layer} accelerator"] = doc["layers"][layer]["accel"]
    for layer in ("L0", "L1"):
        env = doc["environment"][layer]
        for key, name in (("kernel", "kernel"), ("qemu", "QEMU version"), ("libvirt", "libvirt version"),
                          ("cpu_model", "CPU model")):
            out[f"{layer} {name}"] = env[key]
    out["results version (what each layer measured)"] = doc["version"]
    f = doc["fio"]
    out["fio runtime (s per profile and repeat)"] = f["runtime_s"]
    out["fio file size (MiB)"] = f["size_mib"]
    out["fio repeats"] = f["repeats"]
    out["fio profiles"] = ", ".join(f["profiles"])
    out["fio jobs (rw/bs/iodepth)"] = ", ".join(f"{n} {j['rw']}/{j['bs']}/{j['iodepth']}"
                                                for n, j in sorted(f["jobs"].items()))
    out["fio engine"] = f"{f['ioengine']}, direct={int(f['direct'])}"
    return out


def differences(runs: list[Run]) -> list[Difference]:
    """Every setting that is not the same in all runs, or that some run (or none) recorded."""
    table = {r.label: settings(r.doc) for r in runs}
    out = []
    for what in settings(runs[0].doc):
        values = {label: s[what] for label, s in table.items()}
        known = {repr(v) for v in values.values() if v is not None}
        if len(known) > 1 or None in values.values():
            out.append(Difference(what, values))
    return out


def statements(diffs: list[Difference]) -> list[str]:
    """The differences in plain words, one sentence each; what no run recorded, in one sentence."""
    out = []
    nowhere = [d.what for d in diffs if len(d.unknown) == len(d.values)]
    for d in diffs:
        if d.what in nowhere:
            continue
        shown = ", ".join(f"{label}: {v if v is not None else 'not recorded'}" for label, v in d.values.items())
        if d.unknown and len({repr(v) for v in d.values.values() if v is not None}) <= 1:
            out.append(f"Cannot tell whether the runs had the same {d.what}: "
                       f"{', '.join(d.unknown)} did not record it ({shown}).")
        else:
            out.append(f"The runs differ in {d.what} ({shown}): their figures are not comparable.")
    if nowhere:
        out.append(f"Cannot tell whether the runs had the same {', '.join(nowhere)}: no run recorded "
                   f"{'it' if len(nowhere) == 1 else 'them'}.")
    return out


# --- tables ---------------------------------------------------------------------------------

def _profiles(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(s["profile"] for r in runs for s in r.doc["summary"]))


def _layers(runs: list[Run]) -> list[str]:
    present = {s["layer"] for r in runs for s in r.doc["summary"]}
    return [layer for layer in results.LAYER_ORDER if layer in present]


def _series(runs: list[Run]) -> list[tuple[str, str]]:
    present = {fio.series_of(s) for r in runs for s in r.doc["summary"]}
    return [x for x in results.SERIES_ORDER if x in present]


def summary_of(run: Run, layer: str, profile: str, kind: str | None = None) -> dict | None:
    """The summary row of ``layer`` (and target ``kind``: version 1 rows get theirs from
    ``fio.series_of``; None: the layer's first) and ``profile``."""
    return next((s for s in run.doc["summary"] if s["layer"] == layer and s["profile"] == profile
                 and (kind is None or fio.series_of(s)[1] == kind)), None)


def center(s: dict) -> tuple[float, str]:
    """IOPS median (version 2) or mean (version 1 recorded no median), and which it is."""
    return (s["iops_median"], "median") if "iops_median" in s else (s["iops_mean"], "mean")


FIGURE_COLUMNS = ["profile", "layer", "target", "run", "repeats", "IOPS (min - max)", "MiB/s",
                  "latency p50 / p99 / p99.9 (µs)", "passthrough vs emulated in L2"]


def figure_rows(runs: list[Run]) -> list[tuple]:
    """One row per profile, layer, target and run: the runs side by side within each."""
    rows = []
    for profile in _profiles(runs):
        for layer, kind in _series(runs):
            for r in runs:
                s = summary_of(r, layer, profile, kind)
                if s is None:
                    continue
                c, which = center(s)
                bw = s.get("bw_mib_s_median", s["bw_mib_s_mean"])
                v = next((x for x in r.doc.get("comparisons", []) if x["profile"] == profile
                          and (x["a"]["layer"], x["a"]["target_kind"]) == (layer, kind)
                          and x["b"]["target_kind"] == "virtio-blk" and x["ratio_median"] is not None), None)
                rows.append((profile, layer, fio.TARGET_NAMES.get(kind, kind), r.label, s["runs"],
                             f"{which} {c:,.0f} ({s['iops_min']:,.0f} - {s['iops_max']:,.0f})", f"{bw:.1f}",
                             f"{s['lat_p50_us']:.0f} / {s['lat_p99_us']:.0f} / {s['lat_p999_us']:.0f}",
                             f"{v['ratio_median']:.2f} x ({v['ratio_low']:.2f} - {v['ratio_high']:.2f}), "
                             f"{v['verdict']}" if v else ""))
    return rows


def environment_columns(runs: list[Run]) -> list[str]:
    return ["", *(r.label for r in runs)]


def environment_rows(runs: list[Run]) -> list[tuple]:
    """Each run's environment and settings, one line per setting; then its start and parameters."""
    table = [settings(r.doc) for r in runs]
    rows = [(what, *("-" if s[what] is None else s[what] for s in table)) for what in table[0]]
    rows.append(("started", *(r.doc["run"]["started"] or "-" for r in runs)))
    rows.append(("results written", *(r.doc["run"]["written"] for r in runs)))
    rows.append(("parameter file", *(f"{r.doc['run']['params']['file']} "
                                     f"(sha256 {(r.doc['run']['params']['sha256'] or '?')[:12]})" for r in runs)))
    return rows


def format_table(rows: list[tuple], columns: list[str]) -> str:
    """Rows as a plain text table."""
    cells = [list(map(str, columns))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(runs: list[Run]) -> str:
    """The comparison as text: the verdict on comparability, the figures, the environments."""
    said = statements(differences(runs))
    verdict = ("\n".join(f"- {s}" for s in said) if said else
               "The runs were measured alike (accelerators, versions, CPU, fio settings): their figures compare.")
    return (f"Comparing {len(runs)} runs: {', '.join(r.label for r in runs)}\n\n{verdict}\n\n"
            f"{format_table(figure_rows(runs), FIGURE_COLUMNS)}\n\n"
            f"{format_table(environment_rows(runs), environment_columns(runs))}\n")


# --- plot ------------------------------------------------------------------------------------

def plot(runs: list[Run], out: Path | None = None, show: bool = True):
    """Per profile (columns): IOPS, bandwidth and latency percentiles (rows), each grouped by
    layer with one bar or column of marks per run. Log scales; units on every axis."""
    import matplotlib.pyplot as plt

    profiles, series = _profiles(runs), _series(runs)
    groups = [fio.series_name(*x) for x in series]
    labels = [r.label for r in runs]
    by = {r.label: r for r in runs}
    fig, axes = plt.subplots(3, len(profiles), figsize=(max(5.5 * len(profiles), 7), 11), squeeze=False)
    for col, profile in enumerate(profiles):
        row = lambda label, g: summary_of(by[label], series[groups.index(g)][0], profile,  # noqa: E731
                                          series[groups.index(g)][1])
        val = lambda key: (lambda label, g: (row(label, g) or {}).get(key))  # noqa: E731
        mid = lambda label, g: (lambda x: center(x)[0] if x else None)(row(label, g))  # noqa: E731
        spread = lambda label, g: (lambda x: (center(x)[0] - x["iops_min"], x["iops_max"] - center(x)[0])  # noqa: E731
                                   if x else (0, 0))(row(label, g))
        bw = lambda label, g: (lambda x: x.get("bw_mib_s_median", x["bw_mib_s_mean"]) if x else None)(row(label, g))  # noqa: E731
        results.grouped_bars(axes[0][col], groups, labels, mid, spread)
        results.grouped_bars(axes[1][col], groups, labels, bw, val("bw_mib_s_stdev"))
        results.percentile_marks(axes[2][col], groups, labels, row)
        axes[0][col].set_title(profile)
        for r, unit in enumerate(("IOPS (I/O operations per second)", "bandwidth (MiB/s)", "completion latency (µs)")):
            ax = axes[r][col]
            ax.set_yscale("log")
            ax.set_ylabel(f"{unit}, log scale", fontsize=8)
            ax.set_xlabel("layer and target (bars/marks: run)", fontsize=8)
            ax.tick_params(axis="x", labelsize=7, rotation=15)
    fig.suptitle("IOPS: median (version 1: mean), whiskers min - max; bandwidth: error bar stdev; "
                 "latency: p50 / p99 / p99.9")
    fig.legend(handles=results.legend_handles(labels), loc="lower center", ncol=len(labels) + 3, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if out is not None:
        fig.savefig(out, dpi=90)
    if show:
        plt.show()
    return fig


def compare_runs(paths: list[str | Path], plot_file: Path | None = None) -> list[str]:
    """Load and validate ``paths`` (two or more run folders), build the report and, with
    ``plot_file``, the plots; the statements of what makes their figures incomparable
    (empty: they compare). A RunbookError when a folder cannot be compared."""
    runs = load_runs(paths)
    report(runs)
    if plot_file is not None:
        plot(runs, Path(plot_file), show=False)
    return statements(differences(runs))


# --- the command line ------------------------------------------------------------------------

def main(paths: list[str], plot_file: str | None = "compare.png", out=None) -> int:
    """``python -m helpers compare``: the report on ``out``; the plot to ``plot_file``.
    A bad argument (a folder without results, fewer than two runs) is one message and exit 2."""
    try:
        runs = load_runs(paths)
    except RunbookError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    out = out or sys.stdout
    out.write(report(runs))
    if plot_file:
        import matplotlib
        matplotlib.use("Agg")
        plot(runs, Path(plot_file), show=False)
        out.write(f"\nplots: {plot_file}\n")
    return 0
