"""Issue 22's room rules, kept: no class in helpers/ over 150 lines, no function over 50,
no import cycle among helpers/ modules (scripts/code_shape.py measures them)."""
import ast
import importlib.util
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("code_shape", ROOT / "scripts" / "code_shape.py")
code_shape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_shape)


def test_helpers_keeps_its_size_limits_and_has_no_import_cycle(capsys):
    assert code_shape.main([]) == 0, capsys.readouterr().out


def test_the_measure_finds_a_long_function_and_a_cycle():
    """The rule can fail: a 51-line function is reported, and two modules importing each other."""
    body = "\n".join(f"    x{i} = {i}" for i in range(50))
    tree = ast.parse(textwrap.dedent(f"def long():\n{body}\n"))
    assert [(kind, lines) for kind, _, lines in code_shape.long_defs(tree, 150, 50)] == [("function", 51)]
    assert code_shape.cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
