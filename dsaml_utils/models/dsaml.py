"""DSAML: dual-scale feature extractor, dual-scale attention transformer and BiLSTM predictor.

The model (paper "Model Architecture"; sizes the paper leaves open come from the authors' code):

1. Local feature z_l: the adapter turns each 0.5 s log-mel slice [51, 128] into a D-vector
   (two conv blocks, a 1x1 conv to one channel, flatten to 476, Linear -> D). With
   ``frontend="frames"`` a Linear(K -> D) on precomputed frame features replaces it.
2. Global feature z_g: a frozen encoder's embedding of the whole excerpt (paper: ImageBind-huge,
   G = 1024), given as batch["global"] [B, G] and broadcast over time (a per-step [B, T, G] is also
   accepted). It is detached, so no gradient ever reaches the encoder. The paper adds z_l + z_g, so
   z_g must be D-dimensional: identity when G == D (the paper's case), else a learned Linear(G -> D).
3. Fusion z = Linear(sigmoid(z_l + z_g)) (the Linear D -> D after the sigmoid is the authors').
4. ONE transformer (shared weights) runs twice, under the band masks M_n[i, j] = |i - j| <= n with
   n_l = 5 and n_g = 30 (each combined with the padding mask); z' = sigmoid(z'_l + z'_g).
5. BiLSTM (D -> D/4 per direction) -> Linear(D/2 -> D/4) -> dropout -> Linear -> 2 (arousal, valence).

The transformer layer is written here with plain matmul/softmax attention so that
``torch.func.functional_call`` and second-order autograd work on CPU. It is post-norm (BERT /
BLIP-2 Q-Former style, as the authors' encoder): x = LN(x + Drop(Attn(x))); x = LN(x + Drop(FFN(x))).
Relative positions follow the authors' "relative_key" variant (Shaw et al. 2018): each layer learns one
vector r_d per relative distance d = i - j (clipped to +-max_rel_distance, shared by the heads) and
adds q_i . r_{i-j} to the raw score before the 1/sqrt(d_head) scaling. ``rel_pos="bias"`` instead
learns one scalar per head and clipped distance added to the scaled score; ``"none"`` uses no positions.

Attention loss (paper eq. 3): mean over the steps i of (diag(A_l)_i - alpha)^2 + (diag(A_g)_i - beta)^2
on the last layer's maps averaged over heads and over the batch (per step, over the songs where the step
is real), over real steps only. It needs both branches: with one attention branch ablated it is 0 (the
loss exists to pull the two scales apart; the authors' code would apply both targets to the one map).
With both branches ablated the transformer runs once with full (unbanded) attention, as the authors'
code does; with one branch ablated z' is that branch's output (no sigmoid), also as theirs.

Padding: the adapter works slice by slice, attention never looks at padded keys (a padded query may
look at itself so that no softmax row is empty), and the BiLSTM reads only real steps (`BiRNN`: each
direction its own LSTM, the backward one on rows reversed within their length), so in eval mode a
song's predictions do not depend on what it is batched with. In train mode padded slices enter the
adapter's BatchNorm statistics. Forward has no data-dependent shapes or control flow, so it runs under
torch.func.vmap (with the meta-learner's functional LSTM) and under second-order autograd.

BatchNorm (``norm="batch"``, the authors' choice) keeps running statistics as buffers: under
``functional_call`` with parameters only, train-mode forwards (MAML inner steps included) update the
module's buffers in place. ``norm="group"`` (GroupNorm, no buffers) avoids that for meta-learning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from dsaml_utils.errors import UserError
from dsaml_utils.models.adapter_blocks import block_forward
from dsaml_utils.models.layers import BiRNN, PresetConfig, per_step, require, step_mask

ATTN_TARGETS = {"paper": (0.5, 0.05), "authors": (0.9, 0.1)}
"""(alpha, beta) diagonal targets of the attention loss: the paper's and the authors' code's."""


@dataclass
class DSAMLConfig(PresetConfig):
    """Every size and switch of DSAML; defaults are the paper's values, else the authors' code's."""

    # inputs
    frontend: str = "mel"  # "mel": adapter on per-slice log-mel; "frames": Linear(K -> D) on batch["frames"]
    n_frames: int = 51  # log-mel frames per 0.5 s slice (44.1 kHz, 10 ms hop, centred STFT)
    n_mels: int = 128  # mel bands
    frames_dim: int = 260  # K, features per step for frontend "frames" (openSMILE set: 260)
    global_dim: int = 1024  # G, global embedding size (ImageBind-huge audio: 1024)
    # transformer
    d_model: int = 1024  # D (paper)
    n_layers: int = 3  # transformer layers (paper)
    n_heads: int = 16  # attention heads (authors)
    d_ff: int = 2048  # feed-forward size (authors)
    activation: str = "gelu"  # feed-forward activation, "gelu" or "relu" (authors: gelu)
    dropout: float = 0.1  # hidden, attention-probability and predictor dropout (authors)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (authors: BERT's 1e-12)
    rel_pos: str = "key"  # relative positions: "key" (authors), "bias" or "none"
    max_rel_distance: int = 511  # relative distances are clipped to +-this (authors: 512 positions)
    # dual-scale attention
    n_local: int = 5  # local band half-width n_l (paper)
    n_global: int = 30  # global band half-width n_g (paper)
    # attention loss
    attn_targets: str = "paper"  # "paper" (alpha 0.5, beta 0.05) or "authors" (0.9, 0.1)
    alpha: float | None = None  # local diagonal target; None = from attn_targets
    beta: float | None = None  # global diagonal target; None = from attn_targets
    attn_loss_weight: float = 1.0  # weight of the attention loss in out["aux_loss"] (authors: 1)
    # adapter, fusion, predictor
    adapter_channels: tuple[int, int] = (8, 16)  # filters of the adapter's two conv blocks
    norm: str = "batch"  # adapter normalisation: "batch" (authors) or "group" (no running stats)
    fusion_linear: bool = True  # Linear D -> D after sigmoid(z_l + z_g) (authors)
    lstm_hidden: int | None = None  # BiLSTM hidden per direction; None = D // 4 (authors)
    head_hidden: int | None = None  # hidden size of the output MLP; None = D // 4 (authors)
    # ablations (paper Table 3)
    use_local_attention: bool = True  # run the local (n_l) transformer pass
    use_global_attention: bool = True  # run the global (n_g) transformer pass
    use_attention_loss: bool = True  # add the attention loss to out["aux_loss"]
    use_adapter: bool = True  # use the local feature z_l (False: z = sigmoid(z_g) for every step)
    use_global_encoder: bool = True  # use the global feature z_g (False: z = sigmoid(z_l))
    normalize_global: bool = False  # parameter-free LayerNorm on the global embedding before mapping it to D
    # (ImageBind's output is already L2-normalised, the paper's case; raw music-tagger features are not)

    QUICK: ClassVar[dict] = {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128, "max_rel_distance": 60,
                             "adapter_channels": (4, 8),  # the adapter dominates CPU time: halve its maps
                             "dropout": 0.0}  # no dropout masks to draw in the meta-step (docs/performance.md)

    def __post_init__(self) -> None:
        choices = {"frontend": ("mel", "frames"), "activation": ("gelu", "relu"), "rel_pos": ("key", "bias", "none"),
                   "attn_targets": tuple(ATTN_TARGETS), "norm": ("batch", "group")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"DSAMLConfig.{name} = {getattr(self, name)!r}; choose one of {allowed}")
        if self.d_model % self.n_heads:
            raise UserError(f"DSAMLConfig: d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if not (self.use_adapter or self.use_global_encoder):
            raise UserError("DSAMLConfig: use_adapter and use_global_encoder cannot both be False (no input)")
        if min(self.n_local, self.n_global, self.max_rel_distance) < 0:
            raise UserError("DSAMLConfig: n_local, n_global and max_rel_distance must be >= 0")

    def targets(self) -> tuple[float, float]:
        """The attention-loss diagonal targets (alpha, beta) after resolving attn_targets."""
        a, b = ATTN_TARGETS[self.attn_targets]
        return (a if self.alpha is None else self.alpha, b if self.beta is None else self.beta)

    def lstm_size(self) -> int:
        """BiLSTM hidden units per direction."""
        return self.lstm_hidden or self.d_model // 4

    def head_size(self) -> int:
        """Hidden units of the output MLP."""
        return self.head_hidden or self.d_model // 4


def band_mask(T: int, n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[T, T] bool mask M_n with M_n[i, j] = |i - j| <= n (paper eq. 1)."""
    idx = torch.arange(T, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= n


def attention_loss(attn_local: torch.Tensor, attn_global: torch.Tensor, mask: torch.Tensor | None,
                   alpha: float, beta: float) -> torch.Tensor:
    """Paper eq. 3 on head-averaged [B, T, T] maps: mean_i (diag(A_l)_i - alpha)^2 + (diag(A_g)_i - beta)^2.

    The maps are averaged over the batch per step, over the songs where that step is real; steps that
    are padding in every song are left out.
    """
    B, T = attn_local.shape[:2]
    m = torch.ones(B, T, device=attn_local.device) if mask is None else mask.to(attn_local.dtype)
    count = m.sum(0)  # songs in which each step is real
    real = (count > 0).to(m.dtype)

    def mean_diag(a: torch.Tensor) -> torch.Tensor:
        return (a.diagonal(dim1=-2, dim2=-1) * m).sum(0) / count.clamp(min=1)

    per_step = (mean_diag(attn_local) - alpha) ** 2 + (mean_diag(attn_global) - beta) ** 2
    return (per_step * real).sum() / real.sum()


class Adapter(nn.Module):
    """Local feature extractor: per-slice log-mel [F, M] -> D (paper Fig. 3, authors' sizes).

    Each block is conv -> norm -> ReLU -> max-pool (the modules, and so the state dict, are in that
    order). Forward computes the same function in a cheaper order, exact up to float rounding
    (`models.adapter_blocks`: BatchNorm folded into the convolution where its statistics are known
    beforehand, ReLU after the pool, the first block's convolution and pool fused, channels-last activations).
    """

    def __init__(self, cfg: DSAMLConfig):
        super().__init__()
        c1, c2 = cfg.adapter_channels

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if cfg.norm == "batch" else nn.GroupNorm(min(4, c), c)

        self.block1 = nn.Sequential(nn.Conv2d(1, c1, (3, 1), padding=(2, 1)), norm(c1), nn.ReLU(),
                                    nn.MaxPool2d(2, padding=1))
        self.block2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), norm(c2), nn.ReLU(), nn.MaxPool2d(2, padding=1))
        self.reduce = nn.Conv2d(c2, 1, 1)
        self.flat_dim = self.flat_size(cfg.n_frames, cfg.n_mels)
        self.proj = nn.Linear(self.flat_dim, cfg.d_model)

    @staticmethod
    def flat_size(n_frames: int, n_mels: int) -> int:
        """Length of the flattened 1-channel map for an [n_frames, n_mels] slice (476 for 51 x 128)."""
        pool = lambda n: n // 2 + 1  # MaxPool2d(2, padding=1)
        h = pool(pool(n_frames + 2))  # conv (3, 1) with padding 2 adds 2 rows; conv 3x3 pad 1 keeps size
        w = pool(pool(n_mels + 2))  # padding 1 with kernel width 1 adds 2 columns
        return h * w

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """[N, F, M] -> [N, D]."""
        x = mel[:, None].contiguous(memory_format=torch.channels_last)  # 1 channel: the same memory order
        h = block_forward(self.block1, x, first=True)
        h = block_forward(self.block2, h, first=False)
        return self.proj(self.reduce(h).flatten(1))


class SelfAttention(nn.Module):
    """Multi-head self-attention with relative positions; returns output and probabilities [B, H, T, T]."""

    def __init__(self, cfg: DSAMLConfig):
        super().__init__()
        self.h, self.dh = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.rel_pos, self.R = cfg.rel_pos, cfg.max_rel_distance
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.rel_pos == "key":
            self.rel = nn.Parameter(torch.randn(2 * self.R + 1, self.dh) * 0.02)  # row R + d: distance d
        elif cfg.rel_pos == "bias":
            self.rel = nn.Parameter(torch.zeros(self.h, 2 * self.R + 1))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, band: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """band: `allowed` holds no pair farther apart than this, so no larger distance needs scoring."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, dh]
        scores = q @ k.transpose(-1, -2)
        if self.rel_pos != "none":  # only distances up to T - 1 (and the band) matter: use that part of the table
            r = min(self.R, T - 1, T if band is None else band)  # farther pairs are masked below, whatever their score
            idx = torch.arange(T, device=x.device)
            dist = (idx[:, None] - idx[None, :]).clamp(-r, r) + r  # [T, T] in [0, 2r]
        if self.rel_pos == "key":  # q_i . r_{i-j}: score every distance once, then gather
            by_dist = q @ self.rel[self.R - r: self.R + r + 1].T  # [B, H, T, 2r + 1]
            scores = scores + by_dist.gather(-1, dist.expand(B, self.h, T, T))
        scores = scores / math.sqrt(self.dh)
        if self.rel_pos == "bias":
            scores = scores + self.rel[:, self.R - r: self.R + r + 1][:, dist]  # [H, T, T]
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1)
        y = (self.drop(probs) @ v).transpose(1, 2).reshape(B, T, D)
        return self.out(y), probs


class EncoderLayer(nn.Module):
    """Post-norm transformer layer (authors' BERT-style layer)."""

    def __init__(self, cfg: DSAMLConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ff1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()
        self.ff2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, band: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        a, probs = self.attn(x, allowed, band)
        x = self.ln1(x + self.drop(a))
        x = self.ln2(x + self.drop(self.ff2(self.act(self.ff1(x)))))
        return x, probs


class Transformer(nn.Module):
    """Stack of encoder layers; returns the output and the last layer's head-averaged map [B, T, T]."""

    def __init__(self, cfg: DSAMLConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, band: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """band: the largest |i - j| that `allowed` lets attend (None: any)."""
        for layer in self.layers:
            x, probs = layer(x, allowed, band)
        return x, probs.mean(1)


class Predictor(nn.Module):
    """BiLSTM over steps, then Linear -> dropout -> Linear -> (arousal, valence)."""

    def __init__(self, cfg: DSAMLConfig):
        super().__init__()
        hidden = cfg.lstm_size()
        self.lstm = BiRNN(cfg.d_model, hidden)
        self.head = nn.Sequential(nn.Linear(2 * hidden, cfg.head_size()), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.head_size(), 2))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(h, mask))


class DSAML(nn.Module):
    """The DSAML model (paper Fig. 2); ``inputs`` names the batch keys this configuration reads."""

    inputs: tuple[str, ...] = ("mel", "global", "mask")  # the paper configuration; set per instance
    front_end = ("adapter",)  # the modules whose per-step output batch["local"] stands in for (meta.adapt_front_end)

    def __init__(self, cfg: DSAMLConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DSAMLConfig()
        keys = []
        if cfg.use_adapter:
            keys.append(cfg.frontend)
            self.adapter = Adapter(cfg) if cfg.frontend == "mel" else nn.Linear(cfg.frames_dim, cfg.d_model)
        if cfg.use_global_encoder:
            keys.append("global")
            proj = nn.Identity() if cfg.global_dim == cfg.d_model else nn.Linear(cfg.global_dim, cfg.d_model)
            norm = nn.LayerNorm(cfg.global_dim, elementwise_affine=False) if cfg.normalize_global else nn.Identity()
            self.global_proj = nn.Sequential(norm, proj) if cfg.normalize_global else proj
        self.inputs = (*keys, "mask")
        self.fusion = nn.Linear(cfg.d_model, cfg.d_model) if cfg.fusion_linear else nn.Identity()
        self.transformer = Transformer(cfg)  # shared by the local and the global pass
        self.predictor = Predictor(cfg)

    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused features z [B, T, D] and the step mask [B, T]."""
        cfg, z_l, z_g = self.cfg, None, None
        if cfg.use_adapter and batch.get("local") is not None:  # z_l precomputed by forward(local_only=True)
            z_l = batch["local"]
            mask = step_mask(batch, *z_l.shape[:2], z_l.device)
            z_l = z_l * mask[..., None].to(z_l.dtype)
        elif cfg.use_adapter:
            if cfg.frontend == "mel":
                x = require(batch, "mel", "dsaml", f"[B, T, {cfg.n_frames}, {cfg.n_mels}] log-mel per slice")
                tail = (cfg.n_frames, cfg.n_mels)
            else:
                x = require(batch, "frames", "dsaml", f"[B, T, {cfg.frames_dim}] frame features")
                tail = (cfg.frames_dim,)
            if x.dim() != 2 + len(tail) or tuple(x.shape[2:]) != tail:
                raise UserError(f"dsaml: batch '{cfg.frontend}' has shape {tuple(x.shape)}, expected [B, T, "
                                + ", ".join(map(str, tail)) + "]")
            mask = step_mask(batch, *x.shape[:2], x.device)
            z_l = per_step(self.adapter, x, mask)
        if cfg.use_global_encoder:
            g = require(batch, "global", "dsaml", f"[B, {cfg.global_dim}] global embedding").detach()
            if g.dim() not in (2, 3) or g.shape[-1] != cfg.global_dim:
                raise UserError(f"dsaml: batch 'global' has shape {tuple(g.shape)}, expected [B, {cfg.global_dim}] "
                                f"(set DSAMLConfig.global_dim to the encoder's size)")
            z_g = self.global_proj(g)
            z_g = z_g[:, None, :] if g.dim() == 2 else z_g
        if z_l is None:  # no adapter: the number of steps comes from the mask (or a per-step global)
            if "mask" in batch and batch["mask"] is not None:
                B, T = batch["mask"].shape
            elif z_g.shape[1] > 1:
                B, T = z_g.shape[:2]
            else:
                raise UserError("dsaml without adapter needs batch 'mask' [B, T] to know the number of steps")
            mask = step_mask(batch, B, T, z_g.device)
            z = torch.sigmoid(z_g).expand(B, T, -1)
        else:
            z = torch.sigmoid(z_l if z_g is None else z_l + z_g)
        return self.fusion(z), mask

    def local_features(self, batch: dict) -> torch.Tensor:
        """z_l [B, T, D]: the adapter's per-step output (padded steps zero), what batch key "local" takes."""
        x = batch[self.cfg.frontend]
        return per_step(self.adapter, x, step_mask(batch, *x.shape[:2], x.device))

    def forward(self, batch: dict, local_only: bool = False) -> dict:
        """Predictions, attention maps and aux_loss; with local_only, only {"local": z_l} (see local_features).

        The adapter works slice by slice, so in eval mode z_l of a whole song, computed once, serves every
        window over it (models.inference.predict_song does so).
        """
        if local_only:
            return {"local": self.local_features(batch)}
        cfg = self.cfg
        z, mask = self.features(batch)
        B, T, _ = z.shape
        eye = torch.eye(T, dtype=torch.bool, device=z.device)
        allowed = mask[:, None, :] | eye  # real keys, plus a padded query's own position
        out = {}
        if cfg.use_local_attention:
            h_l, out["attn_local"] = self.transformer(z, allowed & band_mask(T, cfg.n_local, z.device), cfg.n_local)
        if cfg.use_global_attention:
            h_g, out["attn_global"] = self.transformer(z, allowed & band_mask(T, cfg.n_global, z.device),
                                                       cfg.n_global)
        if cfg.use_local_attention and cfg.use_global_attention:
            h = torch.sigmoid(h_l + h_g)
        elif cfg.use_local_attention or cfg.use_global_attention:
            h = h_l if cfg.use_local_attention else h_g
        else:
            h, _ = self.transformer(z, allowed)  # neither band: one pass with full attention
        out["pred"] = self.predictor(h, mask)
        if cfg.use_attention_loss and cfg.use_local_attention and cfg.use_global_attention:
            alpha, beta = cfg.targets()
            out["aux_loss"] = cfg.attn_loss_weight * attention_loss(out["attn_local"], out["attn_global"], mask,
                                                                    alpha, beta)
        else:
            out["aux_loss"] = z.new_zeros(())
        return out
