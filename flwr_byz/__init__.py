"""flwr-byz: Byzantine-resilient aggregation, attacks and experiments for Flower."""

__version__ = "0.1.0"
