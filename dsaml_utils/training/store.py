"""The song tensors of a run: the inputs its model reads (log-mel, waveform, global embedding) and every label."""

from __future__ import annotations

import torch.nn as nn

from dsaml_utils.data.types import MusicDataset
from dsaml_utils.encoders.registry import (
    GlobalEncoder,
    embed_song,
    get_encoder,
    song_excerpt,
)
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.frame_inputs import frame_store
from dsaml_utils.features.songs import SongData, song_tensors
from dsaml_utils.training.config import RunConfig


def wave_rate(model: nn.Module) -> int | None:
    """Sample rate of the model's "wave" input, or None when it reads no waveform."""
    if "wave" not in getattr(model, "inputs", ()):
        return None
    return int(getattr(model.cfg, "sample_rate", 16000))


def build_store(ds: MusicDataset, song_ids: list[str], cfg: RunConfig, model: nn.Module,
                cache: FeatureCache | None = None, encoder: GlobalEncoder | None = None,
                progress: bool = True, fit_ids: list[str] | None = None) -> dict[str, SongData]:
    """SongData for each song the run's model can read; songs whose audio fails are noted in ds.problems and skipped.

    A model on "frames" reads the dataset's feature files (`features.frame_inputs`), z-scored with
    `model.frame_norm`; with `fit_ids` (the trainer's training songs) that normalisation is fitted on those
    songs first and set on the model, which then carries it into its checkpoints."""
    keys = set(getattr(model, "inputs", ("mel", "mask")))
    cache = cache or FeatureCache(cfg.cache_dir)
    embed = None
    if "global" in keys:
        if cfg.encoder == "none":
            raise UserError(f"model {cfg.model!r} reads a global embedding but the encoder is 'none'")
        encoder = encoder or get_encoder(cfg.encoder, cfg.encoder_checkpoint)

        def embed(song):
            if song.audio_path is None:
                raise DataError("no audio for its global embedding")
            return embed_song(encoder, song.audio_path, cache, *song_excerpt(song))
    if "frames" not in keys:
        return song_tensors(ds, song_ids, cfg.mel, keys, cache, embed, wave_rate(model), progress)
    store, model.frame_norm = frame_store(ds, song_ids, getattr(model, "frame_norm", None), model.cfg.frames_dim,
                                          fit_ids, progress)
    for sid in list(store) if embed is not None else ():  # DSAML on frames with a global encoder: that needs audio
        try:
            store[sid].inputs["global"] = embed(ds.songs[sid])
        except DataError as exc:
            ds.problems.append(f"song {sid} skipped: {exc}")
            del store[sid]
    return store
