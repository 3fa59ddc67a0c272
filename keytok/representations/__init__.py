"""Representations: what the model's embeddings become (key-token vectors of documents and queries, the PC1
calibration applied before projection, key tokens of a text, expansion words, model-weighted terms)."""
