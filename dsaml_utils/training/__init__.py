"""Stage 6, training: run configuration and presets, splits and sampling, the trainer, run folders."""
