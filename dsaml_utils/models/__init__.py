"""Stage 4, models: DSAML, the baselines, the layers they share, and whole-song prediction."""
