"""One HTML report of a run: every stage in order, with a table of contents,
each stage's verdict and duration, its tables and plots; code can be hidden."""
from __future__ import annotations

import functools
import html
import json
import re
import threading
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
    count = 0
    for i, c in enumerate(nb.cells):
        c["id"] = f"{anchor}-{i}"
        if c.cell_type == "code" and "injected-parameters" in c.get("metadata", {}).get("tags", []):
            continue
        if c.cell_type == "code" and c.get("execution_count") is not None:  # 1, 2, 3 without the cell left out
            count += 1
            c["execution_count"] = count
            for o in c.get("outputs", []):
                if o.get("output_type") == "execute_result":
                    o["execution_count"] = count
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


def report_title(summary: dict, teardown: bool = False) -> str:
    """The report's <title>: the run's name, never nbconvert's "Notebook"."""
    what = "Teardown of run" if teardown else "Run"
    name = summary.get("params_name") or Path(str(summary.get("params", ""))).stem
    return f"{what} {summary.get('run_id', '')}" + (f" ({name})" if name else "") + \
        f": {summary.get('status', 'running')}"


def split_teardown(summary: dict) -> tuple[dict, dict | None]:
    """(the run without stage 99, stage 99 alone) when stage 99 came with or after the run's
    other stages (`make run`, then `make teardown`): the run's report stays the run's, and the
    teardown gets a report of its own. A run of stage 99 alone stays as it is."""
    stages = summary.get("stages", [])
    down = [e for e in stages if e.get("stage") == "99"]
    rest = [e for e in stages if e.get("stage") != "99"]
    if not down or not rest:
        return summary, None
    run = dict(summary, stages=rest)
    if all(e.get("status") == "passed" for e in rest):
        run["status"] = "passed"
    return run, dict(summary, stages=down, status=down[-1].get("status", summary.get("status")))


_LOADING: threading.Thread | None = None


def load_exporter_ahead() -> None:
    """Import nbconvert and read its templates in a thread of their own, while the stages run:
    about 1.5 s the report then no longer takes after the last stage. ``_render`` waits for it."""
    global _LOADING
    if _LOADING is None:
        _LOADING = threading.Thread(target=_exporter, name="report-exporter", daemon=True)
        _LOADING.start()


@functools.lru_cache(maxsize=1)
def _exporter():
    exporter = _exporter_class()(template_name="lab")
    exporter.template  # noqa: B018  (loads and compiles the template now)
    return exporter


# what nbconvert's HTMLExporter adds after rendering, for screen readers and keyboards
NO_ALT = re.compile(r"<img(?![^>]*\salt=)")
FOCUSABLE = re.compile(r'<div class="((?:[^"]*\s)?(?:jp-Cell-inputWrapper|jp-OutputArea-output)(?:\s[^"]*)?)"')


def accessible(page: str) -> str:
    """Every image with a text alternative, every cell input and output focusable: what
    HTMLExporter does by parsing the whole page with BeautifulSoup and printing it again."""
    page = NO_ALT.sub('<img alt="No description has been provided for this image"', page)
    return FOCUSABLE.sub(r'<div class="\1" tabindex="0"', page)


def _exporter_class():
    """nbconvert's lab HTML exporter without its two passes over the whole page, about half the
    report's time (1-1.5 s of a run here): the BeautifulSoup parse and print that adds the alt
    texts and tab stops (``accessible`` adds the same), and bleach over every code cell's
    highlighted source, which pygments has escaped already (the runbook's own notebooks;
    outputs are escaped by the template as before)."""
    from nbconvert import HTMLExporter
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

    class ReportExporter(HTMLExporter):
        def default_filters(self):
            for name, f in super().default_filters():
                yield (name, _source_html) if name == "clean_html" else (name, f)

        def from_notebook_node(self, nb, resources=None, **kw):
            # HTMLExporter.from_notebook_node up to its BeautifulSoup pass
            langinfo = nb.metadata.get("language_info", {})
            lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
            self.register_filter("highlight_code", self.filters.get(
                "highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self)))
            resources = self._init_resources(resources)
            self.register_filter("filter_data_type", WidgetsDataTypeFilter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources))
            page, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
            return accessible(page), resources

    return ReportExporter


def _source_html(element) -> str:
    return element.decode() if isinstance(element, bytes) else str(element)


def _render(nb, title: str, out: Path, hide_code: bool) -> Path:
    if _LOADING is not None:
        _LOADING.join()
    nb.metadata["title"] = title
    exporter = _exporter()
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    body = body.replace("<body", "<body class='hide-code'" if hide_code else "<body", 1)
    i = body.find(">", body.find("<body")) + 1
    body = body[:i] + TOGGLE + body[i:]
    out.write_text(body)
    return out


def write_report(run_dir: Path, summary: dict | None = None, hide_code: bool = False) -> Path:
    """Render ``report.html`` in the run folder and return its path; a teardown that came
    with or after the run's stages goes to ``teardown.html`` instead (the report links it)."""
    run_dir = Path(run_dir)
    if summary is None:
        summary = json.loads((run_dir / "summary.json").read_text())
    run, down = split_teardown(summary)
    nb = combined_notebook(run_dir, run)
    if down is not None:
        _render(combined_notebook(run_dir, down), report_title(down, teardown=True), run_dir / "teardown.html",
                hide_code)
        nb.cells[0].source += ("\n\nStage 99 (teardown) ran on this run too: its report is "
                               "[teardown.html](teardown.html) beside this one.")
    return _render(nb, report_title(run), run_dir / "report.html", hide_code)


# --- the executed notebooks as text (papermill --log-output, a text diff) ---------------------

PLACEHOLDERS = (r"<IPython\.core\.display\.\w+ object>", r"<Figure size [^>]*>", r"<matplotlib\.[^>]*>")
RAW_PYTHON = (r"\{'[A-Za-z_]+': ", r"(?<![\w.-])(True|False|None)(?![\w.-])")
BARE_UNITS = (r"\d (us|usec)\b", r"\(us\)", r"sector size\s+\|?\s*\d+\s*$")


def outputs_text(nb) -> str:
    """What a reader of text sees of an executed notebook: each output's text/plain (or its
    stream), as papermill's --log-output prints it and a text diff shows it."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif o.get("output_type") in ("display_data", "execute_result"):
                out.append(o.get("data", {}).get("text/plain", ""))
            elif o.get("output_type") == "error":
                out.append(f"{o.get('ename')}: {o.get('evalue')}")
    return "\n".join(out)


def unreadable(text: str) -> list[str]:
    """The lines of ``text`` a trainee should not meet: a display with no text form, a raw Python
    value (a dict, True/False/None), a figure without its unit."""
    import re
    pats = [re.compile(p) for p in PLACEHOLDERS + RAW_PYTHON + BARE_UNITS]
    return [line for line in text.splitlines() if any(p.search(line) for p in pats)]
