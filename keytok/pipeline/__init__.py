"""The pipeline: the index folder, its build, search, merge, update and description.

The only layer that calls both the model side (models, encoding, representations) and the engines.
"""
