"""pytest plugin: reserved ports as fixtures (work in progress)."""
