"""The run state: a JSON file in the run folder that stages hand to each other.

Stage 01 writes the accelerator it chose, stage 02 how to reach L1, stage 04
the NVMe's BDF and the L1 baseline, and so on. Every write goes to disk at once
(atomically), so a failed stage leaves what the earlier ones learned.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class State:
    """A dict-like view of ``state.json``; ``set`` saves immediately."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in self.data:
            from .errors import RunbookError
            raise RunbookError(f"the run state has no '{key}' yet ({self.path})",
                               hint="run the earlier stages first, e.g. `python -m helpers run --from 01`")
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def update(self, key: str, **values: Any) -> dict:
        """Merge values into the dict stored under ``key``."""
        d = dict(self.data.get(key) or {})
        d.update(values)
        self.set(key, d)
        return d

    def remember_created(self, kind: str, what: str) -> None:
        """Note something this runbook made, so teardown removes only that."""
        created = self.data.setdefault("created", {}).setdefault(kind, [])
        if what not in created:
            created.append(what)
        self.save()

    def created(self, kind: str) -> list[str]:
        return list(self.data.get("created", {}).get(kind, []))

    def forget_created(self, kind: str, what: str) -> None:
        items = self.data.get("created", {}).get(kind, [])
        if what in items:
            items.remove(what)
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, self.path)
