"""anomaly-sidecar: scores model-serving metrics read from Prometheus and publishes the scores."""

__version__ = "0.1.0"
