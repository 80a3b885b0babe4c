"""Benchmark results to files (JSON and CSV) and to plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..records import keep_earlier

LAYER_ORDER = ("L0", "L1", "L2")


def write(run_dir: Path, rows: list[dict], summary: list[dict], relative: list[dict]) -> dict[str, Path]:
    """``results.json`` (everything) and ``results.csv`` (one line per fio run)."""
    run_dir = Path(run_dir)
    j = run_dir / "results.json"
    text = json.dumps({"runs": rows, "summary": summary, "l2_vs_l1": relative}, indent=2)
    keep_earlier(j, text.encode())  # a rerun never writes over what an earlier attempt recorded
    j.write_text(text)
    c = run_dir / "results.csv"
    if rows:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        keep_earlier(c, buf.getvalue().encode())
        c.write_text(buf.getvalue())
    return {"json": j, "csv": c}


def _layers(summary):
    present = {s["layer"] for s in summary}
    return [l for l in LAYER_ORDER if l in present]


def plot(summary: list[dict], out_dir: Path | None = None):
    """IOPS and bandwidth per layer and profile (with the spread), and latency percentiles."""
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(s["profile"] for s in summary))
    layers = _layers(summary)
    by = {(s["layer"], s["profile"]): s for s in summary}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(len(layers), 1)
    for i, layer in enumerate(layers):
        xs = [p + i * width for p in range(len(profiles))]
        get = lambda k: [by[(layer, p)][k] if (layer, p) in by else 0 for p in profiles]  # noqa: E731
        axes[0].bar(xs, get("iops_mean"), width, yerr=get("iops_stdev"), capsize=3, label=layer)
        axes[1].bar(xs, get("bw_mib_s_mean"), width, yerr=get("bw_mib_s_stdev"), capsize=3, label=layer)
    for ax, title in ((axes[0], "IOPS (mean, bars: stdev)"), (axes[1], "bandwidth MiB/s")):
        ax.set_xticks([p + width * (len(layers) - 1) / 2 for p in range(len(profiles))], profiles)
        ax.set_title(title + " (log scale)")
        ax.set_yscale("log")
        ax.legend()
    # latency percentiles: one group per layer/profile
    labels, p50, p99, p999 = [], [], [], []
    for p in profiles:
        for layer in layers:
            if (layer, p) in by:
                s = by[(layer, p)]
                labels.append(f"{layer}\n{p}")
                p50.append(s["lat_p50_us"]), p99.append(s["lat_p99_us"]), p999.append(s["lat_p999_us"])
    xs = range(len(labels))
    axes[2].plot(xs, p50, "o-", label="p50")
    axes[2].plot(xs, p99, "s-", label="p99")
    axes[2].plot(xs, p999, "^-", label="p99.9")
    axes[2].set_xticks(list(xs), labels, fontsize=7, rotation=45, ha="right")
    axes[2].set_yscale("log")
    axes[2].set_title("completion latency (us)")
    axes[2].legend()
    fig.tight_layout()
    if out_dir is not None:
        fig.savefig(Path(out_dir) / "bench.png", dpi=90)
    plt.show()
    return fig
