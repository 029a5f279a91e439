"""The record types every reader returns and every consumer relies on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# pid of a training crop nobody labelled (own data): training never reads identities; monitoring skips them
UNLABELLED = -2

# files operating systems leave in image folders (Windows thumbnail caches, macOS Finder and AppleDouble files):
# Market-1501 as distributed has a Thumbs.db in every split folder
OS_LITTER_NAMES = {"thumbs.db": "Windows thumbnail cache", "ehthumbs.db": "Windows thumbnail cache",
                   "desktop.ini": "Windows folder settings", ".ds_store": "macOS Finder settings"}


def os_litter(name: str) -> str | None:
    """Why `name` is operating-system litter to skip (with a count), or None for a file a reader must judge."""
    if name.lower() in OS_LITTER_NAMES:
        return f"operating-system file ({OS_LITTER_NAMES[name.lower()]}), ignored"
    if name.startswith("._"):
        return "operating-system file (macOS AppleDouble metadata), ignored"
    return None


@dataclass(frozen=True)
class ImageRecord:
    """One image crop: where it is, who it shows (pid; UNLABELLED when unknown) and which camera saw it
    (0-based camid)."""

    path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """A re-identification benchmark split into train / query / gallery."""

    name: str
    root: Path
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)
    # files found where images belong but not read as images (e.g. unexpected extension): (path, reason)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # operating-system litter (Thumbs.db, .DS_Store, ...) skipped without judging it: (path, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def splits(self) -> dict[str, list[ImageRecord]]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    @property
    def has_test_split(self) -> bool:
        """A labelled query and gallery to evaluate on (own data may have neither)."""
        return bool(self.query) and bool(self.gallery)

    @property
    def train_labelled(self) -> bool:
        return bool(self.train) and all(r.pid != UNLABELLED for r in self.train)

    @property
    def num_cameras(self) -> int:
        return len({r.camid for split in self.splits().values() for r in split})

    def rebased(self, old_root: str | Path, new_root: str | Path) -> ReIDDataset:
        """The same dataset with paths under `old_root` moved to `new_root` (for staged writes)."""
        def move(records: list[ImageRecord]) -> list[ImageRecord]:
            return [ImageRecord(str(Path(new_root) / Path(r.path).relative_to(old_root)), r.pid, r.camid)
                    for r in records]
        def move_files(files: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return [(str(Path(new_root) / Path(p).relative_to(old_root)), why) for p, why in files]
        return ReIDDataset(self.name, Path(new_root), move(self.train), move(self.query), move(self.gallery),
                           move_files(self.rejected), move_files(self.ignored))

    def summary(self) -> str:
        parts = [
            f"{name}: {len(recs)} images, "
            + (f"{len({r.pid for r in recs})} ids" if all(r.pid != UNLABELLED for r in recs) else "unlabelled")
            for name, recs in self.splits().items()
        ]
        return f"{self.name} ({self.num_cameras} cameras) — " + "; ".join(parts)


class DatasetError(ValueError):
    """Raised when a dataset is missing, malformed or named wrongly; the message names the culprit."""
