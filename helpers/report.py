"""One HTML report of a run: every stage in order, with a table of contents,
each stage's verdict and duration, its tables and plots; code can be hidden."""
from __future__ import annotations

import html
import json
from pathlib import Path

import nbformat

from . import timing

TOGGLE = """
<style>
/* code cells only: the markdown (contents, stage titles, explanations) also sits in a .jp-InputArea */
body.hide-code .jp-CodeCell .jp-InputArea, body.hide-code .jp-CodeCell .jp-InputPrompt,
body.hide-code .code_cell .input_area { display: none; }
#code-toggle { position: fixed; top: 8px; right: 12px; z-index: 10; padding: 4px 10px; }
table.runbook-toc td, table.runbook-toc th { padding: 2px 10px; }
</style>
<script>
function toggleCode() {
  document.body.classList.toggle('hide-code');
  document.getElementById('code-toggle').textContent =
    document.body.classList.contains('hide-code') ? 'Show code' : 'Hide code';
}
</script>
<button id="code-toggle" onclick="toggleCode()">Hide code</button>
"""


def _stage_title(nb_name: str) -> str:
    stem = Path(nb_name).stem
    return f"{stem[:2]} {stem[3:].replace('_', ' ')}"


def _attempt_cells(run_dir: Path, entry: dict, anchor: str, title: str) -> list:
    """The heading and the executed cells of one attempt at a stage."""
    verdict = entry.get("status", "?")
    head = f"<a id='{anchor}'></a>\n\n# Stage {html.escape(title)}: {verdict} ({_duration(entry)})"
    if verdict != "passed" and entry.get("error"):
        head += f"\n\n**{html.escape(entry.get('error', ''))}**\n\nHINT: {html.escape(entry.get('hint', ''))}"
    if entry.get("note"):
        head += f"\n\n_{html.escape(entry['note'])}_"
    if table := timing.stage_table(entry):
        head += "\n\n" + table
    cells = [nbformat.v4.new_markdown_cell(head)]
    path = run_dir / entry["notebook"]
    if not path.exists():
        return cells + [nbformat.v4.new_markdown_cell("_The stage did not produce a notebook._")]
    nb = nbformat.read(path, as_version=4)
    for i, c in enumerate(nb.cells):
        c["id"] = f"{anchor}-{i}"
        if c.cell_type == "code" and "injected-parameters" in c.get("metadata", {}).get("tags", []):
            continue
        if c.cell_type == "markdown":  # stage titles become level-2 under the stage heading
            c.source = "\n".join(("#" + line) if line.startswith("#") else line for line in c.source.splitlines())
        cells.append(c)
    return cells


def _toc_row(anchor: str, title: str, entry: dict) -> str:
    return (f"<tr><td><a href='#{anchor}'>{html.escape(title)}</a></td><td>{entry.get('status', '?')}</td>"
            f"<td>{_duration(entry)}</td></tr>")


def _duration(entry: dict) -> str:
    """'12.3 s', or what is known of an attempt that never recorded its end."""
    if entry.get("seconds") is not None:
        return f"{entry['seconds']} s"
    return f"not recorded (started {entry['started']})" if entry.get("started") else "not recorded"


def combined_notebook(run_dir: Path, summary: dict) -> nbformat.NotebookNode:
    """All executed stage notebooks of the run, in order, behind a contents table.
    Earlier attempts at a stage (a failure, then a rerun) come first, each kept whole."""
    rows = []
    cells = []
    for entry in summary.get("stages", []):
        title = _stage_title(entry["notebook"])
        for k, earlier in enumerate(entry.get("earlier", []), 1):
            anchor = f"stage-{entry['stage']}-attempt-{k}"
            rows.append(_toc_row(anchor, f"{title} (attempt {k})", earlier))
            cells += _attempt_cells(run_dir, earlier, anchor, f"{title}, attempt {k}")
        anchor = f"stage-{entry['stage']}"
        label = f"{title} (attempt {len(entry['earlier']) + 1})" if entry.get("earlier") else title
        rows.append(_toc_row(anchor, label, entry))
        cells += _attempt_cells(run_dir, entry, anchor, label)
    toc = (f"# Run {html.escape(summary.get('run_id', ''))}: {summary.get('status', 'running')}\n\n"
           f"Parameters: `{summary.get('params', '')}`; started {summary.get('started', '')}, "
           f"finished {summary.get('finished', '')}.\n\n"
           "<table class='runbook-toc'><tr><th>stage</th><th>verdict</th><th>duration</th></tr>"
           + "".join(rows) + "</table>")
    if section := timing.run_section(summary):
        toc += "\n\n" + section
    if summary.get("mode") == "check":
        toc += "\n\n" + plans_table(summary)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(toc)] + cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def plans_table(summary: dict) -> str:
    """Check mode: every step of every stage with its plan in one line (each stage's
    section below shows the plans whole: machine, commands, content)."""
    rows = []
    for entry in summary.get("stages", []):
        for w in entry.get("steps", []):
            rows.append(f"<tr><td>{entry['stage']}</td><td>{html.escape(w.get('step') or '')}</td>"
                        f"<td>{html.escape(w.get('plan') or '')}</td></tr>")
        if not entry.get("steps"):
            rows.append(f"<tr><td>{entry['stage']}</td><td></td><td>{html.escape(entry.get('note') or entry.get('status', ''))}"
                        "</td></tr>")
    return ("**Check mode**: every step planned, nothing changed.\n\n<table class='runbook-toc'><tr><th>stage</th>"
            "<th>step</th><th>plan</th></tr>" + "".join(rows) + "</table>")


def write_report(run_dir: Path, summary: dict | None = None, hide_code: bool = False) -> Path:
    """Render ``report.html`` in the run folder and return its path."""
    from nbconvert import HTMLExporter

    run_dir = Path(run_dir)
    if summary is None:
        summary = json.loads((run_dir / "summary.json").read_text())
    nb = combined_notebook(run_dir, summary)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    body = body.replace("<body", "<body class='hide-code'" if hide_code else "<body", 1)
    i = body.find(">", body.find("<body")) + 1
    body = body[:i] + TOGGLE + body[i:]
    out = run_dir / "report.html"
    out.write_text(body)
    return out
