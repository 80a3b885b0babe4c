"""What a distribution class's ``plan`` returns (a stage's step makes its Actions of the edits)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Edit:
    """One change, as an engineer would make it: the commands and, for a file, its diff."""

    what: str
    commands: list[str] = field(default_factory=list)
    content: str | None = None


@dataclass
class DistroPlan:
    """The edits a class would make (none: ``reason`` says why) and what apply needs."""

    what: str
    edits: list[Edit] = field(default_factory=list)
    reason: str = ""
    data: Any = None

    @property
    def changes(self) -> bool:
        return bool(self.edits)

    def commands(self) -> list[str]:
        return [c for e in self.edits for c in e.commands]
