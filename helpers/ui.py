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


def show_output(command: str, output: str, prompt: str = "root@host") -> None:
    """A command and its real output, the way the seed shows them."""
    text = f"[{prompt}] ~$ {command}\n{output.rstrip()}"
    try:
        from IPython.display import HTML
        _display(HTML(f"<pre style='background:#f6f8fa;padding:6px'>{html.escape(text)}</pre>"))
    except ImportError:
        print(text)


def show_changes(changes) -> Table:
    """What operations did: each says 'did' with what, or 'no change'."""
    return show_table([(c.what, "did" if c.changed else "no change", c.detail) for c in changes],
                      ["operation", "result", "detail"], color_by="result")


STAGE_BOXES = {"01": "L0", "02": "L1", "03": "L1", "04": "L2", "05": "L2", "99": "all"}
STAGE_NAMES = {"01": "check host", "02": "build L1", "03": "configure L1", "04": "build L2",
               "05": "verify and benchmark", "99": "teardown"}


def picture(stage: str):
    """L0 / L1 / L2 nested boxes with the NVMe's path, the current stage marked."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5)
    ax.axis("off")
    mark = STAGE_BOXES.get(stage, "")
    boxes = [("L0", "the host: KVM or TCG, libvirt\nnvme.raw backing file", 0.2, 0.2, 9.6, 4.6),
             ("L1", "guest: q35 + Intel vIOMMU\nnested KVM, libvirt; NVMe -> vfio-pci", 1.2, 0.5, 8.3, 3.4),
             ("L2", "guest: NVMe by VFIO\nnvme list, mkfs.xfs, fio", 5.2, 0.8, 4.0, 1.9)]
    for name, text, x, y, w, h in boxes:
        hot = mark in (name, "all")
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05",
                                    fc="#ffe8a8" if hot else "#f4f4f4", ec="#c0392b" if hot else "#555",
                                    lw=2.5 if hot else 1))
        ax.text(x + 0.15, y + h - 0.15, f"{name}  {text}", va="top", fontsize=9,
                fontweight="bold" if hot else "normal")
    ax.add_patch(FancyBboxPatch((2.0, 0.9), 2.2, 0.9, boxstyle="round,pad=0.05", fc="#d6eaf8", ec="#1f618d"))
    ax.text(3.1, 1.35, "emulated NVMe\n1b36:0010", ha="center", va="center", fontsize=8)
    ax.annotate("", xy=(5.2, 1.35), xytext=(4.25, 1.35), arrowprops=dict(arrowstyle="->", lw=1.5, color="#1f618d"))
    ax.text(4.7, 1.5, "VFIO", ha="center", fontsize=8, color="#1f618d")
    ax.set_title(f"Stage {stage}: {STAGE_NAMES.get(stage, '')}", fontsize=11)
    fig.tight_layout()
    plt.show()
    return fig


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
        shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])

    ip.set_custom_exc((RunbookError,), handler)
