"""Datasets: readers, the synthetic generator, transforms and samplers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dsfnet.data.folder import read_folder
from dsfnet.data.manifest import read_manifest, write_manifest
from dsfnet.data.market1501 import parse_market_name, read_market1501
from dsfnet.data.msmt17 import read_msmt17
from dsfnet.data.personx import read_personx
from dsfnet.data.records import UNLABELLED, DatasetError, ImageRecord, ReIDDataset
from dsfnet.data.synthetic import SyntheticConfig, generate_synthetic
from dsfnet.data.veri776 import read_veri776

# Readers that take an existing folder. `synthetic` reads what `generate_synthetic` wrote.
READERS: dict[str, Callable[[Path], ReIDDataset]] = {
    "market1501": lambda root: read_market1501(root, name="market1501"),
    "synthetic": lambda root: read_market1501(root, name="synthetic"),
    "msmt17": lambda root: read_msmt17(root, name="msmt17"),
    "personx": lambda root: read_personx(root, name="personx"),
    "veri776": lambda root: read_veri776(root, name="veri776"),
    # users' own crops: train/ unlabelled or labelled, query/ and gallery/ optional, or a CSV manifest
    "folder": lambda root: read_folder(root, name="folder"),
}


def available_datasets() -> list[str]:
    return sorted(READERS)


def load_dataset(name: str, root: str | Path) -> ReIDDataset:
    """Read the dataset `name` from `root`; raise DatasetError naming the problem."""
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset root {root} for {name!r} does not exist")
    return READERS[name](root)


__all__ = [
    "UNLABELLED",
    "DatasetError",
    "ImageRecord",
    "ReIDDataset",
    "SyntheticConfig",
    "available_datasets",
    "generate_synthetic",
    "load_dataset",
    "parse_market_name",
    "read_folder",
    "read_manifest",
    "read_market1501",
    "read_msmt17",
    "read_personx",
    "read_veri776",
    "write_manifest",
]
