"""Small shared helpers: atomic file writes, hashing, cache locations."""
