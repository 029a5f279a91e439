"""One module per DVC stage; run each as `python -m pipeline.stages.<name>` (dvc.yaml does).

STAGES are the ones the flow runs and reports; `snapshot` (a listing of dataset.root) runs before `prepare`
on every `dvc repro`, as its always-changed upstream stage.
"""

STAGES = ("prepare", "validate", "train", "monitor", "evaluate", "register")
