"""The two offline pretrained music CNNs whose weights ship inside PyPI wheels, ported to torch.

- vibenet 0.1.0 (GPL-3.0-or-later weights): an EfficientNet-B0 distilled on FMA to predict valence, energy
  and other attributes. Its wheel holds ``vibenet/artifacts/efficientnet_model.onnx``; ``read_onnx_initializers``
  reads the weights (torchvision's names under ``backbone.``) with a small protobuf walk.
- musicnn 0.1.0 (ISC): Pons & Serra's musically motivated tagging CNNs (MagnaTagATune / Million Song Dataset).
  Its wheel holds TensorFlow-1 checkpoints (``musicnn/<MODEL>/.index`` + ``.data-00000-of-00001``);
  ``read_tf_checkpoint`` reads that tensor bundle (a LevelDB table of BundleEntryProto) without TensorFlow.

Both ports were checked against the originals (onnxruntime; TensorFlow 2.21 with legacy Keras running
musicnn's own graph code) to float precision: see docs/encoders.md. Neither package's code is imported.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsaml_utils.errors import UserError


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


MUSICNN_MODELS = ("MSD_musicnn", "MTT_musicnn")


MUSICNN_FRAMES = 187  # 3 s patches: 1 + 3 * 16000 // 256 frames


MUSICNN_MELS = 96


def musicnn_patches(wave: np.ndarray) -> np.ndarray:
    """musicnn's input: [P, 187, 96] non-overlapping 3 s patches of log10(1 + 10000 * mel power), 16 kHz.

    512-point periodic Hann frames every 256 samples, centred with zero padding (librosa >= 0.10's default,
    what musicnn's extractor computes today). Computed in float32: the extractor casts the power to float16
    first, where 10000 * power overflows to inf on loud bins. A remainder shorter than a patch is dropped;
    audio shorter than one patch is repeated to fill it (training's "repeat-pad").
    """
    n_fft, hop = 512, 256
    y = np.pad(np.asarray(wave, dtype=np.float32), (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    spec = np.fft.rfft(frames * window, axis=-1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32) @ slaney_mel_filterbank(16000, n_fft, MUSICNN_MELS, 0.0, 8000.0).T
    mel = np.log10(10000.0 * power + 1.0).astype(np.float32)
    if len(mel) < MUSICNN_FRAMES:
        mel = np.tile(mel, (-(-MUSICNN_FRAMES // len(mel)), 1))
    n = len(mel) // MUSICNN_FRAMES
    return np.ascontiguousarray(mel[: n * MUSICNN_FRAMES].reshape(n, MUSICNN_FRAMES, MUSICNN_MELS))


def _bn(n: int, dims: int = 1) -> nn.Module:
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(n, eps=1e-3)  # tf.layers' epsilon


class Musicnn(nn.Module):
    """musicnn (num_filt 1.6, mid-end 64, back-end 200): patches [P, 187, 96] -> (pool [P, 1506], penultimate [P, 200], logits [P, 50]).

    Front end: input BatchNorm; "timbral" convs 7 x 38 and 7 x 67 over (time, mel) with 204 filters each,
    "temporal" convs 128, 64, 32 x 1 with 51 filters each ('same' time padding), each ReLU -> BatchNorm ->
    max over mel. Mid end: three 1-D convs (7 taps, 64 filters, ReLU -> BatchNorm), the last two residual.
    Back end: max and mean over time of all 753 channels (interleaved per channel, as TensorFlow flattens
    them), BatchNorm, Dense 200 + ReLU, BatchNorm (the penultimate features), Dense 50 (tag logits).
    """

    def __init__(self, n_tags: int = 50) -> None:
        super().__init__()
        self.input_bn = _bn(1, 2)
        self.timbral = nn.ModuleList([nn.Conv2d(1, 204, (7, h)) for h in (38, 67)])  # int(0.4 * 96), int(0.7 * 96)
        self.timbral_bn = nn.ModuleList([_bn(204, 2) for _ in range(2)])
        self.temporal = nn.ModuleList([nn.Conv2d(1, 51, (k, 1)) for k in (128, 64, 32)])
        self.temporal_bn = nn.ModuleList([_bn(51, 2) for _ in range(3)])
        self.mid = nn.ModuleList([nn.Conv1d(561, 64, 7), nn.Conv1d(64, 64, 7), nn.Conv1d(64, 64, 7)])
        self.mid_bn = nn.ModuleList([_bn(64) for _ in range(3)])
        self.pool_bn = _bn(1506)
        self.dense = nn.Linear(1506, 200)
        self.dense_bn = _bn(200)
        self.out = nn.Linear(200, n_tags)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.input_bn(x[:, None])  # [P, 1, time, mel]
        relu = nn.functional.relu
        front = []
        for conv, bn in zip(self.timbral, self.timbral_bn):  # 'valid' on input padded by 3 frames each side
            front.append(bn(relu(conv(nn.functional.pad(x, (0, 0, 3, 3))))).amax(dim=3))
        for conv, bn in zip(self.temporal, self.temporal_bn):  # TensorFlow 'same': the extra frame goes after
            k = conv.kernel_size[0]
            front.append(bn(relu(conv(nn.functional.pad(x, (0, 0, (k - 1) // 2, k // 2))))).amax(dim=3))
        h = torch.cat(front, dim=1)  # [P, 561, time]
        feats = [h]
        for i, (conv, bn) in enumerate(zip(self.mid, self.mid_bn)):
            y = bn(relu(conv(nn.functional.pad(feats[-1], (3, 3)))))
            feats.append(y if i == 0 else y + feats[-1])
        mid = torch.cat(feats, dim=1)  # [P, 753, time]
        pool = torch.stack([mid.amax(dim=2), mid.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_bn(relu(self.dense(self.pool_bn(pool))))
        return pool, penultimate, self.out(penultimate)


def _sstable_block(buf: memoryview, offset: int, size: int):
    """(key, value) entries of one LevelDB table block (uncompressed)."""
    if buf[offset + size] != 0:
        raise ValueError("compressed table blocks are not supported")
    block = buf[offset:offset + size]
    n_restarts = struct.unpack("<I", block[-4:])[0]
    end, i, key = len(block) - 4 - 4 * n_restarts, 0, b""
    while i < end:
        shared, i = _varint(block, i)
        unshared, i = _varint(block, i)
        n, i = _varint(block, i)
        key = key[:shared] + bytes(block[i:i + unshared])
        i += unshared
        yield key, block[i:i + n]
        i += n


_TF_FLOAT = 1


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """The float32 variables of a single-shard TensorFlow checkpoint `prefix` (.index + .data-00000-of-00001)."""
    index, data = Path(f"{prefix}.index"), Path(f"{prefix}.data-00000-of-00001")
    try:
        buf = memoryview(index.read_bytes())
        if len(buf) < 48 or struct.unpack("<Q", buf[-8:])[0] != 0xDB4775248B80FB57:
            raise ValueError("not a LevelDB table (bad magic number)")
        _, j = _varint(buf[-48:], 0)  # footer: metaindex handle, then index handle
        _, j = _varint(buf[-48:], j)
        idx_off, j = _varint(buf[-48:], j)
        idx_size, _ = _varint(buf[-48:], j)
        blob = data.read_bytes()
        out = {}
        for _, handle in _sstable_block(buf, idx_off, idx_size):
            off, k = _varint(handle, 0)
            size, _ = _varint(handle, k)
            for key, entry in _sstable_block(buf, off, size):
                if not key:  # the bundle header
                    continue
                dtype, dims, shard, start, n = 0, [], 0, 0, 0
                for f, v in _fields(entry):
                    if f == 1:
                        dtype = v
                    elif f == 2:  # TensorShapeProto: repeated Dim {int64 size = 1}
                        dims = [next((x for g, x in _fields(d) if g == 1), 0) for h, d in _fields(v) if h == 2]
                    elif f == 3:
                        shard = v
                    elif f == 4:
                        start = v
                    elif f == 5:
                        n = v
                if dtype != _TF_FLOAT:
                    continue
                if shard != 0:
                    raise ValueError(f"variable {key.decode()!r} lives in another shard")
                out[key.decode()] = np.frombuffer(blob, dtype="<f4", count=n // 4, offset=start).reshape(dims).copy()
        return out
    except (OSError, ValueError, IndexError, struct.error) as exc:
        raise UserError(f"{index}: not a readable TensorFlow checkpoint ({exc})") from exc


def musicnn_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """TensorFlow variable names of a musicnn checkpoint (tf.layers' creation order) -> Musicnn's state dict."""
    layers = [("batch_normalization", "input_bn"), ("conv2d", "timbral.0"), ("batch_normalization_1", "timbral_bn.0"),
              ("conv2d_1", "timbral.1"), ("batch_normalization_2", "timbral_bn.1")]
    layers += [(f"conv2d_{2 + i}", f"temporal.{i}") for i in range(3)]
    layers += [(f"batch_normalization_{3 + i}", f"temporal_bn.{i}") for i in range(3)]
    layers += [(f"conv2d_{5 + i}", f"mid.{i}") for i in range(3)]
    layers += [(f"batch_normalization_{6 + i}", f"mid_bn.{i}") for i in range(3)]
    layers += [("batch_normalization_9", "pool_bn"), ("dense", "dense"), ("batch_normalization_10", "dense_bn"),
               ("dense_1", "out")]
    renames = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var",
               "bias": "bias", "kernel": "weight"}
    state = {}
    for tf_name, name in layers:
        for tf_var, var in renames.items():
            key = f"{tf_name}/{tf_var}"
            if key not in variables:
                continue
            t = torch.from_numpy(variables[key])
            if tf_var == "kernel":  # HWIO conv kernels -> OIHW (or OIW for the 1-D mid-end); [in, out] -> [out, in]
                t = t.T if t.ndim == 2 else t.permute(3, 2, 0, 1)
                if name.startswith("mid."):
                    t = t[:, 0].permute(0, 2, 1).contiguous()  # [out, 1, 7, C] -> [out, C, 7]
            state[f"{name}.{var}"] = t.contiguous()
    return state


def load_musicnn(prefix: str | Path) -> Musicnn:
    """Musicnn with the weights of the TensorFlow checkpoint `prefix` (eval mode)."""
    variables = read_tf_checkpoint(prefix)
    model = Musicnn(n_tags=variables["dense_1/bias"].shape[0] if "dense_1/bias" in variables else 50)
    state = musicnn_state_dict(variables)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or wrong:
        raise UserError(f"{prefix}.index: not a musicnn checkpoint: missing {missing[:3]} wrong shapes {wrong[:3]}")
    model.load_state_dict(state, strict=False)  # num_batches_tracked is not in TensorFlow checkpoints
    return model.eval()
