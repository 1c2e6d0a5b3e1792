"""Stage 2, features: audio to model inputs (0.5 s log-mel slices, ImageBind's fbank), cached, and song tensors."""
