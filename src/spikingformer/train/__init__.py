"""Runs: configs (YAML recipes), the training engines (images and events, MAE pre-training, masked LM, GLUE),
evaluation, prediction, several processes (torchrun) and the records a run leaves."""
