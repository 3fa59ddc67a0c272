"""Turn a causal LM into a BeLLM-style embedder: AnglE losses, cached frozen layers, trainer, checkpoints."""
