"""Seed 003's models on precomputed frame features: CNN, BiLSTM, CNN-BiLSTM and its scale / residual variants.

Facts from seed 003's code (County-Down/Music-Emotion-Recognition, MATLAB, Neuro_Networks/*.m):
- Input: windows of openSMILE feature vectors; each step's K features enter as a K x 1 image and the
  sequence is folded into the batch (sequenceFoldingLayer), so every convolution runs along the feature
  axis of one step and only the BiLSTM mixes steps.
- Two conv branches. "space": conv(k1) -> BatchNorm -> ELU -> max-pool(k2, stride 1, "same") -> dropout
  0.01 -> BatchNorm. "time": conv(k1) -> LayerNorm -> dropout 0.01 -> conv(k2, dilation 2) -> LayerNorm ->
  ELU. (Despite its name the "time" branch convolves along the features too: it is a second scale.)
- CNN.m: both branches, concatenated, fully connected, tanh; no recurrence. CNNBiLSTM.m: both branches,
  flattened per step, BiLSTM -> dropout 0.3 -> BiLSTM -> dropout 0.3 -> fully connected -> tanh.
  TCNNBiLSTM.m / SCNNBiLSTM.m: the "time" / "space" branch alone. DCNBiLSTM.m: block_num residual blocks
  of both branches (dilation 2^(i-1) in every conv of block i), concatenated along channels, plus a 1x1
  conv skip (block 1) or the identity (later blocks).
- Sizes (main.m): channel 20, kernel_size1 10 and kernel_size2 5 for arousal (15 and 6 for valence),
  block_num 3, numHiddenUnits 50 (100 in DSelfAttention.m), windows of k = 26 steps.
Adapted here (assumptions):
- One model predicts (arousal, valence) at every step of a [B, T, K] batch: the seed trains one model per
  target and predicts one value per 26-step window (last BiLSTM OutputMode "last"); here the last BiLSTM
  returns every step. Arousal's kernels (10, 5) are the defaults; valence's are kernel1=15, kernel2=6.
- Input is all K = 260 features; the seed keeps those a random forest ranks above importance 0.0015
  (data_preprocessing notebook; the count is not published), so its flattened BiLSTM inputs were smaller.
- A k x k kernel on a K x 1 image with "same" padding meets the data with one column only: Conv1d(k) here
  (same function, k times fewer stored weights). `feature_proj` (not in the seed; 0 in the paper preset)
  puts a Linear(K -> n) in front of the convolutions: the quick preset uses n = 32 (and one residual
  block) so that a CPU update of 16 windows x 60 steps stays well under 0.1 s. MATLAB's layerNormalizationLayer on images normalises
  each observation over (features, channels) with a per-channel scale and offset: GroupNorm(1, C).
- Padding: convolutions see one step at a time and `BiRNN` reads only real steps, so in eval mode padded
  steps never change a real step's prediction; in train mode padded steps enter BatchNorm statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsaml_utils.models.layers import BiRNN, PresetConfig, _check_shape, _output, per_step, require, step_mask


@dataclass
class FrameBiLSTMConfig(PresetConfig):
    """Sizes of seed 003's BiLSTM on frame features (BiLSTM.m)."""

    frames_dim: int = 260  # K: features per 0.5 s step (openSMILE set of DEAM/PMEmo: 260)
    lstm_hidden: int = 50  # hidden units per direction of each BiLSTM layer (seed: numHiddenUnits 50)
    lstm_layers: int = 2  # stacked BiLSTM layers (seed: 2)
    dropout: float = 0.3  # dropout after each BiLSTM layer (seed: 0.3)
    tanh_output: bool = True  # tanh after the output layer (seed; labels here lie in [-1, 1])

    QUICK: ClassVar[dict] = {"lstm_hidden": 16}


@dataclass
class FrameCNNConfig(PresetConfig):
    """Sizes of seed 003's CNN on frame features (CNN.m): the two conv branches and a linear output."""

    frames_dim: int = 260  # K: features per 0.5 s step
    channels: int = 20  # filters of every conv layer (seed: channel 20); the two branches give 2x this
    kernel1: int = 10  # kernel of each branch's first conv, along the features (seed: 10 arousal, 15 valence)
    kernel2: int = 5  # max-pool size ("space") and second conv kernel ("time") (seed: 5 arousal, 6 valence)
    conv_dropout: float = 0.01  # dropout inside each branch (seed: 0.01)
    feature_proj: int = 0  # 0: convolve all K features (seed); n > 0: a Linear(K -> n) first (not in the seed)
    tanh_output: bool = True  # tanh after the output layer (seed)

    QUICK: ClassVar[dict] = {"channels": 2, "feature_proj": 32}


@dataclass
class FrameCNNBiLSTMConfig(FrameCNNConfig):
    """Sizes of seed 003's CNN-BiLSTM and its one-branch variants (CNNBiLSTM.m, TCNNBiLSTM.m, SCNNBiLSTM.m)."""

    lstm_hidden: int = 50  # hidden units per direction of each BiLSTM layer (seed: 50)
    lstm_layers: int = 2  # stacked BiLSTM layers (seed: 2)
    dropout: float = 0.3  # dropout after each BiLSTM layer (seed: 0.3)

    QUICK: ClassVar[dict] = {"channels": 2, "lstm_hidden": 16, "feature_proj": 32}


@dataclass
class ResCNNConfig(FrameCNNBiLSTMConfig):
    """Sizes of seed 003's residual CNN-BiLSTM (DCNBiLSTM.m) and its attention variants."""

    blocks: int = 3  # residual blocks; block i dilates its convs by 2^(i-1) (seed: block_num 3)

    QUICK: ClassVar[dict] = {"channels": 2, "lstm_hidden": 16, "blocks": 1, "feature_proj": 32}


class SameConv1d(nn.Conv1d):
    """Conv1d with MATLAB's "same" padding for any kernel and dilation (an odd total pad puts the extra on the right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.dilation[0] * (self.kernel_size[0] - 1)
        return super().forward(F.pad(x, (total // 2, total - total // 2)))


def same_max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Stride-1 max-pool of [N, C, K] along K with MATLAB "same" padding (the extra pad on the right)."""
    left = (k - 1) // 2
    return F.max_pool1d(F.pad(x, (left, k - 1 - left), value=float("-inf")), k, stride=1)


class SpaceBranch(nn.Module):
    """Seed's "space" branch: conv -> BatchNorm -> ELU -> "same" max-pool -> dropout -> BatchNorm."""

    def __init__(self, cin: int, cfg: FrameCNNConfig, dilation: int = 1):
        super().__init__()
        c = cfg.channels
        self.conv = SameConv1d(cin, c, cfg.kernel1, dilation=dilation)
        self.norm1, self.norm2 = nn.BatchNorm1d(c), nn.BatchNorm1d(c)
        self.pool = cfg.kernel2
        self.drop = nn.Dropout(cfg.conv_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, cin, K] -> [N, C, K]."""
        h = F.elu(self.norm1(self.conv(x)))
        return self.norm2(self.drop(same_max_pool(h, self.pool)))


class TimeBranch(nn.Module):
    """Seed's "time" branch: conv -> LayerNorm -> dropout -> conv -> LayerNorm -> ELU, along the features."""

    def __init__(self, cin: int, cfg: FrameCNNConfig, dilations: tuple[int, int] = (1, 2)):
        super().__init__()
        c = cfg.channels
        self.conv1 = SameConv1d(cin, c, cfg.kernel1, dilation=dilations[0])
        self.conv2 = SameConv1d(c, c, cfg.kernel2, dilation=dilations[1])
        self.norm1, self.norm2 = nn.GroupNorm(1, c), nn.GroupNorm(1, c)  # MATLAB layer norm on images
        self.drop = nn.Dropout(cfg.conv_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, cin, K] -> [N, C, K]."""
        return F.elu(self.norm2(self.conv2(self.drop(self.norm1(self.conv1(x))))))


def _frames(batch: dict, cfg, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's checked frames [B, T, K] and step mask [B, T]."""
    frames = require(batch, "frames", name, "[B, T, K] frame features")
    _check_shape(frames, "frames", name, (cfg.frames_dim,))
    return frames, step_mask(batch, *frames.shape[:2], frames.device)


def _finish(pred: torch.Tensor, cfg) -> dict:
    return _output(torch.tanh(pred) if cfg.tanh_output else pred)


def _positions(cfg: FrameCNNConfig) -> int:
    """Length of the feature axis the convolutions run along."""
    return cfg.feature_proj or cfg.frames_dim


def _projection(cfg: FrameCNNConfig) -> nn.Module:
    """Linear(K -> feature_proj) in front of the convolutions, or the identity (the seed's case)."""
    return nn.Linear(cfg.frames_dim, cfg.feature_proj) if cfg.feature_proj else nn.Identity()


class FrameCNN(nn.Module):
    """Seed 003's CNN (CNN.m): both conv branches on each step's features, then a linear output; no recurrence.

    Assumed: each step is scored from its own features alone (the seed's window-to-image helper
    `cnncell2flatten` is not published).
    """

    inputs: tuple[str, ...] = ("frames", "mask")
    name = "frame_cnn"
    config_cls: ClassVar[type] = FrameCNNConfig

    def __init__(self, cfg: FrameCNNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.config_cls()
        self.proj = _projection(cfg)
        self.convs = nn.ModuleDict({"space": SpaceBranch(1, cfg), "time": TimeBranch(1, cfg)})
        self.head = nn.Linear(2 * cfg.channels * _positions(cfg), 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K] step features -> [N, 2C * K]."""
        x = self.proj(x)[:, None]
        return torch.cat([conv(x) for conv in self.convs.values()], 1).flatten(1)

    def forward(self, batch: dict) -> dict:
        frames, mask = _frames(batch, self.cfg, self.name)
        return _finish(self.head(per_step(self.encode, frames, mask)), self.cfg)


class FrameBiLSTM(nn.Module):
    """Seed 003's BiLSTM (BiLSTM.m): two BiLSTM layers on the raw feature vectors, dropout, linear, tanh."""

    inputs: tuple[str, ...] = ("frames", "mask")
    name = "bilstm"
    config_cls: ClassVar[type] = FrameBiLSTMConfig

    def __init__(self, cfg: FrameBiLSTMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.config_cls()
        self.build_encoder()
        self.rnn = BiRNN(self.step_size(), cfg.lstm_hidden, cfg.lstm_layers, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.lstm_hidden, 2)

    def build_encoder(self) -> None:
        """Create the per-step encoder's modules (none: the BiLSTM reads the features)."""

    def step_size(self) -> int:
        """Size of the per-step vectors the BiLSTM reads."""
        return self.cfg.frames_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K] step features -> [N, step_size] BiLSTM inputs."""
        return x

    def sequence(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, step_size] -> [B, T, 2 * hidden]: the BiLSTM layers and the dropout after the last one."""
        return self.drop(self.rnn(z, mask))

    def forward(self, batch: dict) -> dict:
        frames, mask = _frames(batch, self.cfg, self.name)
        h = self.sequence(per_step(self.encode, frames, mask), mask)
        return _finish(self.head(h), self.cfg)


class FrameCNNBiLSTM(FrameBiLSTM):
    """Seed 003's CNN-BiLSTM (CNNBiLSTM.m): both conv branches per step, flattened, then the BiLSTM of `FrameBiLSTM`."""

    name = "cnn_bilstm"
    config_cls: ClassVar[type] = FrameCNNBiLSTMConfig
    branches: ClassVar[tuple[str, ...]] = ("space", "time")

    def build_encoder(self) -> None:
        cfg = self.cfg
        make = {"space": lambda: SpaceBranch(1, cfg), "time": lambda: TimeBranch(1, cfg, (1, 2))}
        self.proj = _projection(cfg)
        self.convs = nn.ModuleDict({b: make[b]() for b in self.branches})

    def step_size(self) -> int:
        return len(self.branches) * self.cfg.channels * _positions(self.cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)[:, None]
        return torch.cat([conv(x) for conv in self.convs.values()], 1).flatten(1)


class FrameTCNNBiLSTM(FrameCNNBiLSTM):
    """Seed 003's temporal-scale CNN-BiLSTM (TCNNBiLSTM.m): the "time" branch alone before the BiLSTM."""

    name = "cnn_bilstm_temporal"
    branches: ClassVar[tuple[str, ...]] = ("time",)


class FrameSCNNBiLSTM(FrameCNNBiLSTM):
    """Seed 003's spatial-scale CNN-BiLSTM (SCNNBiLSTM.m): the "space" branch alone before the BiLSTM."""

    name = "cnn_bilstm_spatial"
    branches: ClassVar[tuple[str, ...]] = ("space",)


class ResBlock(nn.Module):
    """One residual block of DCNBiLSTM.m: [space | time] branches (concatenated), an optional gate, plus the skip."""

    def __init__(self, cin: int, cfg: FrameCNNConfig, dilation: int, gate: nn.Module):
        super().__init__()
        c2 = 2 * cfg.channels
        self.space = SpaceBranch(cin, cfg, dilation)
        self.time = TimeBranch(cin, cfg, (dilation, dilation))
        self.gate = gate  # nn.Identity() without attention
        self.skip = nn.Conv1d(cin, c2, 1) if cin != c2 else nn.Identity()  # seed: 1x1 conv into block 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, cin, K] -> [N, 2C, K]."""
        return self.gate(torch.cat([self.space(x), self.time(x)], 1)) + self.skip(x)


class ResCNNBiLSTM(FrameBiLSTM):
    """Seed 003's residual-CNN BiLSTM (DCNBiLSTM.m): `blocks` dilated residual blocks per step, then the BiLSTM."""

    name = "rescnn_bilstm"
    config_cls: ClassVar[type] = ResCNNConfig

    def build_encoder(self) -> None:
        cfg, c2 = self.cfg, 2 * self.cfg.channels
        self.proj = _projection(cfg)
        self.blocks = nn.ModuleList(ResBlock(1 if i == 0 else c2, cfg, 2 ** i, self.gate(c2)) for i in range(cfg.blocks))

    def gate(self, channels: int) -> nn.Module:
        """The attention applied to each block's concatenated branches (none here)."""
        return nn.Identity()

    def step_size(self) -> int:
        return 2 * self.cfg.channels * _positions(self.cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)[:, None]
        for block in self.blocks:
            h = block(h)
        return h.flatten(1)


FRAME_MODELS: dict[str, tuple[type[nn.Module], type]] = {
    cls.name: (cls, cls.config_cls)
    for cls in (FrameCNN, FrameBiLSTM, FrameCNNBiLSTM, FrameTCNNBiLSTM, FrameSCNNBiLSTM, ResCNNBiLSTM)}
"""Name -> (model class, config class) of seed 003's models without attention."""
