"""Authoring helper for the stage notebooks: cells from (kind, text) pairs.

    python scripts/nbtools.py check    # every template has no outputs and a tagged parameters cell
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = '''params_file: str = "../parameters/lab.yaml"  # the parameter file (YAML) shared by every stage
state_file: str = ""  # the run state (JSON) the runner passes between stages; empty: the latest run's
interactive: bool = False  # True: a form and buttons for each step (JupyterLab); False: every step runs (papermill)
mode: str = "run"  # "run": plan, then apply each step; "check": plan and show each step, change nothing'''


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    out = []
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "md":
            out.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "params":
            c = nbformat.v4.new_code_cell(PARAMETERS)
            c.metadata["tags"] = ["parameters"]
            out.append(c)
        else:
            out.append(nbformat.v4.new_code_cell(text))
    for i, c in enumerate(out):
        c["id"] = f"cell-{i:02d}"
    nb.cells = out
    nb.metadata["kernelspec"] = {"name": "nested-nvme", "display_name": "Nested NVMe runbook", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write(name: str, cells) -> Path:
    path = ROOT / "notebooks" / name
    nbformat.write(notebook(cells), path)
    return path


def check() -> int:
    bad = []
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
            bad.append(f"{p.name}: saved with outputs")
        if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
            bad.append(f"{p.name}: no cell tagged parameters")
    print("\n".join(bad) or "notebooks: clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(check() if sys.argv[1:] == ["check"] else 0)
