"""Stage 5, meta-learning: MAML's inner loop, the reference task loop, the batched (vmap) path, one listener."""
