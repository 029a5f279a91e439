"""Reader for VeRi-776 (Liu et al., ECCV 2016): vehicles seen by 20 cameras.

Folders ``image_train/``, ``image_query/``, ``image_test/``; names like ``0001_c001_00016450_0.jpg`` (vehicle id,
three-digit camera 1..20, frame, index). Cameras map to camids 0..19, as torchreid / cluster-contrast-reid do;
a camera outside 1..20 is an error. The official release has no junk, but pid -1 is dropped if present.
"""

from __future__ import annotations

import re
from pathlib import Path

from dsfnet.data.market1501 import NameScheme, camera_range, read_split_folders
from dsfnet.data.records import ReIDDataset

VERI_SPLIT_DIRS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
VERI_SCHEME = NameScheme(re.compile(r"(-?\d+)_c(\d\d\d)"), camera_range(1, 20), "VVVV_cCCC_FFFFFFFF_I.jpg")


def read_veri776(root: str | Path, name: str = "veri776") -> ReIDDataset:
    """Read VeRi-776 from `root` (or its `VeRi` sub-folder)."""
    return read_split_folders(root, name, VERI_SCHEME, split_dirs=VERI_SPLIT_DIRS, subfolders=("VeRi", "veri"),
                              layout="VeRi-776")
