"""A run's song tensors under a protocol: `training.store.build_store`, or under protocol "authors" with the
imagebind encoder, their ImageBind input (issue 11 point 4, `training.protocol`, `encoders.authors`)."""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from dsaml_utils.data.types import HOP_SECONDS, MEAN, MusicDataset, Song
from dsaml_utils.encoders.authors import embed_padded, embed_steps
from dsaml_utils.encoders.registry import embed_song, get_encoder, song_excerpt
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.songs import SongData, song_tensors
from dsaml_utils.models.inference import resolve_device
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.protocol import RULES, rules
from dsaml_utils.training.store import build_store, wave_rate


def authors_global(cfg: RunConfig, protocol: str | None = None) -> bool:
    """Whether the protocol changes this run's global embeddings (point 4: encoder imagebind only)."""
    r, p = rules(protocol or cfg.protocol), RULES["paper"]
    changed = (r.imagebind_native_rate, r.imagebind_clip_spacing, r.window_excerpt, r.per_step_test_global) != \
        (p.imagebind_native_rate, p.imagebind_clip_spacing, p.window_excerpt, p.per_step_test_global)
    return changed and cfg.resolved_encoder() == "imagebind"


def protocol_store(ds: MusicDataset, song_ids: list[str], cfg: RunConfig, model: nn.Module,
                   cache: FeatureCache | None = None, protocol: str | None = None,
                   test_ids: Collection[str] = (), progress: bool = True,
                   fit_ids: list[str] | None = None) -> dict[str, SongData]:
    """SongData for each song as `protocol` (None: the run's) builds it; songs in `test_ids` are test songs.

    Paper, or any encoder but imagebind: `build_store` unchanged. Authors with imagebind: the encoder reads
    the file the authors' way; a test song gets one global per step (`embed_steps`), any other song the
    zero-padded train.window / 2 s from its first label (`embed_padded`). fit_ids: see `build_store`."""
    keys = set(getattr(model, "inputs", ("mel", "mask")))
    if "global" not in keys or "frames" in keys or not authors_global(cfg, protocol):
        return build_store(ds, song_ids, cfg, model, cache, progress=progress, fit_ids=fit_ids)
    r = rules(protocol or cfg.protocol)
    cache = cache or FeatureCache(cfg.cache_dir)
    encoder = get_encoder("imagebind", cfg.encoder_checkpoint, str(resolve_device(cfg.train.device)),
                          clip_spacing=r.imagebind_clip_spacing, native_rate=r.imagebind_native_rate)
    tests = set(test_ids)

    def embed(song: Song):
        start, duration = song_excerpt(song)
        if song.song_id in tests and r.per_step_test_global:
            times = song.curves[MEAN].times
            return embed_steps(encoder, song.audio_path, cache, float(times[0]), len(times), progress)
        if r.window_excerpt:
            return embed_padded(encoder, song.audio_path, cache, start, cfg.train.window * HOP_SECONDS)
        return embed_song(encoder, song.audio_path, cache, start, duration)

    return song_tensors(ds, song_ids, cfg.mel, keys, cache, embed, wave_rate(model), progress)
