"""Baseline DMER models (paper Tables 1-2 and seed 003) and the helpers every model shares.

None of the baselines has public code. Each class below is built from its paper's description; the
docstring lists the facts used and what was assumed. All of them follow the project's forward
interface: ``model(batch) -> {"pred": [B, T, 2], "aux_loss": 0-d tensor}``, with batch keys
``"mel"`` [B, T, F, M], ``"wave"`` [B, T, S], ``"frames"`` [B, T, K] and ``"mask"`` [B, T] (True = a
real step; padding only at the end of a row). Every model is step-level: a per-slice encoder turns
each 0.5 s slice into a vector, a recurrent layer runs over the 2 Hz steps, a linear head gives
(arousal, valence). The recurrent layers (`BiRNN`) read only the real steps and per-slice encoders work
slice by slice, so in eval mode padding never changes a real step's output; in train mode padded
slices enter BatchNorm statistics (equal-length batches are the exact case). No data-dependent shapes
or control flow in forward, so every model also runs under torch.func.vmap (with the meta-learner's
plain-op RNNs, ``meta.vmap_ready``, since nn.LSTM/nn.GRU have no vmap rule).

Waveform baselines read raw slices at 16 kHz (8000 samples per 0.5 s slice): low enough for CPU,
and the rate most raw-audio emotion front ends are run at. The rate is a config field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from dsaml_utils.errors import UserError


# ---------------------------------------------------------------------------------------------
# Shared helpers


class PresetConfig:
    """Mixin for model config dataclasses: ``paper()`` is the full-size default, ``quick()`` a CPU size."""

    QUICK: ClassVar[dict] = {}  # field overrides that make the quick preset

    @classmethod
    def paper(cls, **overrides):
        """The full-size configuration, with optional field overrides."""
        return _make_config(cls, overrides)

    @classmethod
    def quick(cls, **overrides):
        """A small configuration that trains in minutes on 2 CPU cores, with optional overrides."""
        return _make_config(cls, {**cls.QUICK, **overrides})


def _make_config(cls, overrides: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"{cls.__name__} has no field(s) {unknown}; fields are {sorted(names)}")
    return cls(**overrides)


def require(batch: dict, key: str, model: str, hint: str) -> torch.Tensor:
    """``batch[key]``, or a UserError naming the model, the key and the expected shape."""
    if key not in batch or batch[key] is None:
        raise UserError(f"{model} needs batch key '{key}' ({hint}); got keys {sorted(batch)}")
    return batch[key]


def _under_functorch(t: torch.Tensor) -> bool:
    """True for a tensor wrapped by torch.func (vmap, grad): under vmap its values cannot steer control flow."""
    return bool(getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda _: False)(t))


def step_mask(batch: dict, B: int, T: int, device: torch.device) -> torch.Tensor:
    """The batch's [B, T] step mask (all True when absent), checked to be a non-empty prefix per row.

    The value check is skipped under torch.func transforms (the meta-learner's vmap path), where it cannot run.
    """
    mask = batch.get("mask")
    if mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    if mask.shape != (B, T):
        raise UserError(f"batch 'mask' has shape {tuple(mask.shape)}, expected {(B, T)}")
    if not _under_functorch(mask):
        lengths = mask.sum(1)
        prefix = torch.arange(T, device=device)[None, :] < lengths[:, None]
        if bool((lengths == 0).any()) or not bool((mask == prefix).all()):
            raise UserError("batch 'mask' must mark a non-empty prefix of each row (padding only at the end)")
    return mask


def per_step(encoder: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply ``encoder`` to every slice of ``x`` [B, T, ...]; returns [B, T, E] with padded steps zeroed.

    Padded slices go through the encoder too (no data-dependent shapes, so vmap works): in train mode
    they enter BatchNorm statistics, so equal-length batches are the exact case there.
    """
    B, T = x.shape[:2]
    z = encoder(x.reshape(B * T, *x.shape[2:])).reshape(B, T, -1)
    return z * mask[..., None].to(z.dtype)


def reverse_padded(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the real steps of each row of ``x`` [B, T, E], leaving padding in place (an involution)."""
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]
    lengths = mask.sum(1, keepdim=True)
    idx = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


class BiRNN(nn.Module):
    """Bidirectional multi-layer LSTM or GRU that reads only the real steps of padded sequences.

    Same maths as ``nn.LSTM/nn.GRU(bidirectional=True)`` run on packed sequences, but each direction
    is its own unidirectional module and the backward one reads each row reversed within its length,
    so padding never reaches a real step. Plain tensors only: works under functional_call, double
    backward and (with the meta-learner's functional LSTM) vmap.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise UserError(f"BiRNN cell {cell!r}; choose 'lstm' or 'gru'")
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            nn.ModuleDict({"fwd": rnn(input_size if i == 0 else 2 * hidden_size, hidden_size, batch_first=True),
                           "bwd": rnn(input_size if i == 0 else 2 * hidden_size, hidden_size, batch_first=True)})
            for i in range(num_layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, E] -> [B, T, 2 * hidden] (forward then backward direction)."""
        for i, layer in enumerate(self.layers):
            if i:
                x = self.drop(x)
            ahead = layer["fwd"](x)[0]  # causal: padding at the end cannot reach real steps
            back = reverse_padded(layer["bwd"](reverse_padded(x, mask))[0], mask)
            x = torch.cat([ahead, back], -1)
        return x


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_shape(x: torch.Tensor, key: str, model: str, tail: tuple[int, ...]) -> None:
    if x.dim() != 2 + len(tail) or tuple(x.shape[2:]) != tail:
        want = "[B, T, " + ", ".join(map(str, tail)) + "]"
        raise UserError(f"{model}: batch '{key}' has shape {tuple(x.shape)}, expected {want}")


def _conv2d_block(cin: int, cout: int, kernel, padding, pool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(pool))


def _conv1d_block(cin: int, cout: int, kernel: int, stride: int, pool: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2),
                         nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(pool))


def _output(pred: torch.Tensor) -> dict:
    return {"pred": pred, "aux_loss": pred.new_zeros(())}


# ---------------------------------------------------------------------------------------------
# CRNN (Malik et al. 2017)


@dataclass
class CRNNConfig(PresetConfig):
    """Sizes of the CRNN baseline."""

    n_frames: int = 51  # log-mel frames per 0.5 s slice
    n_mels: int = 128  # mel bands
    conv_channels: int = 32  # filters of the single conv layer
    freq_pool: int = 8  # max-pool factor along frequency after the conv
    cell: str = "gru"  # recurrent unit: "gru" (paper) or "lstm"
    rnn_hidden: int = 64  # hidden units per direction of each branch's bidirectional RNN
    rnn_layers: int = 2  # stacked bidirectional layers per branch
    dropout: float = 0.1  # dropout before each branch's output layer

    QUICK: ClassVar[dict] = {"conv_channels": 8, "rnn_hidden": 16, "rnn_layers": 1}


class CRNN(nn.Module):
    """Stacked conv + recurrent network on log-mel (Malik et al. 2017).

    Paper facts used: one CNN layer on log mel-band energies followed by two separate recurrent
    branches, one for arousal and one for valence; GRU units, bidirectional; few parameters.
    Assumed: 3x3 conv + BatchNorm + ReLU, max-pooling along frequency only, the slice's frames
    averaged into one vector per 0.5 s step (the paper's RNN runs on frames; here it runs on the 2 Hz
    steps so that all models share one time base), a linear output per branch (the paper's maxout
    output layer is not reproduced).
    """

    inputs: tuple[str, ...] = ("mel", "mask")

    def __init__(self, cfg: CRNNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CRNNConfig()
        self.conv = nn.Sequential(nn.Conv2d(1, cfg.conv_channels, 3, padding=1), nn.BatchNorm2d(cfg.conv_channels),
                                  nn.ReLU(), nn.MaxPool2d((1, cfg.freq_pool)))
        feat = cfg.conv_channels * (cfg.n_mels // cfg.freq_pool)
        self.branches = nn.ModuleList(
            BiRNN(feat, cfg.rnn_hidden, cfg.rnn_layers, cell=cfg.cell) for _ in range(2))
        self.drop = nn.Dropout(cfg.dropout)
        self.heads = nn.ModuleList(nn.Linear(2 * cfg.rnn_hidden, 1) for _ in range(2))

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """[N, F, M] log-mel slices -> [N, C * M/pool] slice vectors."""
        h = self.conv(mel[:, None])  # [N, C, F, M/pool]
        return h.mean(2).flatten(1)  # average over the slice's frames

    def forward(self, batch: dict) -> dict:
        mel = require(batch, "mel", "crnn", "[B, T, F, M] log-mel per slice")
        _check_shape(mel, "mel", "crnn", (self.cfg.n_frames, self.cfg.n_mels))
        mask = step_mask(batch, *mel.shape[:2], mel.device)
        z = per_step(self.encode, mel, mask)
        outs = [head(self.drop(rnn(z, mask))) for rnn, head in zip(self.branches, self.heads)]
        return _output(torch.cat(outs, -1))


# ---------------------------------------------------------------------------------------------
# DNN (Orjesek et al. 2019)


@dataclass
class DNNConfig(PresetConfig):
    """Sizes of the raw-waveform DNN baseline."""

    sample_rate: int = 16000  # rate of the "wave" slices
    channels: tuple[int, ...] = (32, 64, 128)  # filters of the 1-D conv layers
    first_kernel: int = 64  # first conv kernel (4 ms at 16 kHz) ...
    first_stride: int = 8  # ... and its stride
    kernel: int = 8  # kernel of the later conv layers
    pool: int = 4  # max-pool after each conv layer
    cell: str = "gru"  # recurrent unit: "gru" (paper) or "lstm"
    rnn_hidden: int = 128  # hidden units per direction of the bidirectional RNN
    dropout: float = 0.1  # dropout before the output layer

    QUICK: ClassVar[dict] = {"channels": (8, 16, 32), "rnn_hidden": 32}


class DNN(nn.Module):
    """1-D conv on raw waveform + recurrent layer (Orjesek et al. 2019).

    Paper facts used: features learned directly from the raw waveform, no preprocessing, by
    convolutional layers followed by a (bidirectional GRU) recurrent layer and a dense output.
    Assumed: three Conv1d + BatchNorm + ReLU + max-pool layers per 0.5 s slice, global max-pool to
    one vector per step, one BiGRU over the steps, 16 kHz input.
    """

    inputs: tuple[str, ...] = ("wave", "mask")

    def __init__(self, cfg: DNNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DNNConfig()
        layers, cin = [], 1
        for i, cout in enumerate(cfg.channels):
            k, s = (cfg.first_kernel, cfg.first_stride) if i == 0 else (cfg.kernel, 1)
            layers.append(_conv1d_block(cin, cout, k, s, cfg.pool))
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.rnn = BiRNN(cin, cfg.rnn_hidden, cell=cfg.cell)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.rnn_hidden, 2)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """[N, S] raw slices -> [N, C] slice vectors."""
        return self.conv(wave[:, None]).amax(-1)

    def forward(self, batch: dict) -> dict:
        wave = require(batch, "wave", "dnn", f"[B, T, S] raw slices at {self.cfg.sample_rate} Hz")
        _check_shape(wave, "wave", "dnn", (self.cfg.sample_rate // 2,))
        mask = step_mask(batch, *wave.shape[:2], wave.device)
        h = self.rnn(per_step(self.encode, wave, mask), mask)
        return _output(self.head(self.drop(h)))


# ---------------------------------------------------------------------------------------------
# MCRNN (He & Ferguson 2020)


@dataclass
class MCRNNConfig(PresetConfig):
    """Sizes of the multi-view raw-waveform MCRNN baseline."""

    sample_rate: int = 16000  # rate of the "wave" slices
    views: tuple[tuple[int, int], ...] = ((16, 4), (64, 16), (256, 64))  # (kernel, stride) of each view
    channels: tuple[int, int] = (32, 64)  # filters of each view's two conv layers
    pool: int = 4  # max-pool after each view's first conv layer
    lstm_hidden: int = 128  # BiLSTM hidden units per direction
    dropout: float = 0.1  # dropout before the output layer

    QUICK: ClassVar[dict] = {"channels": (8, 16), "lstm_hidden": 32}


class MCRNN(nn.Module):
    """Multi-view 1-D CNN on raw audio + BiLSTM (He & Ferguson 2020).

    Paper facts used: several CNN "views" of the raw waveform with different kernel sizes (time
    resolutions) learn features automatically, their features are combined and a BiLSTM captures
    temporal context. Assumed: three views (kernels 1, 4 and 16 ms at 16 kHz, stride a quarter of the
    kernel), two conv layers per view, global max-pool, concatenation, one BiLSTM layer. The paper's
    data augmentation belongs to training and is not part of the model.
    """

    inputs: tuple[str, ...] = ("wave", "mask")

    def __init__(self, cfg: MCRNNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MCRNNConfig()
        c1, c2 = cfg.channels
        self.views = nn.ModuleList(
            nn.Sequential(_conv1d_block(1, c1, k, s, cfg.pool), _conv1d_block(c1, c2, 3, 1, 1)) for k, s in cfg.views)
        self.rnn = BiRNN(c2 * len(cfg.views), cfg.lstm_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.lstm_hidden, 2)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """[N, S] raw slices -> [N, views * C] slice vectors."""
        x = wave[:, None]
        return torch.cat([view(x).amax(-1) for view in self.views], -1)

    def forward(self, batch: dict) -> dict:
        wave = require(batch, "wave", "mcrnn", f"[B, T, S] raw slices at {self.cfg.sample_rate} Hz")
        _check_shape(wave, "wave", "mcrnn", (self.cfg.sample_rate // 2,))
        mask = step_mask(batch, *wave.shape[:2], wave.device)
        h = self.rnn(per_step(self.encode, wave, mask), mask)
        return _output(self.head(self.drop(h)))


# ---------------------------------------------------------------------------------------------
# DAMFF (Zhang et al. 2023)


@dataclass
class DAMFFConfig(PresetConfig):
    """Sizes of the DAMFF baseline."""

    n_frames: int = 51  # log-mel frames per 0.5 s slice
    n_mels: int = 128  # mel bands
    branch_channels: int = 8  # filters of each multi-scale branch (temporal, frequency, square)
    reduction: int = 4  # channel-attention bottleneck ratio
    spatial_kernel: int = 7  # spatial-attention conv kernel
    pooled: tuple[int, int] = (4, 8)  # adaptive pool size (time, freq) before the projection
    embed: int = 256  # slice embedding size
    lstm_hidden: int = 128  # BiLSTM hidden units per direction
    dropout: float = 0.1  # dropout before the output layer

    QUICK: ClassVar[dict] = {"branch_channels": 2, "embed": 32, "lstm_hidden": 32}


class DAMFF(nn.Module):
    """Dual-attention multi-scale feature fusion on spectrograms + BiLSTM (Zhang et al. 2023).

    Paper facts used: temporal-frequency multi-scale convolution on the log-mel spectrogram of each
    segment, a dual attention mechanism (channel and spatial) to fuse the multi-scale features, and a
    BiLSTM for sequence learning. Assumed: three parallel branches with kernels (3,1) temporal, (1,3)
    frequency and (3,3), concatenated; CBAM-style channel attention (shared MLP on average- and
    max-pooled channels) then spatial attention (conv on channel mean and max); a second conv layer,
    adaptive pooling and a linear projection per slice; one BiLSTM layer.
    """

    inputs: tuple[str, ...] = ("mel", "mask")

    def __init__(self, cfg: DAMFFConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DAMFFConfig()
        c = cfg.branch_channels
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(1, c, k, padding=p), nn.BatchNorm2d(c), nn.ReLU())
            for k, p in (((3, 1), (1, 0)), ((1, 3), (0, 1)), (3, 1)))
        c3 = 3 * c
        self.pool = nn.MaxPool2d(2)
        self.channel_mlp = nn.Sequential(nn.Linear(c3, c3 // cfg.reduction), nn.ReLU(), nn.Linear(c3 // cfg.reduction, c3))
        self.spatial = nn.Conv2d(2, 1, cfg.spatial_kernel, padding=cfg.spatial_kernel // 2)
        self.conv = _conv2d_block(c3, 2 * c3, 3, 1, 2)
        self.squeeze = nn.AdaptiveAvgPool2d(cfg.pooled)
        self.proj = nn.Linear(2 * c3 * cfg.pooled[0] * cfg.pooled[1], cfg.embed)
        self.rnn = BiRNN(cfg.embed, cfg.lstm_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.lstm_hidden, 2)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """[N, F, M] log-mel slices -> [N, embed] slice vectors."""
        x = mel[:, None]
        h = self.pool(torch.cat([b(x) for b in self.branches], 1))  # multi-scale features
        w = torch.sigmoid(self.channel_mlp(h.mean((2, 3))) + self.channel_mlp(h.amax((2, 3))))
        h = h * w[:, :, None, None]  # channel attention
        s = torch.sigmoid(self.spatial(torch.stack([h.mean(1), h.amax(1)], 1)))
        h = h * s  # spatial attention
        return torch.relu(self.proj(self.squeeze(self.conv(h)).flatten(1)))

    def forward(self, batch: dict) -> dict:
        mel = require(batch, "mel", "damff", "[B, T, F, M] log-mel per slice")
        _check_shape(mel, "mel", "damff", (self.cfg.n_frames, self.cfg.n_mels))
        mask = step_mask(batch, *mel.shape[:2], mel.device)
        h = self.rnn(per_step(self.encode, mel, mask), mask)
        return _output(self.head(self.drop(h)))


# ---------------------------------------------------------------------------------------------
# Seed 003: BiLSTM and CNN-BiLSTM on precomputed frame features


@dataclass
class FrameBiLSTMConfig(PresetConfig):
    """Sizes of the seed-003 BiLSTM / CNN-BiLSTM on frame features."""

    frames_dim: int = 260  # K: features per 0.5 s step (openSMILE set of DEAM/PMEmo: 260)
    conv_channels: int = 64  # CNN-BiLSTM only: filters of each temporal conv layer
    conv_kernel: int = 3  # CNN-BiLSTM only: temporal kernel (steps)
    conv_layers: int = 2  # CNN-BiLSTM only: number of conv layers
    lstm_hidden: int = 128  # BiLSTM hidden units per direction
    dropout: float = 0.1  # dropout before the output layer

    QUICK: ClassVar[dict] = {"conv_channels": 16, "lstm_hidden": 32}


class FrameBiLSTM(nn.Module):
    """BiLSTM on precomputed frame features (seed 003's BiLSTM ablation).

    Seed facts used: a sequence model on openSMILE-style features per 0.5 s step with a BiLSTM; the
    MATLAB sizes are not given, so the hidden size is assumed.
    """

    inputs: tuple[str, ...] = ("frames", "mask")
    name = "bilstm"

    def __init__(self, cfg: FrameBiLSTMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FrameBiLSTMConfig()
        self.rnn = BiRNN(self.rnn_input(), cfg.lstm_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.lstm_hidden, 2)

    def rnn_input(self) -> int:
        """Size of the vectors the BiLSTM reads."""
        return self.cfg.frames_dim

    def encode(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, K] frame features -> [B, T, E] BiLSTM inputs."""
        return frames

    def forward(self, batch: dict) -> dict:
        frames = require(batch, "frames", self.name, "[B, T, K] frame features")
        _check_shape(frames, "frames", self.name, (self.cfg.frames_dim,))
        mask = step_mask(batch, *frames.shape[:2], frames.device)
        h = self.rnn(self.encode(frames, mask), mask)
        return _output(self.head(self.drop(h)))


class FrameCNNBiLSTM(FrameBiLSTM):
    """Temporal 1-D CNN then BiLSTM on precomputed frame features (seed 003's CNN-BiLSTM).

    Seed facts used: convolution over the feature sequence before the BiLSTM. Assumed: Conv1d over
    time (kernel 3, "same" padding) + BatchNorm + ReLU, twice; padded steps are zeroed before each
    conv so they add nothing to the real steps next to them.
    """

    name = "cnn_bilstm"

    def __init__(self, cfg: FrameBiLSTMConfig | None = None):
        cfg = cfg or FrameBiLSTMConfig()
        super().__init__(cfg)
        layers, cin = [], cfg.frames_dim
        for _ in range(cfg.conv_layers):
            layers.append(nn.Sequential(nn.Conv1d(cin, cfg.conv_channels, cfg.conv_kernel, padding=cfg.conv_kernel // 2),
                                        nn.BatchNorm1d(cfg.conv_channels), nn.ReLU()))
            cin = cfg.conv_channels
        self.convs = nn.ModuleList(layers)

    def rnn_input(self) -> int:
        return self.cfg.conv_channels

    def encode(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[:, None, :].to(frames.dtype)
        h = frames.transpose(1, 2)
        for conv in self.convs:
            h = conv(h * keep)
        return h.transpose(1, 2)


BASELINES: dict[str, tuple[type[nn.Module], type]] = {
    "crnn": (CRNN, CRNNConfig),
    "dnn": (DNN, DNNConfig),
    "mcrnn": (MCRNN, MCRNNConfig),
    "damff": (DAMFF, DAMFFConfig),
    "bilstm": (FrameBiLSTM, FrameBiLSTMConfig),
    "cnn_bilstm": (FrameCNNBiLSTM, FrameBiLSTMConfig),
}
"""Baseline name -> (model class, config class). ``dsaml_utils.model.MODELS`` adds "dsaml"."""
