"""ImageBind's audio branch, written for this project, that loads the official checkpoint's audio weights.

The model (Girdhar et al., CVPR 2023, ``imagebind_huge``) embeds three 2 s clips of a recording, each a
Kaldi fbank image [1, 128, 204], into a 1024-d space, and averages the clip embeddings:

    Conv2d(1, 768, 16, stride 10, no bias) -> 12 x 19 patches -> LayerNorm -> [CLS] + patches
    + learned positional embedding -> 12 pre-norm blocks (768-d, 12 heads, MLP 3072, attention with
    learned key/value bias tokens) -> LayerNorm -> CLS -> Linear(768, 1024, no bias)
    -> L2-normalise -> times exp(log_logit_scale) (= 20, frozen) -> mean over clips.

Weights are read from ``imagebind_huge.pth`` (all six modalities, ~4.5 GB) memory-mapped, so only the
audio tensors (~86 M parameters) are ever read, or from the audio-only file that
``dsaml export-imagebind-audio`` writes with the same key names. Waveform preprocessing lives in
``dsaml_utils.features.imagebind_clips``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsaml_utils.errors import UserError
from dsaml_utils.io.atomic import load_checkpoint

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"


CHECKPOINT_ENV = "DSAML_IMAGEBIND_CHECKPOINT"


DEFAULT_CHECKPOINTS = (Path("data/checkpoints/imagebind_audio.pth"), Path("data/checkpoints/imagebind_huge.pth"))


# Prefixes of the audio modality in the official state dict; everything else (vision, text, ...) is ignored.
AUDIO_PREFIXES = (
    "modality_preprocessors.audio.",
    "modality_trunks.audio.",
    "modality_heads.audio.",
    "modality_postprocessors.audio.",
)


# Official key -> this module's key, for the tensors outside the transformer blocks. Block keys
# (modality_trunks.audio.blocks.N.*) keep their names under "blocks.N.".
_RENAMES = {
    "modality_preprocessors.audio.rgbt_stem.proj.weight": "patch_embed.weight",
    "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": "patch_norm.weight",
    "modality_preprocessors.audio.rgbt_stem.norm_layer.bias": "patch_norm.bias",
    "modality_preprocessors.audio.cls_token": "cls_token",
    "modality_preprocessors.audio.pos_embedding_helper.pos_embed": "pos_embed",
    "modality_heads.audio.0.weight": "head_norm.weight",
    "modality_heads.audio.0.bias": "head_norm.bias",
    "modality_heads.audio.2.weight": "head_proj.weight",
    "modality_postprocessors.audio.1.log_logit_scale": "log_logit_scale",
}


_TRUNK = "modality_trunks.audio."


@dataclass
class ImageBindAudioConfig:
    """Shape of the audio branch; the defaults are imagebind_huge's."""

    embed_dim: int = 768  # transformer width
    depth: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads
    mlp_ratio: int = 4  # MLP hidden = mlp_ratio * embed_dim
    out_dim: int = 1024  # joint embedding size
    n_mels: int = 128  # fbank bins (image height)
    target_frames: int = 204  # fbank frames per clip (image width)
    kernel: int = 16  # patch size
    stride: int = 10  # patch stride (patches overlap)
    drop_path: float = 0.1  # stochastic depth of the last block (0 for the first); training only
    logit_scale: float = 20.0  # initial output scale; the checkpoint's log_logit_scale overrides it
    max_logit_scale: float = 100.0  # the scale is clipped to this

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along (mel, time): 12 x 19 for the defaults."""
        return (
            (self.n_mels - self.kernel) // self.stride + 1,
            (self.target_frames - self.kernel) // self.stride + 1,
        )

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], num_heads: int | None = None) -> "ImageBindAudioConfig":
        """Infer width, depth, MLP and output sizes from official-layout audio tensors (heads: width / 64)."""
        width = state["modality_preprocessors.audio.cls_token"].shape[-1]
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(_TRUNK)}blocks\.(\d+)\.", k))}
        hidden = state[f"{_TRUNK}blocks.0.mlp.fc1.weight"].shape[0] if blocks else 4 * width
        kernel = state["modality_preprocessors.audio.rgbt_stem.proj.weight"].shape[-1]
        return cls(
            embed_dim=width,
            depth=len(blocks),
            num_heads=num_heads or max(1, width // 64),
            mlp_ratio=hidden // width,
            out_dim=state["modality_heads.audio.2.weight"].shape[0],
            kernel=kernel,
        )


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's residual branch with probability p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Two linear layers with GELU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; attention appends learned key/value bias tokens (add_bias_kv)."""

    def __init__(self, cfg: ImageBindAudioConfig, drop_path: float) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(cfg.embed_dim, cfg.num_heads, bias=True, add_bias_kv=True, batch_first=True)
        self.norm_2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_ratio * cfg.embed_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class ImageBindAudio(nn.Module):
    """Fbank clips [B, 1, n_mels, frames] (or [B, S, 1, n_mels, frames]) -> embeddings [B, out_dim]."""

    def __init__(self, cfg: ImageBindAudioConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ImageBindAudioConfig()
        gh, gw = cfg.grid
        self.patch_embed = nn.Conv2d(1, cfg.embed_dim, cfg.kernel, stride=cfg.stride, bias=False)
        self.patch_norm = nn.LayerNorm(cfg.embed_dim)  # eps 1e-5, unlike the blocks' 1e-6
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.embed_dim) * cfg.embed_dim**-0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + gh * gw, cfg.embed_dim) * cfg.embed_dim**-0.5)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()  # grows linearly with depth
        self.blocks = nn.Sequential(*[Block(cfg, r) for r in rates])
        self.head_norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head_proj = nn.Linear(cfg.embed_dim, cfg.out_dim, bias=False)
        self.register_buffer("log_logit_scale", torch.tensor(float(cfg.logit_scale)).log())

    def embed_clips(self, x: torch.Tensor) -> torch.Tensor:
        """One scaled unit-norm embedding per clip: [N, 1, n_mels, frames] -> [N, out_dim]."""
        expected = (1, self.cfg.n_mels, self.cfg.target_frames)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"ImageBind audio expects clips of shape [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
        tokens = self.patch_norm(self.patch_embed(x).flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.blocks(tokens)
        z = self.head_proj(self.head_norm(tokens)[:, 0])
        scale = self.log_logit_scale.exp().clamp(max=self.cfg.max_logit_scale)
        return nn.functional.normalize(z, dim=-1) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return self.embed_clips(x)
        b, s = x.shape[:2]
        return self.embed_clips(x.reshape(b * s, *x.shape[2:])).reshape(b, s, -1).mean(dim=1)


def to_official_key(key: str) -> str:
    """This module's state-dict key -> the official checkpoint's key."""
    inverse = {v: k for k, v in _RENAMES.items()}
    return inverse.get(key, _TRUNK + key)


def from_official_key(key: str) -> str:
    """The official checkpoint's audio key -> this module's key."""
    if key in _RENAMES:
        return _RENAMES[key]
    if key.startswith(_TRUNK + "blocks."):
        return key[len(_TRUNK):]
    raise KeyError(key)


def official_state_dict(model: ImageBindAudio) -> dict[str, torch.Tensor]:
    """The model's weights under the official checkpoint's key names."""
    return {to_official_key(k): v for k, v in model.state_dict().items()}


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The audio tensors of a checkpoint, memory-mapped so that other modalities are never read."""
    state = load_checkpoint(path, "cpu", mmap=True)  # refuses code objects with a message of ours
    for wrapper in ("model", "state_dict"):  # some copies nest the state dict one level down
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state dict (found {type(state).__name__})")
    audio = {k: v for k, v in state.items() if k.startswith(AUDIO_PREFIXES)}
    if not audio:
        raise UserError(
            f"{path}: no ImageBind audio weights (no key starts with 'modality_trunks.audio.'); "
            f"expected imagebind_huge.pth or a file written by `dsaml export-imagebind-audio`"
        )
    return audio


def load_imagebind_audio(path: str | Path, cfg: ImageBindAudioConfig | None = None) -> ImageBindAudio:
    """Build the audio branch and load its weights from an official or audio-only checkpoint (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ImageBind checkpoint not found. {how_to_get_checkpoint()}")
    audio = _read_checkpoint(path)
    try:
        cfg = cfg or ImageBindAudioConfig.from_state_dict(audio)
    except KeyError as exc:
        raise UserError(f"{path}: incomplete ImageBind audio weights: missing {exc.args[0]}") from exc
    model = ImageBindAudio(cfg)
    expected = {to_official_key(k): v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(audio))
    unexpected = sorted(set(audio) - set(expected))
    wrong = sorted(k for k in set(expected) & set(audio) if tuple(audio[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [f"missing {show(missing)}" if missing else "", f"unexpected {show(unexpected)}" if unexpected else "",
                 f"wrong shape {show(wrong)}" if wrong else ""]
        raise UserError(f"{path}: audio weights do not fit {cfg}: " + "; ".join(p for p in parts if p))
    model.load_state_dict({from_official_key(k): v for k, v in audio.items()})
    return model.eval()


def export_audio_checkpoint(src: str | Path, out: str | Path) -> int:
    """Write the audio tensors of `src` (same key names) to `out`; returns the number of tensors."""
    src, out = Path(src), Path(out)
    model = load_imagebind_audio(src)  # validates the weights before anything is written
    state = {k: v.detach().clone() for k, v in official_state_dict(model).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    return len(state)


def how_to_get_checkpoint() -> str:
    """One paragraph telling the user where to get imagebind_huge.pth and where to put it."""
    return (
        f"Download imagebind_huge.pth (~4.5 GB, ImageBind weights, non-commercial Creative Commons licence: "
        f"CC BY-NC 4.0 per the ImageBind README) from {CHECKPOINT_URL} and either put it at "
        f"{DEFAULT_CHECKPOINTS[1]}, pass --checkpoint PATH, or set {CHECKPOINT_ENV}=PATH. "
        f"`dsaml export-imagebind-audio --checkpoint imagebind_huge.pth --out {DEFAULT_CHECKPOINTS[0]}` "
        f"keeps only the audio weights (~350 MB). Or choose another encoder (--encoder musicnn|vibenet|none)."
    )


def find_checkpoint(checkpoint: str | Path | None = None) -> Path | None:
    """The ImageBind checkpoint configured by argument, then $DSAML_IMAGEBIND_CHECKPOINT, then data/checkpoints/."""
    if checkpoint:
        return Path(checkpoint)
    if os.environ.get(CHECKPOINT_ENV):
        return Path(os.environ[CHECKPOINT_ENV])
    return next((p for p in DEFAULT_CHECKPOINTS if p.is_file()), None)
