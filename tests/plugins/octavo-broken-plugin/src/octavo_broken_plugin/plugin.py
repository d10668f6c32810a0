"""Fails on import, as a plugin with a missing native library would."""

raise ImportError("libacme.so: cannot open shared object file")
