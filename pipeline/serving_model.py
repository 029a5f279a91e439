"""The pyfunc model as code (MLflow's models-from-code): `log_reid_model` logs this file, and MLflow runs it
on load, instead of unpickling an object, which would tie the model to this exact class layout."""

import mlflow

from pipeline.serving import ReIDEmbedder

mlflow.models.set_model(ReIDEmbedder())
