"""The ``grm-plugin`` command line."""
