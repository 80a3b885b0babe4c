"""What to say about a refused value: one line a validation error, naming the nearest
valid key for an unknown one, never printing back a value under a key that looks like a
secret."""
from __future__ import annotations

import difflib
import re

from pydantic import BaseModel

from .schema import Params

def dotted_key(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


SECRET_RE = re.compile(r"pass(word|wd|phrase)|token|secret|credential|private|(^|_)keys?$", re.I)
KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
README = "parameters/README.md"


def looks_secret(key) -> bool:
    """Is ``key`` named like a secret (password, passphrase, token, key material)?"""
    return bool(SECRET_RE.search(str(key)))


def _model_at(loc: tuple):
    """The schema class a location inside the file points into, or None."""
    model = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _sections_with(key: str) -> list[str]:
    """The sections that have a key of this name."""
    found = []

    def walk(model, loc):
        for name, f in model.model_fields.items():
            if name == key and loc:
                found.append(".".join(loc))
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                walk(f.annotation, loc + (name,))
    walk(Params, ())
    return found


def _unknown_key(loc: tuple) -> str:
    """What to say about a key the schema does not have: the nearest valid one."""
    key, parent = str(loc[-1]), loc[:-1]
    if looks_secret(key):
        if "ssh" in parent or "ssh" in key.lower():
            return "SSH is by key only: give `l1.ssh.identity`, the path of your private key (the value is not shown)"
        return "a parameter file holds no secrets: remove this key (its value is not shown)"
    model = _model_at(parent)
    names = list(model.model_fields) if model else []
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`? (the keys are in {README})"
    elsewhere = [s for s in _sections_with(key) if s != ".".join(map(str, parent))]
    if elsewhere:
        return f"unknown key here; it belongs in {' or '.join(elsewhere)} (see {README})"
    return f"unknown key; {dotted_key(parent)} has {', '.join(names)} (see {README})"


def error_key(err: dict) -> str:
    """The dotted key a validation error is about."""
    if err["type"] == "conflict":
        return err["ctx"]["key"]
    return dotted_key(err["loc"])


def explain(err: dict) -> str:
    """One line for one validation error; the refused value only when it is
    short, plain and not under a key that looks like a secret."""
    kind, msg, loc = err["type"], err["msg"], err["loc"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required, but missing"
    if kind == "path_type":
        return "expected an absolute path"
    if kind == "string_type" and isinstance(err.get("input"), (int, float)) and not isinstance(err["input"], bool) \
            and not any(looks_secret(p) for p in loc):
        return f"expected text, got the number {err['input']}: write it in quotes, '{err['input']}'"
    if kind == "conflict":
        return err["ctx"]["msg"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if err.get("input") is None:
            return "an empty section: give its keys below it, or remove the line for the defaults"
        kind = "list" if isinstance(err.get("input"), list) else "single value"
        return f"expected the section's keys below it, not a {kind}"
    text = msg.removeprefix("Value error, ")
    value = err.get("input")
    if kind == "value_error" or not isinstance(value, (str, int, float, bool)) or any(looks_secret(p) for p in loc):
        return text
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{text} (got {shown})"
