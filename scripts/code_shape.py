"""The shape of helpers/: classes over 150 lines, functions over 50, and import cycles among its
modules (imports at module level; an import inside a function runs late and is left out).

    python scripts/code_shape.py [--classes 150] [--functions 50]

Prints a table of each; exits 1 when any is found, 0 otherwise."""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "helpers"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def long_defs(tree: ast.AST, classes: int, functions: int) -> list[tuple[str, str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            if lines > (classes if kind == "class" else functions):
                found.append((kind, f"{node.name} (line {node.lineno})", lines))
    return found


def imports(tree: ast.Module, name: str, is_pkg: bool, known: set[str]) -> set[str]:
    """The helpers modules ``name`` imports at module level."""
    out = set()
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                target = ".".join(pkg + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--functions", type=int, default=50)
    a = ap.parse_args(argv)
    files = sorted(PKG.rglob("*.py"))
    known = {module_name(f) for f in files}
    graph, long = {}, []
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        name = module_name(f)
        graph[name] = imports(tree, name, f.name == "__init__.py", known)
        long += [(str(f.relative_to(ROOT)), *d) for d in long_defs(tree, a.classes, a.functions)]
    long.sort(key=lambda r: -r[3])
    print(f"{'file':<36} {'kind':<9} {'name':<44} {'lines':>5}")
    for path, kind, what, lines in long:
        print(f"{path:<36} {kind:<9} {what:<44} {lines:>5}")
    print(f"{len(long)} over {a.classes} lines (classes) or {a.functions} lines (functions)")
    found = cycles(graph)
    for group in found:
        print("import cycle: " + " -> ".join(group))
    print(f"{len(found)} import cycle{'s' if len(found) != 1 else ''} among {len(known)} modules")
    return 1 if long or found else 0


if __name__ == "__main__":
    sys.exit(main())
