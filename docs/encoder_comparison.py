"""Compare global encoders on a synthetic dataset: time per 30 s excerpt, and how well a song's embedding
predicts its mean arousal / valence (ridge regression, 5-fold cross-validated R^2).

    dsaml synth --out /tmp/synth --seed 0
    python docs/encoder_comparison.py --root /tmp/synth [--encoders vibenet mel-stats imagebind-random]
    python docs/encoder_comparison.py --onnxruntime     # port vs vibenet's ONNX graph (pip install onnx onnxruntime)
    TF_USE_LEGACY_KERAS=1 python docs/encoder_comparison.py --tensorflow   # port vs musicnn's TF graph

"mel-stats" (mean and std over time of a 128-band log-mel, no pretraining) is the floor a pretrained
encoder has to beat; "imagebind-random" is the ImageBind architecture with random weights (timing only:
without the real checkpoint its R^2 says nothing about ImageBind). Numbers go to docs/encoders.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.data.types import MEAN
from dsaml_utils.encoders.imagebind import ImageBindAudio
from dsaml_utils.encoders.registry import (
    GlobalEncoder,
    ImageBindEncoder,
    MusicnnEncoder,
    dataset_embeddings,
    get_encoder,
    song_excerpt,
)
from dsaml_utils.features.cache import FeatureCache


class MelStats(GlobalEncoder):
    """Mean and std over time of a 16 kHz, 128-band log-mel (25 ms / 10 ms): a no-pretraining baseline."""

    name, dim, identity = "mel-stats", 256, "mel-stats-v1"

    def embed(self, wave):
        from dsaml_utils.features.kaldi import kaldi_fbank

        fb = kaldi_fbank(torch.from_numpy(wave)).numpy()
        return np.concatenate([fb.mean(0), fb.std(0)]).astype(np.float32)


class RandomImageBind(ImageBindEncoder):
    """Full-size ImageBind audio architecture with random weights (for timing)."""

    def __init__(self):
        torch.manual_seed(0)
        self.model, self.device, self.dim, self.identity = ImageBindAudio().eval(), "cpu", 1024, "random-seed0"
        self.name = "imagebind-random"


def musicnn_variant(model: str, feature: str):
    """A musicnn encoder other than the default (MSD, pooled), named for the table and the cache."""
    def make() -> GlobalEncoder:
        enc = MusicnnEncoder(model=model, feature=feature)
        enc.name = f"musicnn-{model.split('_')[0]}-{feature}"
        return enc
    return make


VARIANTS = {"mel-stats": MelStats, "imagebind-random": RandomImageBind,
            "musicnn-MSD-penultimate": musicnn_variant("MSD_musicnn", "penultimate"),
            "musicnn-MTT-pool": musicnn_variant("MTT_musicnn", "pool"),
            "musicnn-MTT-penultimate": musicnn_variant("MTT_musicnn", "penultimate")}


def make(name: str) -> GlobalEncoder:
    return VARIANTS.get(name, lambda: get_encoder(name))()


def ridge_cv_r2(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Outer k-fold R^2 per target column; alpha picked inside each training fold by leave-one-out error."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    pred = np.zeros_like(y)
    alphas = 10.0 ** np.arange(-3, 5)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
        xt, ym = (x[train] - mu) / sd, y[train].mean(0)
        u, s, vt = np.linalg.svd(xt, full_matrices=False)
        best = None
        for a in alphas:  # closed-form leave-one-out residuals of ridge via the hat matrix diagonal
            shrink = s**2 / (s**2 + a)
            fitted = u @ (shrink[:, None] * (u.T @ (y[train] - ym)))
            h = (u**2 * shrink).sum(1) + 1.0 / len(train)
            loo = ((y[train] - ym - fitted) / (1 - h)[:, None]) ** 2
            if best is None or loo.mean() < best[0]:
                best = (loo.mean(), a)
        a = best[1]
        coef = vt.T @ ((s / (s**2 + a))[:, None] * (u.T @ (y[train] - ym)))
        pred[test] = ((x[test] - mu) / sd) @ coef + ym
    return 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def stack(emb: dict[str, np.ndarray], ids: list[str]) -> np.ndarray:
    """[N, dim] float64 in the order of ids (every id must have an embedding)."""
    return np.stack([emb[s] for s in ids]).astype(np.float64)


def seconds_per_excerpt(enc: GlobalEncoder, repeats: int = 3) -> float:
    """Median wall time of embed() on a 30 s excerpt at the encoder's rate, after one warm-up call."""
    wave = np.random.default_rng(0).standard_normal(30 * enc.sample_rate).astype(np.float32) * 0.1
    enc.embed(wave)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        enc.embed(wave)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def check_against_onnxruntime(repeats: int = 5) -> None:
    """Our torch port vs vibenet's own ONNX graph run by onnxruntime (needs `pip install onnx onnxruntime`)."""
    import onnx
    import onnxruntime as ort

    from dsaml_utils.encoders.registry import find_vibenet_onnx
    from dsaml_utils.encoders.taggers import load_vibenet_backbone, vibenet_mel

    path = find_vibenet_onnx()
    graph = onnx.load(str(path))
    pooled = [n for n in graph.graph.node if n.op_type == "ReduceMean"][-1].output[0]  # the global pool
    graph.graph.output.append(onnx.helper.make_tensor_value_info(pooled, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    wave = np.random.default_rng(0).standard_normal(30 * 16000).astype(np.float32) * 0.1
    mel = vibenet_mel(wave)
    model = load_vibenet_backbone(path)
    fast = load_vibenet_backbone(path).to(memory_format=torch.channels_last)

    def run_ort():
        return sess.run(None, {"x": mel[None]})[1].reshape(-1)

    def run(m):
        with torch.inference_mode():
            return m(torch.from_numpy(mel)[None])[0].numpy()

    ref = run_ort()
    print(f"pooled features, max |ours - onnxruntime|: {np.abs(run(model) - ref).max():.2e} (max |ref| {np.abs(ref).max():.2f})")
    times = {}
    for name, f in [("onnxruntime", run_ort), ("torch", lambda: run(model)), ("torch channels_last", lambda: run(fast))]:
        f()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        times[name] = float(np.median(ts))
    for name, t in times.items():
        print(f"{name:20s} {t * 1000:7.0f} ms per 30 s mel  x{t / times['onnxruntime']:.2f} onnxruntime")


def check_musicnn_against_tensorflow() -> None:
    """Our musicnn port vs musicnn's own TF1 graph code (needs tensorflow-cpu and tf-keras; TF_USE_LEGACY_KERAS=1)."""
    import tensorflow as tf
    from dsaml_utils.encoders.taggers import load_musicnn, musicnn_patches
    from musicnn import models  # the wheel's graph definition, which imports TensorFlow

    from dsaml_utils.encoders.registry import find_musicnn_checkpoint

    tf.compat.v1.disable_eager_execution()
    t = np.arange(16000 * 10) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t))
            + 0.05 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    batch = musicnn_patches(wave)
    for which in ("MSD_musicnn", "MTT_musicnn"):
        folder = find_musicnn_checkpoint(model=which)
        with tf.Graph().as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
            out = models.define_model(x, tf.constant(False), which, 50)
            sess = tf.compat.v1.Session()
            tf.compat.v1.train.Saver().restore(sess, f"{folder}/")
            logits, mean_pool, max_pool, pen = sess.run([out[0], out[6], out[7], out[8]], {x: batch})
        with torch.inference_mode():
            pool, ours_pen, ours_logits = load_musicnn(f"{folder}/")(torch.from_numpy(batch))
        ref_pool = np.stack([max_pool, mean_pool], 2).reshape(len(batch), -1)
        for name, a, b in [("pool", pool, ref_pool), ("penultimate", ours_pen, pen), ("logits", ours_logits, logits)]:
            print(f"{which} {name:12s} max |ours - TF| {np.abs(a.numpy() - b).max():.1e}  (max |TF| {np.abs(b).max():.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="a dataset written by `dsaml synth`")
    ap.add_argument("--onnxruntime", action="store_true", help="only check the vibenet port against onnxruntime")
    ap.add_argument("--tensorflow", action="store_true", help="only check the musicnn port against TensorFlow")
    ap.add_argument("--encoders", nargs="+", default=["musicnn", "vibenet", "mel-stats", "imagebind-random"])
    ap.add_argument("--cache", default=None, help="feature cache directory (default: none)")
    args = ap.parse_args()
    if args.onnxruntime:
        return check_against_onnxruntime()
    if args.tensorflow:
        return check_musicnn_against_tensorflow()
    if not args.root:
        ap.error("--root is required")
    cache = FeatureCache(args.cache) if args.cache else None
    ds = load_dataset("synthetic", args.root)
    ids = [s for s in ds.train_ids if ds.songs[s].audio_path is not None and MEAN in ds.songs[s].curves]
    y = np.array([ds.songs[s].curves[MEAN].values().mean(0) for s in ids])  # (arousal, valence) means
    print(f"{len(ids)} clips; excerpt of the first: {song_excerpt(ds.songs[ids[0]])}; torch threads {torch.get_num_threads()}")
    encs = [make(name) for name in args.encoders]
    secs = [seconds_per_excerpt(enc) for enc in encs]  # timed back to back, so the ratios compare like with like
    print(f"{'encoder':18s} {'dim':>5s} {'s / 30 s':>9s} {'x ' + encs[0].name:>12s} {'R2 arousal':>11s} {'R2 valence':>11s}")
    for enc, sec in zip(encs, secs):
        r2 = (np.full(2, np.nan) if enc.name == "imagebind-random"  # random weights: timing only
              else ridge_cv_r2(stack(dataset_embeddings(enc, ds, ids, cache), ids), y))
        print(f"{enc.name:18s} {enc.dim:5d} {sec:9.3f} {sec / secs[0]:12.2f} {r2[0]:11.3f} {r2[1]:11.3f}", flush=True)


if __name__ == "__main__":
    main()
