"""The ``keytok`` command line: one module per command, all dispatched from :mod:`keytok.cli.main`."""
