"""Showing results in a notebook: tables, command output, the L0/L1/L2 picture,
and errors as a message with a HINT instead of a stack trace."""
from __future__ import annotations

import html
from typing import Iterable, Sequence

from .errors import RunbookError

VERDICT_COLORS = {"pass": "#d4edda", "warn": "#fff3cd", "fail": "#f8d7da", "skip": "#e2e3e5",
                  "did": "#d1ecf1", "no change": "#e2e3e5"}


def _display(obj) -> None:
    try:
        from IPython.display import display
        display(obj)
    except ImportError:  # outside IPython: plain text
        print(obj)


def table_html(rows: Iterable[Sequence], columns: Sequence[str], color_by: str | None = None) -> str:
    """An HTML table; rows are tinted by the value of the ``color_by`` column."""
    idx = columns.index(color_by) if color_by in columns else None
    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        style = ""
        if idx is not None and str(r[idx]) in VERDICT_COLORS:
            style = f" style='background:{VERDICT_COLORS[str(r[idx])]}'"
        cells = "".join(f"<td style='text-align:left;vertical-align:top'>{html.escape(str(v))}</td>" for v in r)
        body.append(f"<tr{style}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Table:
    """Rows and columns that show as HTML in Jupyter and as text elsewhere."""

    def __init__(self, rows: Iterable[Sequence], columns: Sequence[str], color_by: str | None = None):
        self.rows, self.columns, self.color_by = [list(r) for r in rows], list(columns), color_by

    def _repr_html_(self) -> str:
        return table_html(self.rows, self.columns, self.color_by)

    def __repr__(self) -> str:
        widths = [max(len(str(x)) for x in [c] + [r[i] for r in self.rows]) for i, c in enumerate(self.columns)]
        line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths))  # noqa: E731
        return "\n".join([line(self.columns)] + [line(r) for r in self.rows])


def show_table(rows, columns, color_by=None) -> Table:
    t = Table(rows, columns, color_by)
    _display(t)
    return t


def show_checks(checks) -> Table:
    """The check table: check, observed, verdict, how to fix."""
    return show_table([(c.name, c.observed, c.verdict, c.fix if c.verdict in ("fail", "warn") else "")
                       for c in checks], ["check", "observed", "verdict", "how to fix"], color_by="verdict")


class Shown:
    """HTML for Jupyter and the report, with a text form for everything that reads text
    (papermill --log-output, a text diff of the executed notebook): never `<...HTML object>`."""

    def __init__(self, html_: str, text: str):
        self.html, self.text = html_, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


class Picture:
    """A picture (PNG bytes or SVG text) whose text form is its caption, never `<Figure size ...>`."""

    def __init__(self, data, caption: str, kind: str = "png"):
        self.data, self.caption, self.kind = data, caption, kind

    def _repr_png_(self):
        return self.data if self.kind == "png" else None

    def _repr_svg_(self):
        return self.data if self.kind == "svg" else None

    def _repr_html_(self):
        """The picture with its caption under it: an HTML report shows both (a PNG alone drops the caption)."""
        if self.kind != "png":
            return None  # an SVG carries its own words
        import base64
        img = f'<img src="data:image/png;base64,{base64.b64encode(self.data).decode()}" style="max-width:100%"/>'
        return f"<figure style='margin:0'>{img}<figcaption>{html.escape(self.caption)}</figcaption></figure>"

    def __repr__(self) -> str:
        return f"[picture] {self.caption}"


def show_output(command: str, output: str, prompt: str = "root@host") -> None:
    """A command and its real output, the way the seed shows them."""
    text = f"[{prompt}] ~$ {command}\n{output.rstrip()}"
    _display(Shown(f"<pre style='background:#f6f8fa;padding:6px'>{html.escape(text)}</pre>", text))


def by_hand_text(by_hand) -> str:
    """One ``helpers.by_hand.ByHand`` or a list of them, as prompt lines."""
    items = by_hand if isinstance(by_hand, (list, tuple)) else [by_hand]
    return "\n".join(b.text() for b in items if b is not None)


def show_by_hand(by_hand) -> None:
    """Next to what a step did: the commands an engineer would type for it by hand."""
    text = by_hand_text(by_hand)
    if not text:
        return
    _display(Shown("<div><b>By hand</b>, the same step at the prompt shown:"
                   f"<pre style='background:#eef6ee;padding:6px'>{html.escape(text)}</pre></div>",
                   "By hand, the same step at the prompt shown:\n" + text))


def show_changes(changes) -> Table:
    """What operations did: each says 'did' with what, or 'no change'."""
    return show_table([(c.what, "did" if c.changed else "no change", c.detail) for c in changes],
                      ["operation", "result", "detail"], color_by="result")


STAGE_BOXES = {"01": "L0", "02": "L1", "03": "L1", "04": "L2", "05": "L2", "99": "all"}
STAGE_NAMES = {"01": "check host", "02": "build L1", "03": "configure L1", "04": "build L2",
               "05": "verify and benchmark", "99": "teardown"}


def picture_svg(stage: str) -> str:
    """L0 / L1 / L2 nested boxes with the NVMe's path, the current stage marked (SVG)."""
    mark = STAGE_BOXES.get(stage, "")
    boxes = [("L0", ["the host: KVM or TCG, libvirt", "nvme.raw backing file"], 10, 36, 780, 284),
             ("L1", ["guest: q35 + Intel vIOMMU", "nested KVM, libvirt; NVMe -> vfio-pci"], 90, 92, 660, 212),
             ("L2", ["guest: NVMe by VFIO", "nvme list, mkfs.xfs, fio"], 420, 150, 310, 136)]
    parts = [f'<text x="400" y="22" text-anchor="middle" font-size="16">'
             f'Stage {html.escape(stage)}: {html.escape(STAGE_NAMES.get(stage, ""))}</text>']
    for name, lines, x, y, w, h in boxes:
        hot = mark in (name, "all")
        parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="10" fill="{"#ffe8a8" if hot else "#f4f4f4"}" '
                     f'stroke="{"#c0392b" if hot else "#555"}" stroke-width="{3 if hot else 1}"/>')
        weight = "bold" if hot else "normal"
        for k, line in enumerate([f"{name}  {lines[0]}", lines[1]]):
            parts.append(f'<text x="{x + 12}" y="{y + 22 + 18 * k}" font-size="13" font-weight="{weight}">'
                         f'{html.escape(line)}</text>')
    parts += ['<rect x="170" y="200" width="170" height="64" rx="8" fill="#d6eaf8" stroke="#1f618d"/>',
              '<text x="255" y="228" text-anchor="middle" font-size="12">emulated NVMe</text>',
              '<text x="255" y="246" text-anchor="middle" font-size="12">1b36:0010</text>',
              '<line x1="342" y1="232" x2="414" y2="232" stroke="#1f618d" stroke-width="2" marker-end="url(#arrow)"/>',
              '<text x="378" y="224" text-anchor="middle" font-size="12" fill="#1f618d">VFIO</text>']
    return ('<svg xmlns="http://www.w3.org/2000/svg" class="runbook-picture" width="800" height="330" '
            'viewBox="0 0 800 330" font-family="sans-serif">'
            '<defs><marker id="arrow" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
            '<path d="M0,0 L10,4 L0,8 z" fill="#1f618d"/></marker></defs>' + "".join(parts) + "</svg>")


def picture(stage: str) -> str:
    """Show the L0/L1/L2 picture for ``stage`` (plain SVG: no plotting library to load)."""
    svg = picture_svg(stage)
    _display(Picture(svg, picture_caption(stage), kind="svg"))
    return svg


def picture_caption(stage: str) -> str:
    """The picture in words: the layers, the NVMe's way, and the stage's layer."""
    where = STAGE_BOXES.get(stage, "")
    return (f"stage {stage}, {STAGE_NAMES.get(stage, '')}: L0 (the host, the NVMe's backing file) holds L1 "
            "(q35 guest with a vIOMMU and the emulated NVMe), which holds L2 (the NVMe by VFIO); "
            + ("every layer is concerned" if where == "all" else f"this stage works on {where}"))


def install_error_handler() -> None:
    """In a kernel: show a RunbookError as its message and HINT, not a stack trace.
    The cell still fails, so papermill still stops the run there."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        if ON_ERROR is not None:
            ON_ERROR(value)
        shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])

    ip.set_custom_exc((RunbookError,), handler)


ON_ERROR = None  # in a stage's kernel: keeps a RunbookError's fields for the runner (``nb.stage``)


# --- plans (helpers.steps.Plan): the same rendering in the preview, in check mode and in the report ---------

PROMPTS = {"L0": "root@L0", "L1": "root@L1", "L2": "root@L2"}


def plan_text(plan, mode: str = "run") -> str:
    """A step's plan for people: each action's machine, what, commands and content;
    'no change: why', 'reads: ...' or 'unknown until ...'."""
    head = f"Plan of '{plan.step}'" + (" (check mode: nothing is changed)" if mode == "check" else "")
    if plan.unknown:
        return f"{head}: unknown until {plan.unknown}"
    if not plan.actions:
        return f"{head}: {plan.reason or 'no change'}"
    lines = [f"{head}: {len(plan.actions)} change{'s' if len(plan.actions) > 1 else ''}"]
    for i, a in enumerate(plan.actions, 1):
        lines.append(f"{i}. [{a.machine}] {a.what}")
        prompt = PROMPTS.get(a.machine, a.machine)
        lines += [f"     {c}" if c.startswith("#") else f"     [{prompt}] ~$ {c}" for c in a.commands]
        if a.content:
            lines += ["     --- content ---"] + [f"     {x}" for x in a.content.rstrip().splitlines()]
    return "\n".join(lines)


PLAN_COLORS = {"change": "#fff3cd", "no change": "#e2e3e5", "unknown": "#f8d7da", "reads": "#d1ecf1"}


def plan_html(plan, mode: str = "run") -> str:
    kind = ("unknown" if plan.unknown else "change" if plan.actions else
            "reads" if plan.reason.startswith("reads") else "no change")
    text = plan_text(plan, mode)
    return (f"<div class='runbook-plan' data-plan='{kind}'><pre style='background:{PLAN_COLORS[kind]};padding:6px;"
            f"white-space:pre-wrap'>{html.escape(text)}</pre></div>")


class PlanView:
    """A plan that shows as HTML in Jupyter and as text elsewhere."""

    def __init__(self, plan, mode: str = "run"):
        self.plan, self.mode = plan, mode

    def _repr_html_(self) -> str:
        return plan_html(self.plan, self.mode)

    def __repr__(self) -> str:
        return plan_text(self.plan, self.mode)


def show_plan(plan, mode: str = "run") -> None:
    _display(PlanView(plan, mode))


def yes_no(value) -> str:
    """A boolean for a reader: yes / no (never True / False); None: not read."""
    return "not read" if value is None else "yes" if value else "no"


def fio_rows_table(rows) -> Table:
    from .bench import fio
    return Table([(r["layer"], fio.TARGET_NAMES.get(r.get("target_kind") or "file"), r["target"], r["profile"],
                   r["run"], f"{r['iops']:,.0f}", f"{r['bw_mib_s']:.1f}", f"{r['lat_p99_us']:,.0f}")
                  for r in rows],
                 ["layer", "target", "device or file", "profile", "repeat", "IOPS", "MiB/s", "p99 latency (µs)"])


def show_fio_rows(rows) -> None:
    """fio's runs on one layer, one row per profile and repeat; operations' Changes as a table."""
    from .ops import Change
    if rows and isinstance(rows[0], Change):
        show_changes(rows)
        return
    _display(fio_rows_table(rows))
