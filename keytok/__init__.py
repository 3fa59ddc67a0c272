"""keytok: key-token analysis and sparse retrieval with LLM embeddings."""

__version__ = "0.1.0"
