"""Where each stage reads and writes, relative to the project root (the DVC repo). dvc.yaml agrees."""

from pathlib import Path

DATASET_SNAPSHOT = Path("data/dataset_snapshot.json")  # a listing fingerprint of dataset.root (stage snapshot)
PREPARED_DIR = Path("data/prepared")
SYNTHETIC_DIR = PREPARED_DIR / "synthetic"
MANIFEST = PREPARED_DIR / "manifest.csv"
REJECTED = PREPARED_DIR / "rejected.csv"  # files found in dataset folders that the reader could not use
IGNORED = PREPARED_DIR / "ignored.csv"  # operating-system litter found there (Thumbs.db, .DS_Store, ...)

MODEL_DIR = Path("models")
CHECKPOINT = MODEL_DIR / "model.pt"
RUN_INFO = MODEL_DIR / "run.json"
RESUME_STATE = Path("checkpoints/train/last.pt")  # not a DVC output: it must survive a failed stage

METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")
TRAIN_REPORTS = REPORTS_DIR / "train"
EPOCH_STATS = TRAIN_REPORTS / "epochs.csv"
EPOCH_LABELS = TRAIN_REPORTS / "labels.npz"
EPOCH_EMBEDDINGS = TRAIN_REPORTS / "embeddings.npz"  # a fixed sample's first/last-epoch embeddings, for drift
PREPARE_REPORTS = REPORTS_DIR / "prepare"
CONTACT_SHEET = PREPARE_REPORTS / "contact_sheet.png"
VALIDATE_REPORTS = REPORTS_DIR / "validate"
MONITOR_REPORTS = REPORTS_DIR / "monitor"
EVALUATE_REPORTS = REPORTS_DIR / "evaluate"
PLOTS_DIR = Path("plots")
CMC_PLOT = PLOTS_DIR / "cmc.csv"


def metrics_file(stage: str) -> Path:
    return METRICS_DIR / f"{stage}.json"
