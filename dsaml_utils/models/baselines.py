"""Baseline DMER models (paper Tables 1-2); seed 003's frame-feature models live in `frame_models`.

None of the baselines has public code. Each class below is built from its paper's description; the
docstring lists the facts used and what was assumed. All of them follow the project's forward
interface: ``model(batch) -> {"pred": [B, T, 2], "aux_loss": 0-d tensor}``, with batch keys
``"mel"`` [B, T, F, M], ``"wave"`` [B, T, S] and ``"mask"`` [B, T] (True = a
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

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from dsaml_utils.models.layers import (
    BiRNN,
    PresetConfig,
    _check_shape,
    _conv1d_block,
    _conv2d_block,
    _output,
    per_step,
    require,
    step_mask,
)
from dsaml_utils.models.frame_models import FrameBiLSTM, FrameBiLSTMConfig, FrameCNNBiLSTM  # noqa: F401 (moved there)


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
    front_end = ("conv",)  # the per-slice encoder (meta.adapt_front_end)

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

    def forward(self, batch: dict, local_only: bool = False) -> dict:
        z, mask = _steps(self, batch, "mel", "crnn", (self.cfg.n_frames, self.cfg.n_mels), "[B, T, F, M] log-mel per slice")
        if local_only:
            return {"local": z}
        outs = [head(self.drop(rnn(z, mask))) for rnn, head in zip(self.branches, self.heads)]
        return _output(torch.cat(outs, -1))


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
    front_end = ("conv",)  # the per-slice encoder (meta.adapt_front_end)

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

    def forward(self, batch: dict, local_only: bool = False) -> dict:
        z, mask = _steps(self, batch, "wave", "dnn", (self.cfg.sample_rate // 2,),
                         f"[B, T, S] raw slices at {self.cfg.sample_rate} Hz")
        return {"local": z} if local_only else _rnn_output(self, z, mask)


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
    front_end = ("views",)  # the per-slice encoder (meta.adapt_front_end)

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

    def forward(self, batch: dict, local_only: bool = False) -> dict:
        z, mask = _steps(self, batch, "wave", "mcrnn", (self.cfg.sample_rate // 2,),
                         f"[B, T, S] raw slices at {self.cfg.sample_rate} Hz")
        return {"local": z} if local_only else _rnn_output(self, z, mask)


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
    front_end = ("branches", "channel_mlp", "spatial", "conv", "proj")  # the per-slice encoder (meta.adapt_front_end)

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

    def forward(self, batch: dict, local_only: bool = False) -> dict:
        z, mask = _steps(self, batch, "mel", "damff", (self.cfg.n_frames, self.cfg.n_mels),
                         "[B, T, F, M] log-mel per slice")
        return {"local": z} if local_only else _rnn_output(self, z, mask)


def _steps(model: nn.Module, batch: dict, key: str, name: str, tail: tuple[int, ...], what: str
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The front end's per-step features [B, T, E] (padded steps zero) and the step mask: batch["local"] when
    given (computed once by forward(local_only=True), meta.adapt_front_end), else model.encode slice by slice."""
    if batch.get("local") is not None:
        z = batch["local"]
        mask = step_mask(batch, *z.shape[:2], z.device)
        return z * mask[..., None].to(z.dtype), mask
    x = require(batch, key, name, what)
    _check_shape(x, key, name, tail)
    mask = step_mask(batch, *x.shape[:2], x.device)
    return per_step(model.encode, x, mask), mask


def _rnn_output(model: nn.Module, z: torch.Tensor, mask: torch.Tensor) -> dict:
    """The recurrent layer over the per-step features, dropout and the linear head: the model's output."""
    return _output(model.head(model.drop(model.rnn(z, mask))))


BASELINES: dict[str, tuple[type[nn.Module], type]] = {
    "crnn": (CRNN, CRNNConfig),
    "dnn": (DNN, DNNConfig),
    "mcrnn": (MCRNN, MCRNNConfig),
    "damff": (DAMFF, DAMFFConfig),
}
"""Baseline name -> (model class, config class). ``dsaml_utils.model.MODELS`` adds "dsaml"."""
