"""Deployment: BatchNorm folded into the synapses, exported weights, step-by-step streaming inference."""
