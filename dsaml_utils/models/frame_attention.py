"""Seed 003's attention models on frame features: SE / CBAM / WSAM residual CNN-BiLSTMs and DSelfAttention.

Facts from seed 003's code (County-Down/Music-Emotion-Recognition, Neuro_Networks/DSESAM.m, DCBAM.m, DWSAM.m,
DSelfAttention.m). The three gated models are DCNBiLSTM.m (`ResCNNBiLSTM`) with, in every residual block, the
concatenated branches y [N, 2C, K] multiplied by a channel gate and a spatial gate before the skip is added:
  y * channel(y) * spatial(y).
- spatial (all three): at each feature position the max and the mean over channels, a 1x1 conv to 2C maps,
  sigmoid (the seed pools over channels by transposing them onto a spatial axis).
- DSESAM (SE): global average over positions -> FC(2C) -> ELU -> FC(2C) -> sigmoid.
- DCBAM: two separate MLPs of that shape on the global average and on the global max, each through a sigmoid,
  and the two sigmoids added (so the gate lies in [0, 2]; the CBAM paper shares one MLP and adds before the
  sigmoid: the seed's form is kept).
- DWSAM: global average and global max concatenated -> 1x1 conv (an FC on a 1x1 image) to 2C -> ELU -> the
  seed's custom `waveletLayer` -> 1x1 conv to 2C -> sigmoid.
- DSelfAttention.m: DCNBiLSTM with numHiddenUnits 100 and selfAttentionLayer(3 heads, 6 key channels) after
  the second BiLSTM and its dropout, then the output layer and tanh.
Assumed:
- `waveletLayer` is not published: here the Morlet wavelet psi(x) = cos(1.75 x) exp(-x^2 / 2), the usual
  activation of wavelet networks (the seed's sources also name a "wnn" layer).
- The seed's self-attention follows a BiLSTM in OutputMode "last", so it sees one vector per window and
  reduces to a per-window map out(value(h)); here the BiLSTM returns every step and the attention runs over
  the steps (padded keys masked), with MATLAB's layer sizes: query/key/value 6 channels split over 3 heads,
  an output projection back to 2H. A residual h + attention(h) is added (not in MATLAB's layer): without it
  every step's output starts as a near-uniform average over the song, i.e. almost constant in time, which
  leaves the per-song correlation loss ill-conditioned (measured: output variance over time ~1e-11 at init).
- The issue that asked for DSelfAttention describes self-attention before the BiLSTM; the seed's code puts
  it after, which is what is built here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsaml_utils.errors import UserError
from dsaml_utils.models.frame_models import ResCNNBiLSTM, ResCNNConfig


def morlet(x: torch.Tensor) -> torch.Tensor:
    """Morlet wavelet cos(1.75 x) exp(-x^2 / 2): the assumed stand-in for the seed's unpublished waveletLayer."""
    return torch.cos(1.75 * x) * torch.exp(-0.5 * x * x)


class SpatialGate(nn.Module):
    """Seed's spatial attention: channel max and mean per feature position -> 1x1 conv to C maps -> sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(2, channels, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """[N, C, K] -> [N, C, K] weights in (0, 1)."""
        return torch.sigmoid(self.conv(torch.stack([y.amax(1), y.mean(1)], 1)))  # seed order: max, then mean


def _mlp(channels: int, cin: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin or channels, channels), nn.ELU(), nn.Linear(channels, channels))


class SEChannel(nn.Module):
    """DSESAM.m's channel gate: global average -> FC -> ELU -> FC -> sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = _mlp(channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """[N, C, K] -> [N, C, 1]."""
        return torch.sigmoid(self.mlp(y.mean(2)))[..., None]


class CBAMChannel(nn.Module):
    """DCBAM.m's channel gate: sigmoid(MLP_avg(global average)) + sigmoid(MLP_max(global max))."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp_avg, self.mlp_max = _mlp(channels), _mlp(channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """[N, C, K] -> [N, C, 1] in (0, 2)."""
        return (torch.sigmoid(self.mlp_avg(y.mean(2))) + torch.sigmoid(self.mlp_max(y.amax(2))))[..., None]


class WaveletChannel(nn.Module):
    """DWSAM.m's channel gate: [global average, global max] -> FC -> ELU -> wavelet -> FC -> sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2 * channels, channels), nn.Linear(channels, channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """[N, C, K] -> [N, C, 1]."""
        h = morlet(F.elu(self.fc1(torch.cat([y.mean(2), y.amax(2)], 1))))
        return torch.sigmoid(self.fc2(h))[..., None]


class Gate(nn.Module):
    """y * channel(y) * spatial(y), as the seed's three-input multiplication layer."""

    def __init__(self, channel: nn.Module, spatial: nn.Module):
        super().__init__()
        self.channel, self.spatial = channel, spatial

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.channel(y) * self.spatial(y)


class SECNNBiLSTM(ResCNNBiLSTM):
    """Seed 003's DSESAM: the residual CNN-BiLSTM with SE channel and spatial attention in every block."""

    name = "se_cnn_bilstm"
    channel_gate: ClassVar[type[nn.Module]] = SEChannel

    def gate(self, channels: int) -> nn.Module:
        return Gate(self.channel_gate(channels), SpatialGate(channels))


class CBAMCNNBiLSTM(SECNNBiLSTM):
    """Seed 003's DCBAM: the residual CNN-BiLSTM with CBAM-style channel (avg + max) and spatial attention."""

    name = "cbam_cnn_bilstm"
    channel_gate: ClassVar[type[nn.Module]] = CBAMChannel


class WSAMCNNBiLSTM(SECNNBiLSTM):
    """Seed 003's DWSAM: the residual CNN-BiLSTM with wavelet channel attention and spatial attention."""

    name = "wsam_cnn_bilstm"
    channel_gate: ClassVar[type[nn.Module]] = WaveletChannel


@dataclass
class DSelfAttentionConfig(ResCNNConfig):
    """Sizes of seed 003's DSelfAttention (DSelfAttention.m)."""

    lstm_hidden: int = 100  # hidden units per direction of each BiLSTM layer (seed: 100 in this model)
    attn_heads: int = 3  # self-attention heads (seed: selfAttentionLayer(3, 6))
    attn_channels: int = 6  # query/key (and value) channels over all heads (seed: 6)

    QUICK: ClassVar[dict] = {"channels": 2, "lstm_hidden": 16, "blocks": 1, "feature_proj": 32}


class StepSelfAttention(nn.Module):
    """MATLAB selfAttentionLayer over the steps: q, k, v of `channels` split into heads, masked softmax, out proj."""

    def __init__(self, dim: int, heads: int, channels: int):
        super().__init__()
        if channels % heads:
            raise UserError(f"self-attention: attn_channels={channels} is not a multiple of attn_heads={heads}")
        self.h, self.dh = heads, channels // heads
        self.qkv = nn.Linear(dim, 3 * channels)
        self.out = nn.Linear(channels, dim)

    def weights(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention probabilities [B, H, T, T]; padded keys get none."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
        return scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min).softmax(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, dim] -> [B, T, dim]."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, dh]
        y = (self.weights(q, k, mask) @ v).transpose(1, 2).reshape(B, T, self.h * self.dh)
        return self.out(y)


class DSelfAttention(ResCNNBiLSTM):
    """Seed 003's main model (DSelfAttention.m): residual CNN blocks, two BiLSTM layers, self-attention, output.

    Assumed: the attention runs over the steps with a residual around it (see the module docstring).
    """

    name = "dselfattention"
    config_cls: ClassVar[type] = DSelfAttentionConfig

    def __init__(self, cfg: DSelfAttentionConfig | None = None):
        super().__init__(cfg)
        self.attn = StepSelfAttention(2 * self.cfg.lstm_hidden, self.cfg.attn_heads, self.cfg.attn_channels)

    def sequence(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = super().sequence(z, mask)
        return h + self.attn(h, mask)


ATTENTION_MODELS: dict[str, tuple[type[nn.Module], type]] = {
    cls.name: (cls, cls.config_cls) for cls in (SECNNBiLSTM, CBAMCNNBiLSTM, WSAMCNNBiLSTM, DSelfAttention)}
"""Name -> (model class, config class) of seed 003's attention models."""
