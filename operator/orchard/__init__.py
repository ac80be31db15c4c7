"""Orchard: a Kubernetes operator for the life of a machine-learning model."""

__version__ = "0.1.0"
