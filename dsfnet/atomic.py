"""Files: atomic writes (a crash mid-write never leaves a half-written file that looks valid) and content hashes.

Every output of the library and of the pipeline is written through `atomic_path`: the writer fills a
temp file in the destination folder (same suffix, so numpy/PIL/torch pick the right format), which
replaces the destination only when the writer returned without an error.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it becomes `path` (readable: `mode`), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp creates 0600; outputs are for people and tools to read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, newline: str | None = None) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline=newline) as handle:
        handle.write(text)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
