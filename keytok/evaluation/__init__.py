"""Retrieval evaluation: quality with ir-measures, latency, size and compute, and the bench report."""
