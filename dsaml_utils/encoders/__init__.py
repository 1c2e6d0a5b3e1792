"""Stage 3, global encoders: one frozen pretrained embedding per song excerpt (ImageBind, musicnn, vibenet)."""
