"""Benchmark results to files (JSON and CSV) and to plots.

``results.json`` stands on its own: besides fio's figures it says what was
verified and where (L2's controller and namespace, the filesystem, the BDF and
IOMMU group in L1), each layer's accelerator, and the environment (kernels,
QEMU and libvirt on L0 and in L1, CPU, the parameter file and its hash, the
run's id and times). Its shape is ``results.schema.json`` beside this file;
``VERSION`` changes whenever a reader would have to change.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import datetime
from pathlib import Path

from ..errors import RunbookError
from ..records import keep_earlier
from . import fio

VERSION = 2
READS = (1, 2)   # the versions ``load`` and ``compare`` read
SCHEMA = Path(__file__).with_name("results.schema.json")
SCHEMAS = {1: Path(__file__).with_name("results.schema.v1.json"), VERSION: SCHEMA}
LAYER_ORDER = ("L0", "L1", "L2")
ENVIRONMENT_KEYS = ("kernel", "qemu", "libvirt", "cpu_model", "cpu_vendor", "distro", "virtualized")
CSV_COLUMNS = ("layer", "target_kind", "accel", "iommu", "profile", "run", "iops", "bw_mib_s", "lat_p50_us", "lat_p99_us", "lat_p999_us",
               "seconds", "target")
# (field, name, marker style): the hollow square stays readable around a p99.9 mark that equals p99
PERCENTILE_MARKS = (("lat_p50_us", "p50", {"marker": "o", "markersize": 7}),
                    ("lat_p99_us", "p99", {"marker": "s", "markersize": 11, "markerfacecolor": "none",
                                           "markeredgewidth": 1.6}),
                    ("lat_p999_us", "p99.9", {"marker": "^", "markersize": 6}))


# --- the document -------------------------------------------------------------------------

def run_info(run_dir: Path, params_file: Path, params_name: str, written: datetime) -> dict:
    """The run's id and times, and the parameter file by name and content hash.

    ``started`` is the runner's (summary.json); None for a run stepped through by
    hand. ``written`` is when stage 05 wrote the results (the benchmark's end)."""
    run_dir, params_file = Path(run_dir), Path(params_file)
    summary = run_dir / "summary.json"
    try:
        started = json.loads(summary.read_text()).get("started") if summary.exists() else None
    except ValueError:
        started = None
    data = params_file.read_bytes() if params_file.exists() else None
    return {"id": run_dir.name, "started": started, "written": written.isoformat(timespec="seconds"),
            "params": {"file": params_file.name, "name": params_name,
                       "sha256": hashlib.sha256(data).hexdigest() if data is not None else None}}


def environment(state: dict) -> dict:
    """L0's and L1's kernel, QEMU, libvirt, CPU and distribution, as the checks read them
    (stage 01 on the host, stage 03 in L1); every key present, None when not read."""
    env = state.get("environment") or {}
    return {layer: {k: (env.get(layer) or {}).get(k) for k in ENVIRONMENT_KEYS} for layer in ("L0", "L1")}


def layers(state: dict, rows: list[dict]) -> dict:
    """Each layer's accelerator (L0 is the host: none of ours) and where fio ran on it, by target kind."""
    targets: dict[str, dict[str, str]] = {"L0": {}, "L1": {}, "L2": {}}
    for r in rows:
        targets[r["layer"]][r.get("target_kind") or "file"] = r["target"]
    host = state.get("host") or {}
    l2 = state.get("l2") or {}
    return {"L0": {"accel": "none", "accel_reason": "the host", "fio_targets": targets["L0"]},
            "L1": {"accel": state.get("accel"), "accel_reason": host.get("accel_reason"),
                   "fio_targets": targets["L1"]},
            "L2": {"accel": l2.get("accel"), "accel_reason": l2.get("accel_reason"),
                   "fio_targets": targets["L2"]}}


def nvme_in_l1(state: dict) -> dict:
    """The NVMe in L1 as stage 04 found and gave it up: BDF, IOMMU group, drivers."""
    n = state.get("nvme") or {}
    after = n.get("after") or {}
    return {"bdf": n.get("bdf_in_l1"), "iommu_group": n.get("iommu_group"), "node_device": n.get("node_device"),
            "group_members": sorted(n.get("group_members") or []), "driver_before": n.get("driver_before"),
            "driver_after": after.get("driver"), "vfio_node": after.get("vfio_node"),
            "model": n.get("model"), "serial": n.get("serial")}


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def nvme_in_l2(state: dict) -> dict:
    """What stage 05 verified in L2: the controller, the namespace, mkfs, mount and df."""
    v = state.get("l2_verify") or {}
    c, ns = v.get("controller") or {}, v.get("nvme") or {}
    df = v.get("df")
    return {"controller": {"bdf": c.get("bdf"), "vendor_device": c.get("ids"), "class": c.get("class"),
                           "lspci": c.get("line")},
            "namespace": {"device": ns.get("device"), "model": ns.get("model"), "serial": ns.get("serial"),
                          "size_bytes": _int(ns.get("size_bytes")), "block_size": _int(ns.get("sector_size")),
                          "firmware": ns.get("firmware")},
            "filesystem": {"mkfs": v.get("mkfs"), "mounted": bool(v.get("mounted")),
                           "df": {k: df.get(k) for k in ("source", "type", "size", "mounted_on")} if df else None}}


def fio_settings(bench) -> dict:
    """The fio settings every layer ran with (``bench``: the parameters' bench section)."""
    profiles = list(bench.profiles)
    return {"profiles": profiles, "runtime_s": float(bench.runtime_s), "size_mib": int(bench.size_mib),
            "repeats": int(bench.repeats), "on_l0": bool(bench.on_l0), "emulated": bool(bench.emulated),
            "l0_write_consent": bool(bench.l0_write_consent), "ioengine": "libaio", "direct": True,
            "jobs": {p: dict(fio.PROFILES[p]) for p in profiles}}


def complete_rows(state: dict, rows: list[dict]) -> list[dict]:
    """Each row with its target kind, accelerator and IOMMU mode; a row recorded without them
    (before version 2) gets the kind its layer measured then and its layer's accelerator."""
    accel = {k: v["accel"] for k, v in layers(state, []).items()}
    out = []
    for r in rows:
        layer, kind = fio.series_of(r)
        out.append({**r, "target_kind": kind, "accel": r.get("accel", accel.get(layer)), "iommu": r.get("iommu")})
    return out


def document(state: dict, params, run: dict, rows: list[dict], summary: list[dict], comparisons: list[dict],
             skipped: list[dict] = ()) -> dict:
    """Everything results.json holds (``params``: the run's Params; ``run``: from ``run_info``).
    Rows recorded before they named their target (a state of an earlier version) get it here."""
    rows = complete_rows(state, rows)
    return {"version": VERSION, "run": run, "environment": environment(state), "layers": layers(state, rows),
            "nvme": {"in_l1": nvme_in_l1(state), "in_l2": nvme_in_l2(state)},
            "fio": fio_settings(params.bench),
            "runs": rows, "summary": summary, "comparisons": comparisons, "not_measured": list(skipped)}


# --- files ------------------------------------------------------------------------------------

def write(run_dir: Path, doc: dict) -> dict[str, Path]:
    """``results.json`` (``doc``, checked against the schema first) and ``results.csv``
    (one line per fio run, for spreadsheets)."""
    run_dir = Path(run_dir)
    validate(doc, "the results about to be written")
    j = run_dir / "results.json"
    text = json.dumps(doc, indent=2)
    keep_earlier(j, text.encode())  # a rerun never writes over what an earlier attempt recorded
    j.write_text(text)
    c = run_dir / "results.csv"
    rows = doc["runs"]
    if rows:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=[*CSV_COLUMNS, *(k for k in rows[0] if k not in CSV_COLUMNS)])
        w.writeheader()
        w.writerows(rows)
        keep_earlier(c, buf.getvalue().encode())
        c.write_text(buf.getvalue())
    return {"json": j, "csv": c}


def schema(version: int = VERSION) -> dict:
    return json.loads(SCHEMAS[version].read_text())


def validate(doc: dict, what: str = "results.json") -> dict:
    """``doc`` when it matches the schema of its version; a RunbookError naming every mismatch otherwise."""
    import jsonschema

    if not isinstance(doc, dict) or "version" not in doc:
        raise RunbookError(f"{what} has no version: it was written before results had one",
                           hint="make a new run, or, while that run's L2 is still up, run its stage 05 again "
                                "(python -m helpers run --stages 05 --run-id RUN_ID)")
    if doc["version"] not in READS:
        raise RunbookError(f"{what} is of version {doc['version']!r}; this runbook reads versions "
                           f"{', '.join(map(str, READS))}",
                           hint="read it with the runbook version that wrote it, or run stage 05 again")
    version = doc["version"]
    v = jsonschema.Draft202012Validator(schema(version))
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"- {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10])
        raise RunbookError(f"{what} does not match {SCHEMAS[version].name} (version {version}):\n{lines}",
                           hint=f"the schema is {SCHEMAS[version]}")
    return doc


def load(path: Path) -> dict:
    """A run's results.json (``path``: the run folder or the file), validated."""
    path = Path(path)
    f = path / "results.json" if path.is_dir() else path
    if not f.exists():
        what = f"{path} has no results.json" if path.is_dir() else f"{path} does not exist"
        raise RunbookError(what, hint="give a run folder under outputs/ whose stage 05 has passed")
    try:
        doc = json.loads(f.read_text())
    except ValueError as e:
        raise RunbookError(f"{f} is not JSON: {e}", hint="run stage 05 of that run again to rewrite it") from None
    return validate(doc, str(f))


def validate_run(run_dir: Path) -> dict:
    """A real run's results.json checked against the schema (for the lab test); the document."""
    return load(run_dir)


# --- plots ------------------------------------------------------------------------------------

def _layers(summary):
    present = {s["layer"] for s in summary}
    return [l for l in LAYER_ORDER if l in present]


SERIES_ORDER = (("L0", "namespace"), ("L0", "file"), ("L1", "namespace"), ("L1", "file"), ("L2", "namespace"),
                ("L2", "virtio-blk"), ("L2", "file"))


def _series(summary) -> list[tuple[str, str]]:
    present = {fio.series_of(s) for s in summary}
    return [x for x in SERIES_ORDER if x in present]


def under_text(layers_: dict) -> str:
    """What each layer ran under, from the recorded accelerators: 'L0 the host, L1 under TCG, L2 under KVM'."""
    words = {"kvm": "under KVM", "tcg": "under TCG (emulated CPU)", "none": "the host", None: "under ?"}
    return ", ".join(f"{layer} {words.get((layers_.get(layer) or {}).get('accel'), '?')}" for layer in LAYER_ORDER)


def caption(layers_: dict) -> str:
    """The plot's caption: what the layers ran under; under TCG the absolute figures measure the emulator."""
    tcg = [layer for layer in LAYER_ORDER if (layers_.get(layer) or {}).get("accel") == "tcg"]
    text = f"Ran under: {under_text(layers_)}."
    if tcg:
        text += (f" Absolute figures of {', '.join(tcg)} and of every layer inside {tcg[0]} measure QEMU's TCG "
                 "emulator more than the disk: read the ratios, not the IOPS.")
    return text + " Bars: median of the repeats; whiskers: min to max."


def _colors(n: int) -> list:
    import matplotlib.pyplot as plt
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(n)]


def grouped_bars(ax, groups: list[str], series: list[str], get, err=None) -> None:
    """One bar per series within each group; ``get(series, group)`` its height (None: no bar),
    ``err(series, group)`` its error bar."""
    width = 0.8 / max(len(series), 1)
    for i, (s, color) in enumerate(zip(series, _colors(len(series)))):
        xs, hs, es = [], [], []
        for g, group in enumerate(groups):
            h = get(s, group)
            if h is not None:
                xs.append(g - 0.4 + width * (i + 0.5))
                hs.append(h)
                es.append(err(s, group) if err else 0)
        if err and es and isinstance(es[0], tuple):  # (below, above): an asymmetric whisker
            es = [[e[0] for e in es], [e[1] for e in es]]
        ax.bar(xs, hs, width, yerr=es if err else None, capsize=3, label=s, color=color)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.5, len(groups) - 0.5)


def percentile_marks(ax, groups: list[str], series: list[str], get) -> list:
    """Latency percentiles, one column of marks per series within each group: p50, p99 and
    p99.9 as distinct markers on a thin line spanning them; ``get(series, group)`` a summary
    row (None: nothing there). Nothing joins one group or series to the next.
    Returns the legend's handles (series colors, then the percentile markers)."""
    width = 0.8 / max(len(series), 1)
    for i, (s, color) in enumerate(zip(series, _colors(len(series)))):
        for g, group in enumerate(groups):
            row = get(s, group)
            if not row:
                continue
            x = g - 0.4 + width * (i + 0.5)
            values = [row[k] for k, _, _ in PERCENTILE_MARKS]
            ax.vlines(x, min(values), max(values), color=color, linewidth=1.5)
            for (_, _, style), v in zip(PERCENTILE_MARKS, values):
                ax.plot([x], [v], color=color, linestyle="none", **style)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    return legend_handles(series)


def legend_handles(series: list[str]) -> list:
    """A color per series, then the markers of p50, p99 and p99.9."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=c, linewidth=6, label=s) for s, c in zip(series, _colors(len(series)))]
    return handles + [Line2D([], [], color="black", linestyle="none", label=f"latency {name}", **style)
                      for _, name, style in PERCENTILE_MARKS]


def plot(summary: list[dict], comparisons: list[dict] = (), layers_: dict | None = None,
         out_dir: Path | None = None):
    """IOPS and p99 latency per profile, one bar per layer and target (median; whiskers min to
    max of the repeats), and the comparisons as ratios with their range, each with its verdict.
    Returns a ``ui.Picture`` (PNG in Jupyter, its caption as text); bench.png in ``out_dir``."""
    import io as io_
    import matplotlib.pyplot as plt
    from .. import ui

    profiles = list(dict.fromkeys(s["profile"] for s in summary))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    plot_layers(axes[0], axes[1], summary, profiles)
    plot_ratios(axes[2], comparisons, profiles)
    text = caption(layers_ or {})
    fig.suptitle("The namespace layer by layer, and passthrough vs emulated in the same guest (L2)", fontsize=12)
    fig.text(0.5, 0.01, text, ha="center", fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    buf = io_.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    if out_dir is not None:
        (Path(out_dir) / "bench.png").write_bytes(buf.getvalue())
    plt.close(fig)
    return ui.Picture(buf.getvalue(), "Plot bench.png: " + fig._suptitle.get_text() + ". " + text)


def plot_layers(iops_ax, lat_ax, summary: list[dict], profiles: list[str]) -> None:
    """IOPS and p99 latency per profile, one bar per layer and target (median; whiskers min to max)."""
    series = _series(summary)
    names = [fio.series_name(*x) for x in series]
    by = {(*fio.series_of(s), s["profile"]): s for s in summary}

    def getter(key):
        return lambda name, p: (lambda x: x[key] if x else None)(by.get((*series[names.index(name)], p)))

    def spread(lo, hi, mid):
        return lambda name, p: (lambda x: (x[mid] - x[lo], x[hi] - x[mid]) if x else (0, 0))(
            by.get((*series[names.index(name)], p)))

    grouped_bars(iops_ax, profiles, names, getter("iops_median"), spread("iops_min", "iops_max", "iops_median"))
    grouped_bars(lat_ax, profiles, names, getter("lat_p99_us"), spread("lat_p99_us_min", "lat_p99_us_max",
                                                                      "lat_p99_us"))
    for ax, title, unit in ((iops_ax, "IOPS (median; whiskers: min - max)", "I/O operations per second"),
                            (lat_ax, "p99 completion latency (median; min - max)", "latency (µs)")):
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log")
        ax.set_ylabel(f"{unit}, log scale")
        ax.set_xlabel("fio profile")
        ax.tick_params(axis="x", labelsize=8)
    iops_ax.legend(fontsize=8)


def plot_ratios(ax, comparisons: list[dict], profiles: list[str]) -> None:
    """The comparisons as ratios of medians per profile, their range as whiskers, each with its verdict."""
    questions = list(dict.fromkeys(c["question"] for c in comparisons if c["ratio_median"] is not None))
    short = {q: f"{fio.series_name(c['a']['layer'], c['a']['target_kind'])} / "
                f"{fio.series_name(c['b']['layer'], c['b']['target_kind'])}"
             for q in questions for c in comparisons if c["question"] == q}
    cby = {(c["question"], c["profile"]): c for c in comparisons}
    width = 0.8 / max(len(questions), 1)
    for i, (q, color) in enumerate(zip(questions, _colors(len(questions)))):
        for g, p in enumerate(profiles):
            c = cby.get((q, p))
            if not c or c["ratio_median"] is None:
                continue
            x = g - 0.4 + width * (i + 0.5)
            ax.bar([x], [c["ratio_median"]], width, color=color, label=short[q] if g == 0 else None,
                   yerr=[[c["ratio_median"] - c["ratio_low"]], [c["ratio_high"] - c["ratio_median"]]], capsize=3)
            ax.text(x, c["ratio_high"] * 1.05, c["verdict"], ha="center", va="bottom", fontsize=7, rotation=90)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    shown = [c for c in comparisons if c["ratio_median"] is not None]
    if shown:  # room above the bars for the legend and the verdicts
        ax.set_ylim(min(min(c["ratio_low"] for c in shown), 1.0) / 3, max(max(c["ratio_high"] for c in shown), 1.0) * 60)
    ax.set_xticks(range(len(profiles)), profiles)
    ax.set_xlim(-0.5, len(profiles) - 0.5)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("A / B in IOPS (ratio of medians; whiskers: range over repeats)", fontsize=10)
    ax.set_ylabel("ratio, log scale (above 1: A faster)")
    ax.set_xlabel("fio profile")
    if questions:
        ax.legend(fontsize=7, loc="upper center")
