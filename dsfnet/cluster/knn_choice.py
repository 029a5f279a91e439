"""Which exact CPU search `cluster.knn_backend: auto` uses on this machine: measured once, then fixed.

Both backends find the same neighbours; which is faster depends on the CPU and the BLAS each one links.
torch's matmul (MKL) was 4.6x ahead of faiss's IndexFlatIP on one 2-core machine and 1.5x behind it on an
AMD EPYC (bench/bench_knn.py), so no fixed rule is right everywhere. `python -m dsfnet.warmup` (run by
`make install`) times them on a clustering-sized search (and `knn.symmetric_knn`, which uses the symmetry of
a self-search to do half the products) and stores the winners in
`$DSFNET_CACHE_DIR/knn_backend.json` (default `~/.cache/dsfnet`), keyed by CPU model, thread count and
library versions; every later run on the same machine searches with it, so results stay reproducible there.
Without a measurement for this machine `auto` keeps torch, the earlier default.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dsfnet.atomic import write_text

log = logging.getLogger(__name__)

CHOICE_FILE = "knn_backend.json"
UNMEASURED_DEFAULT = "torch"
GENERAL_BACKENDS = ("torch", "faiss")  # searches of queries against a base; `symmetric` searches a set against itself
# the measured search: a clustering step's size on the Market validation split (9,914 images of MobileNetV2's
# 1,280 floats, k1 = 30), ~8 s. Smaller probes read the gap too narrow: on an AMD EPYC faiss led torch by 12 %
# at 6,144 images and by 35 % at 9,914 (same session)
PROBE_SHAPE = (9914, 1280, 30)


@functools.cache  # `auto` is resolved at every search: read /proc/cpuinfo once per process
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what `platform` knows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "unknown")


def machine() -> dict[str, str | int]:
    """What the winner depends on: a stored choice counts only where all of this is unchanged."""
    from dsfnet.cluster.knn import faiss
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "faiss": getattr(faiss, "__version__", "absent")}


def choice_path() -> Path:
    return Path(os.environ.get("DSFNET_CACHE_DIR") or Path.home() / ".cache" / "dsfnet") / CHOICE_FILE


def measure(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 2, path: Path | None = None) -> dict:
    """Time both backends on random unit features of `shape` (N, dim, k), best of `repeats`; store the faster
    one for this machine at `path` (default `choice_path()`) and return the record written."""
    from dsfnet.cluster.knn import faiss, knn

    n, dim, k = shape
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    seconds, found = {}, {}
    for backend in ("torch", "faiss", "symmetric") if faiss is not None else ("torch", "symmetric"):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            found[backend] = knn(features, k, backend=backend)[1]
            times.append(time.perf_counter() - start)
        seconds[backend] = round(min(times), 4)
    for backend in found:
        if not (np.sort(found[backend], axis=1) == np.sort(found["torch"], axis=1)).mean() > 0.999:
            raise RuntimeError(f"{backend} and torch found different neighbours on the same features: kNN is "
                               "broken here")
    general = {name: s for name, s in seconds.items() if name in GENERAL_BACKENDS}
    record = {"backend": min(general, key=general.get), "self_search": min(seconds, key=seconds.get),
              "seconds": seconds, "shape": list(shape), "machine": machine(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = path or choice_path()
    try:
        write_text(path, json.dumps(record, indent=2) + "\n")
    except OSError as error:  # a read-only home must not fail `make install`: `auto` then stays on torch
        log.warning("could not store the kNN backend measured here in %s (%s); set DSFNET_CACHE_DIR to a writable "
                    "folder, or cluster.knn_backend to %s", path, error, record["backend"])
    _read.cache_clear()
    return record


@functools.cache
def _read(path: Path, mtime_ns: int) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("ignoring %s (%s); `python -m dsfnet.warmup` measures the kNN backend again", path, error)
        return None
    if not isinstance(record, dict) or record.get("backend") not in GENERAL_BACKENDS:
        log.warning("ignoring %s: no backend torch|faiss in it; `python -m dsfnet.warmup` writes it again", path)
        return None
    if record.get("self_search") not in (*GENERAL_BACKENDS, "symmetric"):
        log.warning("ignoring %s: measured before the symmetric search existed; `python -m dsfnet.warmup` "
                    "measures the kNN backends again", path)
        return None
    return record


def stored_choice() -> dict | None:
    """This machine's measured record, or None (no file, unreadable, or measured on another machine/setup)."""
    path = choice_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    record = _read(path, mtime)
    return record if record is not None and record.get("machine") == machine() else None


@functools.cache
def _say(message: str) -> None:  # once per process and choice
    log.info(message)


def _measured(key: str, what: str) -> str:
    record = stored_choice()
    if record is None:
        _say(f"{what} on the CPU: {UNMEASURED_DEFAULT} (not measured on this machine; `python -m dsfnet.warmup` "
             f"times the kNN backends and keeps the fastest)")
        return UNMEASURED_DEFAULT
    times = ", ".join(f"{name} {s:.2f} s" for name, s in record["seconds"].items())
    _say(f"{what} on the CPU: {record[key]} (measured {record['measured_at']}: {times}; {choice_path()})")
    return record[key]


def cpu_backend() -> str:
    """The CPU search of queries against a base that `auto` means here: the measured faster of faiss and
    torch, else torch."""
    return _measured("backend", "kNN of queries against a base")


def cpu_self_search() -> str:
    """The CPU search of a set against itself (the clustering's kNN) that `auto` means here: the measured
    fastest of faiss, torch and the symmetric search, else torch."""
    return _measured("self_search", "kNN of a set against itself")
