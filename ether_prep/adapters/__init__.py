"""Adapters: the only modules that import third-party ML and media libraries, one library each."""
