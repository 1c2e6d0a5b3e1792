"""Files that must never be half-written, checkpoints loaded safely, and the provenance of every result."""
