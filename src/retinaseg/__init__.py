"""Retinal-lesion segmentation on DIARETDB1: data, U-Net, losses, metrics and tracking.

Stage scripts in ``stages/`` are thin wrappers around this package, so every piece
of logic can be imported and tested without DVC.
"""

import os

# The project runs offline: MLflow's usage telemetry (on by default in MLflow 3) stays off, as
# DVC's analytics are (.dvc/config), unless a user sets these variables otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
