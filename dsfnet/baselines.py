"""Training-free references: a colour-histogram retrieval baseline and a measure of camera confusion.

They show how hard a dataset is before any learning: a benchmark where colour histograms already
retrieve well, or where cameras do not confuse identities, teaches a ReID method little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dsfnet.data.records import ImageRecord


def colour_histogram_features(records: Sequence[ImageRecord], bins: int = 8) -> np.ndarray:
    """L2-normalised joint RGB histograms (bins³ dims) of each image's central region."""
    features = np.zeros((len(records), bins**3), dtype=np.float32)
    for i, record in enumerate(records):
        with Image.open(record.path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
        h, w, _ = pixels.shape
        centre = pixels[h // 8 : h - h // 8, w // 6 : w - w // 6] * bins // 256
        codes = (centre[..., 0] * bins + centre[..., 1]) * bins + centre[..., 2]
        features[i] = np.bincount(codes.ravel(), minlength=bins**3)
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
    return features


def camera_confusion(features: np.ndarray, pids: np.ndarray, camids: np.ndarray) -> float:
    """P(d(same id, other camera) > d(other id, same camera)) over all such pairs of pairs.

    0 means cameras never make a person look more different than another person does; 0.5 means a
    cross-camera positive is no closer than a same-camera negative, on average.
    """
    distance = 1.0 - features @ features.T
    same_id = pids[:, None] == pids[None, :]
    same_cam = camids[:, None] == camids[None, :]
    upper = np.triu(np.ones_like(same_id), k=1)
    positives = np.sort(distance[same_id & ~same_cam & upper])
    negatives = np.sort(distance[~same_id & same_cam & upper])
    if not len(positives) or not len(negatives):
        raise ValueError("need identities seen in two cameras and cameras that saw two identities")
    below = np.searchsorted(negatives, positives, side="left")  # negatives strictly closer than each positive
    return float(below.sum() / (len(positives) * len(negatives)))
