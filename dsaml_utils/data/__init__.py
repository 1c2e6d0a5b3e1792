"""Stage 1, data: the in-memory dataset model, the DEAM and PMEmo loaders, and the synthetic dataset."""
