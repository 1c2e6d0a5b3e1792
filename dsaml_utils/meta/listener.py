"""Adapting a trained model to one listener: their support windows and MAML's inner loop on them."""

from __future__ import annotations

import torch
import torch.nn as nn

from dsaml_utils.features.songs import Item, SongData, make_batch, window_starts
from dsaml_utils.meta.maml import MetaConfig, personalize


def adapt_to_listener(model: nn.Module, store: dict[str, SongData], support: list[Item], meta_cfg: MetaConfig,
                      window: int, seed: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Parameters adapted to one listener by MAML's inner loop on their support windows (train mode; `seed` seeds torch)."""
    keys = tuple(getattr(model, "inputs", ("mel", "mask")))
    batch = make_batch(store, support, window, keys, device)
    torch.manual_seed(seed)
    was_training = model.training
    model.train()
    try:
        params = personalize(model, batch, meta_cfg)
    finally:
        model.train(was_training)
    return params


def support_items(store: dict[str, SongData], songs: list[str], listener: str, window: int,
                  support_steps: int | None) -> list[Item]:
    """The windows a listener's support songs contribute: the first `support_steps` steps, or all windows."""
    items = []
    W = window
    for sid in songs:
        start, stop = store[sid].span(listener)
        if support_steps is not None:
            items.append(Item(sid, listener, start, min(support_steps, W, stop - start)))
        else:
            items.extend(Item(sid, listener, start + s, min(W, stop - start - s))
                         for s in window_starts(stop - start, W, W))
    return items
