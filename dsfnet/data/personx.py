"""Reader for PersonX (Sun et al., CVPR 2019): synthetic pedestrians in the Market-1501 folder layout.

Names start ``PPPP_cC``; PersonX renders only cameras 3, 4, 8, 10, 11 and 12, which map to camids 0..5 in that
order, as cluster-contrast-reid's loader does (cam2label {3:1, 4:2, 8:3, 10:4, 11:5, 12:6}, then -1). A camera
outside that set means the folder is not PersonX, so it is an error rather than a guess.
"""

from __future__ import annotations

import re
from pathlib import Path

from dsfnet.data.market1501 import NameScheme, camera_table, read_split_folders
from dsfnet.data.records import ReIDDataset

PERSONX_CAMERAS = (3, 4, 8, 10, 11, 12)
PERSONX_SCHEME = NameScheme(
    re.compile(r"(-?\d+)_c(-?\d+)"),
    camera_table({number: camid for camid, number in enumerate(PERSONX_CAMERAS)}),
    "PPPP_cC*.jpg",
)


def read_personx(root: str | Path, name: str = "personx") -> ReIDDataset:
    """Read PersonX from `root` (or its `PersonX` sub-folder); junk (pid -1) is dropped, pid 0 kept."""
    return read_split_folders(root, name, PERSONX_SCHEME, subfolders=("PersonX",), layout="PersonX")
