"""A stand-in for "your package" in the README's script_helper example."""
