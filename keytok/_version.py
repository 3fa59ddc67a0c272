"""keytok's version, in one home that every layer may import.

The package root re-exports it (``keytok.__version__``); an index folder's record, the ONNX export's record,
the server's ``/info`` and ``keytok --version`` read it from here, so no inner module imports the package
root; ``setup.cfg`` reads it too (``attr:``, parsed without importing keytok).
"""

__version__ = "0.1.0"
