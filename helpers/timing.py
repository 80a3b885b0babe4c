"""Where a run's time went: each step's planning and applying, and of the applying the
waits for a machine (a boot, a reboot, SSH, a guest agent), from ``summary.json``.

``Stage.plan`` and ``Stage.apply`` (helpers/nb.py) time every step; the runner copies
the times into each stage's ``steps`` in ``summary.json`` (``plan_seconds``,
``apply_seconds``, ``wait_seconds``, ``waits``). What a stage spent outside its steps
(the notebook's kernel start, imports, the cells between steps) is the stage's time
less its steps'. The report shows a table per stage and one bar chart for the run;
``scripts/bench_lab.py`` prints the same as text."""
from __future__ import annotations

import html
from dataclasses import dataclass

OUTSIDE = "outside the steps (kernel start, imports, notebook cells)"
# the bar chart's parts: (name, colour)
PARTS = [("waiting for a machine", "#e8a33d"), ("planning and applying", "#3d7fe8"), ("outside the steps", "#b0b0b0")]


@dataclass
class StepTime:
    stage: str
    step: str
    plan: float
    apply: float | None   # None: planned, not applied (check mode, or the run stopped before)
    wait: float
    waits: list[dict]

    @property
    def total(self) -> float:
        return self.plan + (self.apply or 0.0)

    def waited_for(self) -> str:
        return "; ".join(f"{w['what']} {w['seconds']:.1f} s" for w in self.waits)


def step_times(entry: dict) -> list[StepTime]:
    """The timed steps of one stage entry of ``summary.json`` (steps without times are left out)."""
    out = []
    for w in entry.get("steps") or []:
        if w.get("plan_seconds") is None:
            continue
        out.append(StepTime(entry["stage"], w.get("step") or "", float(w["plan_seconds"]),
                            None if w.get("apply_seconds") is None else float(w["apply_seconds"]),
                            float(w.get("wait_seconds") or 0.0), list(w.get("waits") or [])))
    return out


def outside_steps(entry: dict) -> float | None:
    """The stage's seconds not spent in a step's plan or apply (None when the stage has no time)."""
    if entry.get("seconds") is None:
        return None
    return max(0.0, float(entry["seconds"]) - sum(t.total for t in step_times(entry)))


def _s(x: float | None) -> str:
    return "not applied" if x is None else f"{x:.1f} s"


def stage_table(entry: dict) -> str:
    """HTML: one row per step (plan, apply, of which waiting, for what), then the time outside
    the steps; empty when the stage recorded no step times."""
    times = step_times(entry)
    if not times:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(t.step)}</td><td>{_s(t.plan)}</td><td>{_s(t.apply)}</td>"
        f"<td>{t.wait:.1f} s</td><td>{html.escape(t.waited_for())}</td></tr>" for t in times)
    rest = outside_steps(entry)
    if rest is not None:
        rows += f"<tr><td><i>{OUTSIDE}</i></td><td colspan='4'>{rest:.1f} s</td></tr>"
    return ("<table class='runbook-toc'><tr><th>where the time went: step</th><th>plan</th><th>apply</th>"
            "<th>of which waiting</th><th>waiting for</th></tr>" + rows + "</table>")


def stage_parts(entry: dict) -> tuple[float, float, float]:
    """(waiting for a machine, planning and applying otherwise, outside the steps) in seconds."""
    times = step_times(entry)
    wait = sum(t.wait for t in times)
    work = sum(t.total for t in times) - wait
    return wait, max(0.0, work), outside_steps(entry) or 0.0


def bar_chart(summary: dict, width: int = 560) -> str:
    """One SVG bar chart for the run: a bar per stage, split into the parts of ``PARTS``,
    with each stage's seconds at its end. Empty when no stage recorded a time."""
    stages = [e for e in summary.get("stages", []) if e.get("seconds") is not None]
    if not stages:
        return ""
    longest = max(float(e["seconds"]) for e in stages) or 1.0
    label_w, bar_h, gap, top = 90, 18, 8, 26
    scale = (width - label_w - 70) / longest
    svg = []
    x = 0
    for name, colour in PARTS:  # the legend, on one line above the bars
        svg.append(f"<rect x='{x}' y='4' width='12' height='12' fill='{colour}'/>"
                   f"<text x='{x + 16}' y='15' font-size='12'>{name}</text>")
        x += 16 + 7 * len(name) + 12
    for i, e in enumerate(stages):
        y = top + i * (bar_h + gap)
        svg.append(f"<text x='0' y='{y + 13}' font-size='12'>stage {html.escape(e['stage'])}</text>")
        x = float(label_w)
        for (name, colour), seconds in zip(PARTS, stage_parts(e)):
            w = seconds * scale
            if w > 0:
                svg.append(f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='{colour}'>"
                           f"<title>stage {html.escape(e['stage'])}: {name} {seconds:.1f} s</title></rect>")
            x += w
        svg.append(f"<text x='{x + 4:.1f}' y='{y + 13}' font-size='12'>{float(e['seconds']):.1f} s</text>")
    height = top + len(stages) * (bar_h + gap)
    return (f"<svg class='runbook-time-chart' xmlns='http://www.w3.org/2000/svg' width='{width}' "
            f"height='{height}' role='img' aria-label='where the time went, per stage'>" + "".join(svg) + "</svg>")


def run_section(summary: dict) -> str:
    """Markdown for the report's top: the bar chart and the slowest steps of the run."""
    chart = bar_chart(summary)
    if not chart:
        return ""
    top = slowest(summary, 5)
    lines = "".join(f"<tr><td>{t.stage}</td><td>{html.escape(t.step)}</td><td>{t.total:.1f} s</td>"
                    f"<td>{t.wait:.1f} s</td></tr>" for t in top)
    return ("**Where the time went** (each stage's own table sits under its heading)\n\n" + chart
            + ("\n\n<table class='runbook-toc'><tr><th>stage</th><th>slowest steps</th><th>plan and apply</th>"
               "<th>of which waiting</th></tr>" + lines + "</table>" if top else ""))


def slowest(summary: dict, n: int = 10) -> list[StepTime]:
    """The run's ``n`` slowest steps, slowest first."""
    times = [t for e in summary.get("stages", []) for t in step_times(e)]
    return sorted(times, key=lambda t: t.total, reverse=True)[:n]


def text_lines(summary: dict, prefix: str = "") -> list[str]:
    """The same as text, one line per step and one per stage's rest (for ``make bench``)."""
    out = []
    for e in summary.get("stages", []):
        for t in step_times(e):
            out.append(f"{prefix}step {t.stage} {t.step!r}: plan {t.plan:.1f} s, apply {_s(t.apply)}"
                       + (f", of which waiting {t.wait:.1f} s ({t.waited_for()})" if t.waits else ""))
        rest = outside_steps(e)
        if rest is not None and step_times(e):
            out.append(f"{prefix}step {e['stage']} ({OUTSIDE}): {rest:.1f} s")
    return out
