"""DSFNet: unsupervised re-identification training, as a library.

This package holds the method only (data, models, clustering, memory, training, evaluation).
It never imports DVC, Prefect, MLflow, great-expectations or evidently: the `pipeline`
package wraps it for operations.
"""

__version__ = "0.1.0"
