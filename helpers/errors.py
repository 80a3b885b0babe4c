"""The one error type a user sees: what went wrong and what to do."""
from __future__ import annotations


class RunbookError(Exception):
    """A failure the user can act on. ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nHINT: {self.hint}" if self.hint else self.message
