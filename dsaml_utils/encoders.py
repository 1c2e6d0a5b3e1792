"""Global audio encoders: one frozen pretrained embedding z_g per song excerpt, broadcast over time by the model.

Encoders (``get_encoder(name)``):

- ``imagebind``: ImageBind-huge's audio branch (the paper's choice, 1024-d), ``dsaml_utils.imagebind``;
  needs the user's local ``imagebind_huge.pth`` (non-commercial licence).
- ``vibenet``: the EfficientNet-B0 of the PyPI package ``vibenet`` 0.1.0 (distilled on FMA to predict
  valence, energy, ...), 1280-d pooled features. Its weights ship in the wheel as an ONNX file, which this
  module reads itself into its own torch EfficientNet-B0: neither onnxruntime nor vibenet's code is used.
  GPL-3.0-or-later weights, an optional install (``pip install --no-deps vibenet==0.1.0``).
- ``none``: no global feature (dim 0); the model then runs on its local features alone.

Excerpt rule (the same for training and ``dsaml embed``): a song is embedded over its labelled span,
``[t_0, t_last + 0.5)`` of its mean curve (``song_excerpt``) -- 15-45 s for a DEAM 45 s clip, the annotated
part for a full song or a PMEmo chorus. ``dsaml embed`` uses 15 s + 30 s by default (a DEAM clip's span),
``--start/--duration`` to change it, ``--whole`` for the whole file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dsaml_utils import imagebind
from dsaml_utils.audio import audio_digest, load_audio
from dsaml_utils.data import HOP_SECONDS, MEAN, MusicDataset, Song
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features import FeatureCache, imagebind_clips

ENCODERS = ("imagebind", "vibenet", "none")
EMBED_VERSION = 1
"""Bumped whenever an encoder changes what it computes, so old cache entries stop matching."""

VIBENET_ENV = "DSAML_VIBENET_ONNX"
VIBENET_INSTALL = (
    "install its weights with `pip install --no-deps vibenet==0.1.0` (an 18 MB wheel holding the ONNX file; "
    "GPL-3.0-or-later) or `pip install 'dsaml-utils[vibenet]'` (also pulls vibenet's own runtime, ~350 MB, "
    f"unused here), or set {VIBENET_ENV}=path/to/efficientnet_model.onnx, or choose --encoder none|imagebind"
)


def file_identity(path: str | Path) -> str:
    """A cheap content fingerprint of a (large) weights file: sha256 of its size, first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:24]


class GlobalEncoder:
    """A frozen song-level encoder: `embed(wave)` maps a mono waveform at `sample_rate` to a [dim] vector."""

    name: str = "none"
    dim: int = 0
    sample_rate: int = 16000
    identity: str = ""  # fingerprint of the weights, part of every cache key

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """[dim] float32 embedding of a mono waveform at self.sample_rate."""
        return np.zeros(0, dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, sample_rate={self.sample_rate})"


class NoEncoder(GlobalEncoder):
    """No global feature: embeds every song as an empty vector."""


class ImageBindEncoder(GlobalEncoder):
    """ImageBind-huge audio: 3 clips of 2 s at 16 kHz -> mean of scaled unit-norm 1024-d embeddings."""

    name = "imagebind"

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        self.model = imagebind.load_imagebind_audio(checkpoint).to(device)
        self.device = device
        self.dim = self.model.cfg.out_dim
        self.identity = file_identity(checkpoint)

    def embed(self, wave: np.ndarray) -> np.ndarray:
        clips = imagebind_clips(wave, target_frames=self.model.cfg.target_frames, num_mel_bins=self.model.cfg.n_mels)
        with torch.inference_mode():
            return self.model(clips[None].to(self.device))[0].float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# vibenet: log-mel front end, EfficientNet-B0, and a reader for the weights in its ONNX file


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] Slaney-scale, Slaney-normalised triangular filters (librosa's default)."""
    f_max = sr / 2 if f_max is None else f_max

    # Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above.
    def to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0))

    def to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)))

    edges = to_hz(np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2))
    bins = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    rise = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    fall = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(rise, fall))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)  # equal area per filter


def vibenet_mel(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """vibenet's input: [128, frames] power mel in dB, 40 ms Hann window, 20 ms hop, no centring, top 80 dB."""
    win, hop, n_fft = 640, 320, 1024
    y = np.asarray(wave, dtype=np.float32)
    if len(y) < win:
        y = np.pad(y, (0, win - len(y)))
    frames = np.lib.stride_tricks.sliding_window_view(y, win)[::hop]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)  # periodic Hann
    spec = np.fft.rfft(frames * window, n=n_fft, axis=-1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = slaney_mel_filterbank(sr, n_fft, 128, 0.0, 8000.0) @ power.T
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(db, db.max() - 80.0).astype(np.float32)


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> SiLU (optional), the unit EfficientNet is built from."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.silu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))
        return x * torch.sigmoid(self.fc2(s))


class MBConv(nn.Module):
    """Inverted residual: (expand 1x1) -> depthwise kxk -> squeeze-excite -> project 1x1 (+ skip)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = [_conv_bn(cin, mid)] if expand != 1 else []
        layers += [_conv_bn(mid, mid, k, stride, groups=mid), SqueezeExcite(mid, max(1, cin // 4)),
                   _conv_bn(mid, cout, act=False)]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.skip else self.block(x)


# EfficientNet-B0 stages: (expand ratio, kernel, stride, in channels, out channels, blocks).
B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 features (torchvision's key layout) on a mel image: [B, 128, T] -> pooled [B, 1280]."""

    def __init__(self) -> None:
        super().__init__()
        stages = [_conv_bn(3, 32, 3, 2)]
        for expand, k, stride, cin, cout, n in B0_STAGES:
            stages.append(nn.Sequential(*[MBConv(cin if i == 0 else cout, cout, expand, k, stride if i == 0 else 1)
                                          for i in range(n)]))
        stages.append(_conv_bn(320, 1280))
        self.features = nn.Sequential(*stages)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.unsqueeze(1).expand(-1, 3, -1, -1)  # vibenet feeds the mel image as 3 identical channels
        return self.features(x).mean(dim=(2, 3))


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, value) of each field of a protobuf message; length-delimited values are memoryviews."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        kind = tag & 7
        if kind == 0:
            value, i = _varint(buf, i)
        elif kind == 1:
            value, i = buf[i:i + 8], i + 8
        elif kind == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif kind == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
        yield tag >> 3, value


def _packed_varints(buf: memoryview) -> list[int]:
    out, i = [], 0
    while i < len(buf):
        v, i = _varint(buf, i)
        out.append(v)
    return out


_ONNX_FLOAT, _ONNX_INT64 = 1, 7


def read_onnx_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """The float32 and int64 initializer tensors (weights) of an ONNX model file, by name.

    A minimal protobuf walk over ModelProto.graph (field 7) -> GraphProto.initializer (field 5) ->
    TensorProto {dims 1, data_type 2, float_data 4, int64_data 7, name 8, raw_data 9}.
    """
    path = Path(path)
    try:
        buf = memoryview(path.read_bytes())
        graph = next((v for f, v in _fields(buf) if f == 7), None)
        if graph is None:
            raise ValueError("no graph")
        out = {}
        for field, tensor in _fields(graph):
            if field != 5:
                continue
            dims, dtype, name, raw, floats, ints = [], 0, "", None, [], []
            for f, v in _fields(tensor):
                if f == 1:
                    dims += _packed_varints(v) if isinstance(v, memoryview) else [v]
                elif f == 2:
                    dtype = v
                elif f == 8:
                    name = bytes(v).decode()
                elif f == 9:
                    raw = v
                elif f == 4:
                    floats.append(np.frombuffer(v, dtype="<f4"))
                elif f == 7:
                    ints += _packed_varints(v) if isinstance(v, memoryview) else [v]
                elif f == 14 and v == 1:
                    raise ValueError(f"tensor {name!r} keeps its data in an external file")
            if dtype == _ONNX_FLOAT:
                arr = np.frombuffer(raw, dtype="<f4") if raw is not None else np.concatenate(floats or [np.zeros(0, "<f4")])
            elif dtype == _ONNX_INT64:
                arr = np.frombuffer(raw, dtype="<i8") if raw is not None else np.array(ints, dtype=np.int64)
            else:
                continue
            out[name] = arr.reshape(dims).astype(arr.dtype.newbyteorder("="), copy=True)
        return out
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable ONNX model ({exc})") from exc


def load_vibenet_backbone(onnx_path: str | Path) -> EfficientNetB0:
    """EfficientNet-B0 with the weights named backbone.* in vibenet's ONNX file (eval mode)."""
    weights = read_onnx_initializers(onnx_path)
    model = EfficientNetB0()
    state = model.state_dict()
    missing, wrong = [], []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        src = weights.get("backbone." + key)
        if src is None:
            missing.append(key)
        elif tuple(src.shape) != tuple(value.shape):
            wrong.append(f"{key} {list(src.shape)} != {list(value.shape)}")
        else:
            state[key] = torch.from_numpy(src)
    if missing or wrong:
        raise UserError(f"{onnx_path}: not vibenet's EfficientNet-B0: missing {missing[:3]} wrong shapes {wrong[:3]}")
    model.load_state_dict(state)
    return model.eval()


def find_vibenet_onnx(path: str | Path | None = None) -> Path:
    """vibenet's ONNX file: the given path, then $DSAML_VIBENET_ONNX, then the installed vibenet package."""
    if path or os.environ.get(VIBENET_ENV):
        p = Path(path or os.environ[VIBENET_ENV])
        if not p.is_file():
            raise UserError(f"{p}: vibenet ONNX file not found; {VIBENET_INSTALL}")
        return p
    spec = importlib.util.find_spec("vibenet")  # locates the package without running its code
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "artifacts" / "efficientnet_model.onnx"
        if p.is_file():
            return p
    raise UserError(f"the vibenet encoder's weights are not installed: {VIBENET_INSTALL}")


class VibeNetEncoder(GlobalEncoder):
    """vibenet's EfficientNet-B0 (FMA-distilled music attributes): 16 kHz log-mel -> pooled 1280-d features."""

    name = "vibenet"
    dim = 1280

    def __init__(self, onnx_path: str | Path | None = None, device: str = "cpu") -> None:
        path = find_vibenet_onnx(onnx_path)
        # channels_last roughly halves CPU time for the depthwise convolutions (same numbers).
        self.model = load_vibenet_backbone(path).to(device, memory_format=torch.channels_last)
        self.device = device
        self.identity = file_identity(path)

    def embed(self, wave: np.ndarray) -> np.ndarray:
        mel = torch.from_numpy(vibenet_mel(wave, self.sample_rate))[None].to(self.device)
        with torch.inference_mode():
            return self.model(mel)[0].float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Choosing an encoder, embedding songs


def default_encoder_name(checkpoint: str | Path | None = None) -> str:
    """imagebind when an ImageBind checkpoint is configured (argument, env var, data/checkpoints/), else vibenet."""
    return "imagebind" if imagebind.find_checkpoint(checkpoint) is not None else "vibenet"


def get_encoder(name: str, checkpoint: str | Path | None = None, device: str = "cpu") -> GlobalEncoder:
    """The encoder called `name`; `checkpoint` is ImageBind's .pth or vibenet's .onnx (found when omitted)."""
    if name == "none":
        return NoEncoder()
    if name == "imagebind":
        path = imagebind.find_checkpoint(checkpoint)
        if path is None:
            raise UserError(f"no ImageBind checkpoint configured. {imagebind.how_to_get_checkpoint()}")
        return ImageBindEncoder(path, device)
    if name == "vibenet":
        return VibeNetEncoder(checkpoint, device)
    raise UserError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


def song_excerpt(song: Song) -> tuple[float | None, float | None]:
    """(start, duration) in seconds of the song's labelled span; (None, None) = whole file when unlabelled."""
    curve = song.curves.get(MEAN) or next(iter(song.curves.values()), None)
    if curve is None or len(curve) == 0:
        return None, None
    start = float(curve.times[0])
    return start, float(curve.times[-1]) + HOP_SECONDS - start


def embed_song(encoder: GlobalEncoder, audio_path: str | Path, cache: FeatureCache | None,
               start: float | None = None, duration: float | None = None) -> np.ndarray:
    """[encoder.dim] embedding of audio [start, start + duration) s (None: file start / to the end), cached."""
    if encoder.dim == 0:
        return np.zeros(0, dtype=np.float32)
    audio_path = Path(audio_path)

    def compute() -> np.ndarray:
        wave, sr = load_audio(audio_path, encoder.sample_rate)
        a = int(round((start or 0.0) * sr))
        if a >= len(wave):
            raise DataError(f"{audio_path}: excerpt starts at {start} s but the audio lasts {len(wave) / sr:.2f} s")
        b = len(wave) if duration is None else min(len(wave), a + int(round(duration * sr)))
        return np.asarray(encoder.embed(wave[a:b]), dtype=np.float32)

    if cache is None:
        return compute()
    key = {"audio": audio_digest(audio_path), "encoder": encoder.name, "weights": encoder.identity,
           "sample_rate": encoder.sample_rate, "start": start, "duration": duration, "version": EMBED_VERSION}
    return cache.get_or_compute("global", key, compute)


def dataset_embeddings(encoder: GlobalEncoder, ds: MusicDataset, song_ids: list[str],
                       cache: FeatureCache | None) -> dict[str, np.ndarray]:
    """song id -> embedding of its labelled span (song_excerpt); songs whose audio fails go to ds.problems."""
    out = {}
    for sid in tqdm(song_ids, desc=f"embed ({encoder.name})", unit="song", disable=encoder.dim == 0):
        song = ds.songs[sid]
        try:
            if song.audio_path is None:
                raise DataError(f"song {sid}: no audio file")
            out[sid] = embed_song(encoder, song.audio_path, cache, *song_excerpt(song))
        except DataError as exc:
            ds.problems.append(f"global embedding skipped for song {sid}: {exc}")
    return out


# ---------------------------------------------------------------------------------------------------
# CLI


def register_cli(sub) -> None:
    """Add `dsaml embed` (and `dsaml export-imagebind-audio`)."""
    p = sub.add_parser("embed", help="one global embedding per audio file, as training computes it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("--out", required=True, help="output .npy, shape [N, dim]")
    p.add_argument("--encoder", choices=ENCODERS, default=None,
                   help="default: imagebind when a checkpoint is configured, else vibenet")
    p.add_argument("--checkpoint", default=None, help=f"imagebind .pth (or ${imagebind.CHECKPOINT_ENV}) / vibenet .onnx")
    p.add_argument("--start", type=float, default=15.0, help="excerpt start, s (DEAM clips: labels start at 15 s)")
    p.add_argument("--duration", type=float, default=30.0, help="excerpt length, s")
    p.add_argument("--whole", action="store_true", help="embed whole files (ignores --start/--duration)")
    p.add_argument("--cache", default="data/cache", help="feature cache directory")
    p.add_argument("--no-cache", action="store_true", help="compute without reading or writing the cache")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cli_embed)
    imagebind.register_cli(sub)


def _cli_embed(args) -> int:
    name = args.encoder or default_encoder_name(args.checkpoint)
    encoder = get_encoder(name, args.checkpoint, args.device)
    cache = None if args.no_cache else FeatureCache(args.cache)
    start, duration = (None, None) if args.whole else (args.start, args.duration)
    vectors = [embed_song(encoder, p, cache, start, duration)
               for p in tqdm(args.audio, desc=f"embed ({name})", unit="file")]
    out = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, encoder.dim), np.float32)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, out)
    print(f"wrote {out.shape[0]} x {out.shape[1]} {name} embeddings to {args.out}")
    return 0
