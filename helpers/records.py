"""Nothing recorded is lost: a rerun moves an earlier attempt's file aside
instead of writing over it."""
from __future__ import annotations

from pathlib import Path


def keep_earlier(path: Path, new_content: bytes | None = None) -> Path | None:
    """Move ``path`` aside as ``NAME.attempt-K.EXT`` (K = 1, 2, ...) before it is
    written anew; returns where it went. With ``new_content``, a file that already
    holds exactly that is left alone (rewriting the same record loses nothing)."""
    path = Path(path)
    if not path.exists():
        return None
    if new_content is not None and path.read_bytes() == new_content:
        return None
    k = 1
    while (kept := path.with_name(f"{path.stem}.attempt-{k}{path.suffix}")).exists():
        k += 1
    path.rename(kept)
    return kept
