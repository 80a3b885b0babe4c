"""Loading a parameter file: its text (or why it is not one), the YAML with each key's
line (keys given twice refused), then the schema's verdict, one line a problem:
``PATH:LINE: key: what is wrong and what to do``."""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from .fields import ParamsError
from .messages import KEY_MATERIAL, dotted_key, error_key, explain
from .schema import Params, lab_conflicts

class _Loader(yaml.SafeLoader):
    """YAML without base-60 numbers, so an unquoted BDF like 0000:00:02.0 stays a string."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."))



class _Lines:
    """Where each key of a parameter file is, and a refusal of keys given twice."""

    def __init__(self, path: Path):
        self.path = path
        self.at: dict[tuple, int] = {}

    def walk(self, node, loc: tuple = ()) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = k.value, k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    raise ParamsError(f"{self.path}:{line}: a key is a plain name, not a list or a mapping")
                if loc + (key,) in self.at:
                    raise ParamsError(self.say(loc + (key,), f"given twice (first on line "
                                                             f"{self.at[loc + (key,)]}, again on line {line}): "
                                                             "keep one", line))
                self.at[loc + (key,)] = line
                self.walk(v, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.at[loc + (i,)] = item.start_mark.line + 1
                self.walk(item, loc + (i,))

    def line(self, loc: tuple) -> int | None:
        for n in range(len(loc), 0, -1):
            key = tuple(str(p) if not isinstance(p, int) else p for p in loc[:n])
            if key in self.at:
                return self.at[key]
        return None

    def say(self, loc: tuple, text: str, line: int | None = None) -> str:
        """PATH:LINE: key: text."""
        line = line or self.line(loc)
        return f"{self.path}{f':{line}' if line else ''}: {dotted_key(loc)}: {text}"


def _read(path: Path) -> str:
    """The parameter file's text, or why it is not one."""
    if path.is_dir():
        raise ParamsError(f"{path}: a folder, not a parameter file: give a YAML file such as parameters/lab.yaml")
    if not path.exists():
        raise ParamsError(f"{path}: no such parameter file (the lab's is parameters/lab.yaml)")
    if path.suffix == ".ipynb":
        raise ParamsError(f"{path}: a Jupyter notebook, not a parameter file: give a YAML file "
                          "such as parameters/lab.yaml")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParamsError(f"{path}: cannot be read ({e.strerror}): check its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ParamsError(f"{path}:{line}: not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): "
                          "save the file as UTF-8") from None


def _parse(path: Path, text: str) -> tuple[dict, _Lines]:
    """The YAML document as a mapping, with its keys' lines; keys given twice refused."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        lines = _Lines(path)
        lines.walk(node)
        raw = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}" if mark else ""
        context = f" ({e.context})" if e.context else ""
        raise ParamsError(f"{path}{where}: not valid YAML: {e.problem}{context}") from None
    except yaml.reader.ReaderError as e:
        line = text[:e.position].count("\n") + 1
        raise ParamsError(f"{path}:{line}: not valid YAML: character {e.character:#06x} is not allowed: "
                          "remove it") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if raw is None or raw == {}:
        raise ParamsError(f"{path}: no settings in it (empty, or only comments): start from a copy of "
                          "parameters/lab.yaml (the lab) or parameters/seed-xeon4214.yaml (a real host)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (host, l1, nvme, l2, ...) at the top")
    if "nbformat" in raw and "cells" in raw:
        raise ParamsError(f"{path}: a Jupyter notebook, not a parameter file: give a YAML file "
                          "such as parameters/lab.yaml")
    return raw, lines


def _key_material(raw, loc: tuple = ()) -> list[tuple]:
    """Where a value holds a private key itself."""
    if isinstance(raw, dict):
        return [hit for k, v in raw.items() for hit in _key_material(v, loc + (str(k),))]
    if isinstance(raw, list):
        return [hit for i, v in enumerate(raw) for hit in _key_material(v, loc + (i,))]
    return [loc] if isinstance(raw, str) and KEY_MATERIAL.search(raw) else []


def _loc(err: dict) -> tuple:
    return tuple(error_key(err).split(".")) if err["type"] == "conflict" else err["loc"]


def load(path: str | Path) -> Params:
    """Read and validate a parameter file, or raise ParamsError saying what to fix,
    one line a problem: ``PATH:LINE: key: what is wrong and what to do``."""
    path = Path(path)
    raw, lines = _parse(path, _read(path))
    problems = [lines.say(loc, "holds a private key itself: take it out of this file and give the path of "
                               "the key file in l1.ssh.identity (the value is not shown)")
                for loc in _key_material(raw)]
    if problems:
        raise ParamsError("\n".join(problems))
    try:
        p = Params.model_validate(raw)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda x: lines.line(_loc(x)) or 0)
        raise ParamsError("\n".join(lines.say(_loc(x), explain(x)) for x in errors)) from None
    problems = [lines.say(loc, msg, lines.at.get(loc) or lines.at.get(("lab",)))
                for loc, msg in ((tuple(key.split(".")), msg) for key, msg in lab_conflicts(p))]
    if problems:
        raise ParamsError("\n".join(problems))
    return p
