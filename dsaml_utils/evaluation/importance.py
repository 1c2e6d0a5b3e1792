"""Which frame features a model uses: permutation importance on the test songs (DMER, mean labels).

Permutation importance (Breiman 2001, as in scikit-learn's `permutation_importance`) asks how much worse
the trained model does when one input carries no information any more but keeps its distribution: the
values of that input are shuffled across all steps of all test songs, everything else stays, and the drop
in the score is the input's importance. Here an input is one openSMILE low-level descriptor (LLD) with
its four columns (mean and std over the 1 s window of the LLD and of its delta), shuffled together, so
that 65 descriptors are scored rather than 260 correlated columns. The score is the mean CCC over the test
songs for arousal and for valence; each descriptor is shuffled `repeats` times (seeded) and the drops
are averaged. A drop near 0 means the model does not need that descriptor given the others (a
descriptor it could replace by a correlated one also scores low: importance is not causation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch.nn as nn

from dsaml_utils.data.types import MEAN
from dsaml_utils.features.songs import SongData
from dsaml_utils.metrics import DIMENSIONS, score_song
from dsaml_utils.models.inference import predict_song
from dsaml_utils.seeding import PERMUTE, generator

SUFFIXES = ("_stddev", "_amean", "_std", "_mean")  # DEAM/openSMILE names, then PMEmo-style names


def descriptor(name: str) -> str:
    """The LLD a frame feature column summarises: 'pcm_RMSenergy_sma_de_amean' -> 'pcm_RMSenergy_sma',
    'pcm_fftMag_mfcc_sma_de[11]_stddev' -> 'pcm_fftMag_mfcc_sma[11]'."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    base, bracket, index = name.partition("[")
    base = base[:-3] if base.endswith("_de") else base
    return base + bracket + index


def descriptor_groups(names: list[str]) -> dict[str, list[int]]:
    """LLD -> the indices of its columns, in the order the LLDs first appear."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(descriptor(n), []).append(i)
    return groups


def dmer_ccc(model: nn.Module, store: dict[str, SongData], song_ids: list[str], window: int, hop: int,
             device="cpu") -> dict[str, float]:
    """Mean CCC per dimension over the songs (sliding-window prediction against the MEAN curve)."""
    scores = [score_song(predict_song(model, store[s], window, hop, device=device), store[s].labels[MEAN])
              for s in song_ids]
    return {d: float(np.mean([s[f"{d}_ccc"] for s in scores])) for d in DIMENSIONS}


def permuted(store: dict[str, SongData], song_ids: list[str], columns: list[int],
             rng: np.random.Generator) -> dict[str, SongData]:
    """The songs with these columns of "frames" shuffled (rows together) across all their steps."""
    pooled = np.concatenate([store[s].inputs["frames"] for s in song_ids])
    order = rng.permutation(len(pooled))
    pooled[:, columns] = pooled[order][:, columns]
    out, start = {}, 0
    for s in song_ids:
        sd = store[s]
        n = len(sd.times)
        out[s] = SongData(s, sd.times, {**sd.inputs, "frames": pooled[start:start + n]}, sd.labels)
        start += n
    return out


def permutation_importance(model: nn.Module, store: dict[str, SongData], song_ids: list[str], names: list[str],
                           window: int, hop: int, repeats: int = 3, seed: int = 0, device="cpu",
                           progress=None) -> pd.DataFrame:
    """One row per LLD: the drop in arousal and valence CCC when it is shuffled (mean and std over repeats),
    sorted by the larger of the two drops. `progress` wraps the descriptors' iterator (e.g. tqdm)."""
    song_ids = [s for s in song_ids if s in store]
    base = dmer_ccc(model, store, song_ids, window, hop, device)
    groups = list(descriptor_groups(names).items())
    rows = []
    for g, (lld, cols) in enumerate(progress(groups) if progress else groups):
        drops = {d: [] for d in DIMENSIONS}
        for r in range(repeats):
            shuffled = permuted(store, song_ids, cols, generator(seed, PERMUTE, r, g))
            score = dmer_ccc(model, shuffled, song_ids, window, hop, device)
            for d in DIMENSIONS:
                drops[d].append(base[d] - score[d])
        row = {"descriptor": lld, "columns": len(cols)}
        for d in DIMENSIONS:
            row[f"{d}_drop"], row[f"{d}_drop_std"] = float(np.mean(drops[d])), float(np.std(drops[d]))
        rows.append(row)
    df = pd.DataFrame(rows).set_index("descriptor")
    df.attrs["base"] = base
    order = df[[f"{d}_drop" for d in DIMENSIONS]].max(axis=1).sort_values(ascending=False).index
    return df.loc[order]
