"""Operations: each changes one thing only when needed and says what it did.

Rule: an operation plans from facts first (read only), then its apply does exactly that plan.

Every operation returns a ``Change``: ``changed`` is False and the detail says
why when the machine was already as asked ("no change")."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Change:
    what: str
    changed: bool
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.what}: {'did' if self.changed else 'no change'}{' - ' + self.detail if self.detail else ''}"


def did(what: str, detail: str = "") -> Change:
    return Change(what, True, detail)


def no_change(what: str, detail: str = "") -> Change:
    return Change(what, False, detail)
