"""Alignment between embeddings and tokens: the key-token metrics and the first-principal-component calibration."""
