"""MLflow: the store, runs and datasets (``runs``) and the Model Registry (``registry``)."""
