"""Weights in and out: run checkpoints (read without unpickling code), the official repositories' layouts,
a user's own model files, and the one route from a checkpoint to a model."""
