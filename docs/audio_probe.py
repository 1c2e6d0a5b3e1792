"""How audible are arousal and valence in a synthetic dataset? A linear probe on pooled log-mel slices.

For each 0.5 s label step: the mean and std over frames of every mel band, plus the same averaged over the
surrounding 4.5 s (9 steps). Ridge regression fitted on the training clips, scored by CCC per test song
against the hidden true curves (``--target truth``) or the MEAN curves (``--target mean``), averaged.

    dsaml synth --out data/synthetic
    python docs/audio_probe.py --root data/synthetic --n-mels 96      # quick preset's mel settings
    python docs/audio_probe.py --root data/synthetic --n-mels 10      # ~ what the adapter keeps of 32 bands

Measured (seed 0 dataset, 16 kHz, 20 ms hop, truth): valence 0.54 with the earlier valence cues
(register +-3 scale steps), 0.75 with the current ones (+-6 steps, louder dissonance); arousal 0.92 both.
With the current dataset against the MEAN curves (arousal / valence): 96 bands 0.79 / 0.44, 34 bands
0.73 / 0.49, 10 bands 0.72 / 0.27 (with the earlier cues 10 bands gave 0.74 / 0.17): a model that keeps
only ~10 frequency bins hears much less of the valence.
"""

from __future__ import annotations

import argparse

import numpy as np

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.synthetic.analysis import load_truth
from dsaml_utils.data.types import MEAN
from dsaml_utils.features.cache import FeatureCache, song_features
from dsaml_utils.features.mel import MelConfig
from dsaml_utils.metrics import ccc


def slice_features(mel: np.ndarray, context: int = 9) -> np.ndarray:
    """[T, F, M] log-mel slices -> [T, 4M]: per-slice mean/std over frames, and their moving average."""
    feat = np.concatenate([mel.mean(1), mel.std(1)], 1)
    pad = np.pad(feat, ((context // 2, context // 2), (0, 0)), mode="edge")
    ctx = np.stack([pad[i:i + len(feat)] for i in range(context)]).mean(0)
    return np.concatenate([feat, ctx], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data/synthetic")
    ap.add_argument("--n-mels", type=int, default=96)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--hop-ms", type=float, default=20.0)
    ap.add_argument("--target", choices=("truth", "mean"), default="truth")
    ap.add_argument("--ridge", type=float, default=10.0)
    ap.add_argument("--cache", default="data/cache")
    args = ap.parse_args()

    ds = load_dataset("synthetic", args.root)
    truth, _ = load_truth(args.root)
    cfg = MelConfig(sample_rate=args.sample_rate, n_mels=args.n_mels, hop_ms=args.hop_ms)
    cache = FeatureCache(args.cache)
    test = set(ds.test_ids)
    X, Y, is_test = [], [], []
    for sid, song in ds.songs.items():
        x = slice_features(song_features(song, cfg, cache)["mel"])
        curve = truth[sid] if args.target == "truth" else song.curves[MEAN]
        X.append(x)
        Y.append(np.stack([curve.arousal, curve.valence], 1)[:len(x)])
        is_test.append(sid in test)
    Xtr = np.concatenate([x for x, t in zip(X, is_test) if not t])
    Ytr = np.concatenate([y for y, t in zip(Y, is_test) if not t])
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    A = np.c_[(Xtr - mu) / sd, np.ones(len(Xtr))]
    W = np.linalg.solve(A.T @ A + args.ridge * np.eye(A.shape[1]), A.T @ Ytr)
    scores = []
    for x, y, t in zip(X, Y, is_test):
        if t:
            p = np.c_[(x - mu) / sd, np.ones(len(x))] @ W
            scores.append([ccc(p[:, d], y[:, d]) for d in range(2)])
    a, v = np.mean(scores, 0)
    print(f"{args.n_mels} mel bands, target {args.target}: test-song CCC arousal {a:.3f}, valence {v:.3f} "
          f"({len(scores)} songs)")


if __name__ == "__main__":
    main()
