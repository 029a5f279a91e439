"""One module per DVC stage; run each as `python -m pipeline.stages.<name>` (dvc.yaml does)."""

STAGES = ("prepare", "validate", "train", "monitor", "evaluate", "register")
