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
from dsaml_utils.errors import UserError
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import SongData, song_tensors
from dsaml_utils.training.config import RunConfig


def wave_rate(model: nn.Module) -> int | None:
    """Sample rate of the model's "wave" input, or None when it reads no waveform."""
    if "wave" not in getattr(model, "inputs", ()):
        return None
    return int(getattr(model.cfg, "sample_rate", 16000))


def build_store(ds: MusicDataset, song_ids: list[str], cfg: RunConfig, model: nn.Module,
                cache: FeatureCache | None = None, encoder: GlobalEncoder | None = None,
                progress: bool = True) -> dict[str, SongData]:
    """SongData for each song the run's model can read; songs whose audio fails are noted in ds.problems and skipped."""
    keys = set(getattr(model, "inputs", ("mel", "mask")))
    if "frames" in keys:
        raise UserError(f"model {cfg.model!r} reads precomputed frame features ('frames'), which this trainer "
                        "does not build yet; use a model on 'mel' or 'wave'")
    cache = cache or FeatureCache(cfg.cache_dir)
    embed = None
    if "global" in keys:
        if cfg.encoder == "none":
            raise UserError(f"model {cfg.model!r} reads a global embedding but the encoder is 'none'")
        encoder = encoder or get_encoder(cfg.encoder, cfg.encoder_checkpoint)
        embed = lambda song: embed_song(encoder, song.audio_path, cache, *song_excerpt(song))  # noqa: E731
    return song_tensors(ds, song_ids, cfg.mel, keys, cache, embed, wave_rate(model), progress)
