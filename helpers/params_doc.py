"""parameters/README.md, written from the schema in ``helpers.params``:

    python -m helpers.params_doc            # rewrite parameters/README.md
    python -m helpers.params_doc --check    # exit 1 when it is not current

tests/test_params.py checks that the committed file is current.
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from . import params as P

README = Path(__file__).resolve().parent.parent / "parameters" / "README.md"

INTRO = """\
# Parameters

<!-- Written by `python -m helpers.params_doc` from the schema in helpers/params/schema.py: do not edit by hand;
     tests/test_params.py checks that this file is current. -->

One YAML file holds the parameters of every stage: `parameters/lab.yaml` (the
emulated lab, the default) and `parameters/seed-xeon4214.yaml` (the seed's real
host, documented line by line). Start from a copy of the one closer to you.

```sh
.venv/bin/python -m helpers check-params parameters/my-host.yaml                # the file, and against this host
.venv/bin/python -m helpers check-params parameters/my-host.yaml --schema-only  # the file alone
.venv/bin/python -m helpers run --params parameters/my-host.yaml
```

Every key is optional: a key left out takes its default below. A mistake is
refused before anything runs, one line a problem: the file, the line, the key,
what is wrong and what to do.

## Rules across keys

- The file is UTF-8 YAML, one mapping of the sections below, not empty, each key
  once in its mapping. An unknown key is refused with the nearest valid one.
- No secret goes into a parameter file: SSH is by key only, and
  `l1.ssh.identity` is the *path* of your private key. A key named like a
  secret (`password`, `passphrase`, `token`, `secret`, `key`) is refused and its
  value is never printed.
- Paths are absolute (`~` is expanded). A file is not a folder and not under
  `/proc`, `/sys` or `/dev`; `host.workdir` is a folder of the runbook's own
  (never `/` or a system folder: teardown removes what the runbook made there);
  `verify.mount_point` is absolute and not `/` or a system folder of L2.
- `lab: true` is the emulated lab: `l1.image` and `l2.image` are `lab` (the
  runbook builds them). `lab: false` is a real host: give both images' paths.
- `l2.select.serial`, when given, is `nvme.serial` (the NVMe the runbook gives L1).
- `nvme.source: host` (a controller of L0 goes to L1): `nvme.select` names it by
  `serial` or `bdf` (never "the only NVMe": it may be L0's system disk; `model`
  only narrows); the emulated drive's keys (`backing_file`, `size_gib`, `serial`,
  `pci_addr`, `remove_backing_file`) are refused; `nvme.target: l2` needs
  `l1.iommu` intel or auto (QEMU's amd-iommu has no caching mode). With
  `nvme.source: emulated`, `nvme.target: l1` is refused (nothing would be passed
  through), and so are `nvme.select` and `nvme.baseline_consent`.
- `l2.memory_mib` is less than `l1.memory_mib`; a cpuset range runs upwards (`1-3`, not `3-1`).
- `l1.name` and `l2.name` start with a letter or a digit and are at most
  {longest} characters (the runbook's file names add `{suffix}`).
- Checked against the host (`check-params`, and `run` before any stage): the
  CPUs of `l1.cpuset` and `l1.memory_mib`; that `l1.image`, `l1.ssh.identity`,
  `l1.ssh.known_hosts` and `l1.ssh.config` exist; that a backing file still to
  be made fits in the free space and in the biggest file its filesystem holds;
  that `l1.network.ssh_port` is free on 127.0.0.1 (or held by this very L1);
  that `l1.network.bridge` exists (mode bridge).
"""


def _type(annotation) -> str:
    """A field's type in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return f"{_type(inner[0])}, or empty"
    if origin is list:
        return f"list of {_type(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {Path: "path", bool: "true/false", int: "integer", float: "number", str: "text"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _limits(info: FieldInfo) -> str:
    words = []
    for m in info.metadata:
        for cls, attr, fmt in ((at.Ge, "ge", ">= {}"), (at.Gt, "gt", "> {}"), (at.Le, "le", "<= {}"),
                               (at.Lt, "lt", "< {}"), (at.MinLen, "min_length", "at least {} characters"),
                               (at.MaxLen, "max_length", "at most {} characters")):
            if isinstance(m, cls):
                words.append(fmt.format(getattr(m, attr)))
        if getattr(m, "pattern", None):
            words.append(f"matching `{m.pattern}`")
    return "; ".join(words)


def _value(v) -> str:
    if isinstance(v, BaseModel):
        return "(section)"
    if v is None:
        return "empty"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def _extra(info: FieldInfo, key: str):
    return (info.json_schema_extra or {}).get(key) if isinstance(info.json_schema_extra, dict) else None


def _section_model(annotation):
    """The section class of a field (``Optional[Section]`` too), or None."""
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _sections(model=P.Params, loc: tuple = ()):
    """(dotted name, model) of the top level and every section, depth first."""
    yield ".".join(loc), model
    for name, info in model.model_fields.items():
        inner = _section_model(info.annotation)
        if inner is not None:
            yield from _sections(inner, loc + (name,))


def _table(name: str, model) -> list[str]:
    title = f"`{name}`" if name else "The top level"
    doc = " ".join((model.__doc__ or "").split())
    rows = [f"## {title}", "", doc, "",
            "| key | type | default | meaning | example |", "|---|---|---|---|---|"]
    for key, info in model.model_fields.items():
        full = f"{name}.{key}" if name else key
        kind = _type(info.annotation)
        if limits := _limits(info):
            kind += f" ({limits})"
        example = _extra(info, "example")
        if example is None and kind != "section":
            example = info.default
        meaning = (info.description or "").replace("|", "\\|")
        if consent := _extra(info, "consent"):
            meaning += f" **Consent:** {consent}."
        shown = "" if kind == "section" else f"`{full.split('.')[-1]}: {_value(example)}`"
        rows.append(f"| `{full}` | {kind.replace('|', '/')} | {_value(info.default)} | {meaning} | {shown} |")
    return rows + [""]


def _consents() -> list[str]:
    rows = ["## Consent keys", "",
            "Nothing that destroys data or replaces what exists happens unless its key says so in the file.", "",
            "| key | default | what it allows |", "|---|---|---|"]
    for name, model in _sections():
        for key, info in model.model_fields.items():
            if consent := _extra(info, "consent"):
                full = f"{name}.{key}" if name else key
                rows.append(f"| `{full}` | {_value(info.default)} | {consent} |")
    return rows + [""]


def readme() -> str:
    """parameters/README.md, from the schema."""
    longest = P.NAME_MAX - len(P.LONGEST_SUFFIX)
    out = [INTRO.replace("{longest}", str(longest)).replace("{suffix}", P.LONGEST_SUFFIX)]
    out += _consents()
    for name, model in _sections():
        out += _table(name, model)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = readme()
    if "--check" in argv:
        if not README.exists() or README.read_text() != text:
            print(f"{README} is not current: run `python -m helpers.params_doc`", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
