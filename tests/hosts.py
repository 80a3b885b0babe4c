"""Fixture hosts: file trees under tests/fixtures/hosts/<name>/ served by ``Local``.

A tree holds the files the facts read (proc/, sys/, etc/, dev/kvm, boot/...)
and recorded commands in cmd/: ``NAME.cmd`` is the exact command line,
``NAME.out`` its output, optional ``NAME.rc`` and ``NAME.err``. The smoke
boot (``kvm-smoke``) has no .cmd: its command line depends on the kernel in
boot/ and on the timeout (20 s, or ``kvm-smoke.timeout``), so it is built
here with ``kvm.smoke_command``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from helpers.facts import kvm
from helpers.guest import Local, Result

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
HOSTS = ("seed-xeon4214", "amd-epyc", "lab-pvm", "intel-no-iommu", "lab-l1")


def _result(cmd_dir: Path, stem: str) -> Result:
    def text(ext: str) -> str:
        p = cmd_dir / f"{stem}.{ext}"
        return p.read_text() if p.exists() else ""
    return Result(int(text("rc").strip() or 0), text("out"), text("err"))


def commands(root: Path, smoke_timeout: int | None = None) -> dict[str, Result]:
    cmd_dir = root / "cmd"
    recorded: dict[str, Result] = {}
    for out in sorted(cmd_dir.glob("*.out")):
        stem = out.name[:-4]
        if stem == "kvm-smoke":
            probe = Local(root=root)
            kernel, qemu = kvm.newest_kernel(probe), kvm.find_qemu(probe)
            t = cmd_dir / "kvm-smoke.timeout"
            timeout = smoke_timeout or (int(t.read_text()) if t.exists() else 20)
            if kernel and qemu:
                recorded[kvm.smoke_command(kernel, timeout, "kvm", qemu)] = _result(cmd_dir, stem)
            continue
        recorded[(cmd_dir / f"{stem}.cmd").read_text().strip()] = _result(cmd_dir, stem)
    return recorded


def host(name: str, smoke_timeout: int | None = None) -> Local:
    """A ``Local`` serving the fixture tree ``name`` and its recorded commands."""
    root = FIXTURES / name
    if not root.is_dir():
        raise FileNotFoundError(f"no fixture host {name!r} in {FIXTURES}")
    return Local(root=root, commands=commands(root, smoke_timeout), name=name)


def variant(name: str, dest: Path, remove: tuple[str, ...] = (), write: dict[str, str] | None = None,
            smoke_timeout: int | None = None) -> Local:
    """A copy of fixture ``name`` in ``dest`` with files removed or (over)written,
    e.g. the seed's L1 before ``intel_iommu=on``."""
    root = dest / name
    shutil.copytree(FIXTURES / name, root)
    for rel in remove:
        p = root / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for rel, text in (write or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Local(root=root, commands=commands(root, smoke_timeout), name=f"{name}-variant")
