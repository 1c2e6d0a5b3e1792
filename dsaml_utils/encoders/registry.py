"""Global audio encoders: one frozen pretrained embedding z_g per song excerpt, broadcast over time by the model.

Encoders (``get_encoder(name)``):

- ``imagebind``: ImageBind-huge's audio branch (the paper's choice, 1024-d), ``dsaml_utils.imagebind``;
  needs the user's local ``imagebind_huge.pth`` (non-commercial licence).
- ``musicnn`` (the default without ImageBind): the MSD tagging CNN of the PyPI package ``musicnn`` 0.1.0
  (ISC), 1506-d max+mean-pooled mid-end features averaged over 3 s patches. Its TensorFlow-1 checkpoint is
  read without TensorFlow into a torch port (``dsaml_utils.music_encoders``); install the wheel with
  ``pip install --no-deps musicnn==0.1.0`` (its declared dependencies do not install on Python 3.11).
- ``vibenet``: the EfficientNet-B0 of the PyPI package ``vibenet`` 0.1.0 (distilled on FMA to predict
  valence, energy, ...), 1280-d pooled features, read from the ONNX file in its wheel. GPL-3.0-or-later
  weights: opt-in (``pip install --no-deps vibenet==0.1.0``).
- ``none``: no global feature (dim 0); the model then runs on its local features alone.

Excerpt rule: training embeds a song over its labelled span, ``[t_0, t_last + 0.5)`` of its mean curve
(``song_excerpt``) -- 15-45 s for a DEAM 45 s clip, the annotated part for a full song or a PMEmo chorus.
``dsaml embed`` embeds 15 s + 30 s by default (a DEAM clip's span), except for imagebind, whose default is
the whole file (as Meta's ``load_and_transform_audio_data`` does); ``--start/--duration`` choose an
excerpt, ``--whole`` the whole file.

Each encoder reads a file with its own ``load``: imagebind as Meta's code does (channel 0, torchaudio's
windowed-sinc resampler: ``features.audio.load_audio_imagebind``), the others as a soxr-resampled mono mix.
``ImageBindEncoder(native_rate=True)`` reads it as the DSAML authors' code does (protocol "authors", issue 11
point 4: the mono mix at 44.1 kHz, its fbank at 44.1 kHz); their excerpts are ``encoders.authors``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dsaml_utils.data.types import HOP_SECONDS, MEAN, MusicDataset, Song
from dsaml_utils.encoders import imagebind
from dsaml_utils.encoders.taggers import (
    MUSICNN_MODELS,
    load_musicnn,
    load_vibenet_backbone,
    musicnn_patches,
    vibenet_mel,
)
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.audio import load_audio, load_audio_imagebind
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.kaldi import CLIP_SPACINGS, imagebind_clips
from dsaml_utils.features.resample import sinc_resample
from dsaml_utils.io.provenance import audio_digest

ENCODERS = ("imagebind", "musicnn", "vibenet", "none")


ENCODER_DIMS = {"imagebind": 1024, "musicnn": 1506, "vibenet": 1280, "none": 0}
"""Embedding size of each encoder as get_encoder builds it (ImageBind-huge audio; musicnn pooled features)."""


AUTHORS_RATE = 44100
"""The rate at which the DSAML authors feed ImageBind (Littleor/Personalized-DMER models/image_bind.py:
sample_rate=44100 for both the file reading and load_and_transform_audio_data)."""


NORMALIZED_ENCODERS = ("imagebind",)
"""Encoders whose output is already L2-normalised and scaled; the others' raw features need normalising."""


EMBED_VERSION = 1
"""Bumped whenever the encoders change what they compute, so old cache entries stop matching (an encoder
class can bump its own ``version`` instead, as ImageBindEncoder does)."""


MUSICNN_ENV = "DSAML_MUSICNN_CHECKPOINT"


MUSICNN_INSTALL = (
    "install its weights with `pip install --no-deps musicnn==0.1.0` (a 29 MB wheel of TensorFlow checkpoints, "
    "ISC licence; --no-deps is required: its declared numpy<1.17 and tensorflow do not install on Python 3.11 "
    "and are not used), or set "
    f"{MUSICNN_ENV}=path/to/MSD_musicnn/ (the folder holding .index), or choose --encoder none|vibenet|imagebind"
)


VIBENET_ENV = "DSAML_VIBENET_ONNX"


VIBENET_INSTALL = (
    "install its weights with `pip install --no-deps vibenet==0.1.0` (an 18 MB wheel holding the ONNX file, "
    "GPL-3.0-or-later; --no-deps skips ~330 MB of vibenet's own runtime that dsaml does not use), "
    f"or set {VIBENET_ENV}=path/to/efficientnet_model.onnx, or choose --encoder none|musicnn|imagebind"
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
    version: int = EMBED_VERSION  # what the encoder computes (bumped when that changes), part of every cache key

    def load(self, path: str | Path) -> tuple[np.ndarray, int]:
        """The waveform this encoder embeds from an audio file: a soxr-resampled mono mix at self.sample_rate."""
        return load_audio(path, self.sample_rate)

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """[dim] float32 embedding of a mono waveform at self.sample_rate."""
        return np.zeros(0, dtype=np.float32)

    def embed_many(self, waves: list[np.ndarray]) -> np.ndarray:
        """[len(waves), dim] float32 embeddings of several waveforms at self.sample_rate."""
        return np.stack([self.embed(w) for w in waves]).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, sample_rate={self.sample_rate})"


class NoEncoder(GlobalEncoder):
    """No global feature: embeds every song as an empty vector."""


class ImageBindEncoder(GlobalEncoder):
    """ImageBind-huge audio: channel 0 at 16 kHz, 3 clips of 2 s -> mean of scaled unit-norm 1024-d embeddings.

    Preprocessing is Meta's ``load_and_transform_audio_data``: channel 0, torchaudio's windowed-sinc
    resampler, clips at the start, middle and end (``clip_spacing="pinned"``; "pytorchvideo-0.1.5" gives the
    older spacing the DSAML authors' requirements pin, see features.kaldi.CLIP_SPACINGS). ``native_rate``:
    the authors' input instead, the mono mix at 44.1 kHz, clipped and fbanked at 44.1 kHz (AUTHORS_RATE).
    """

    name = "imagebind"
    version = 2  # 2: Meta's waveform path (channel 0, sinc resampler, pinned clip spacing); 1 was mono + soxr
    clip_spacing = "pinned"
    native_rate = False

    def __init__(self, checkpoint: str | Path, device: str = "cpu", clip_spacing: str = "pinned",
                 native_rate: bool = False) -> None:
        if clip_spacing not in CLIP_SPACINGS:
            raise UserError(f"unknown clip_spacing {clip_spacing!r}; choose one of {', '.join(CLIP_SPACINGS)}")
        self.model = imagebind.load_imagebind_audio(checkpoint).to(device)
        self.device, self.clip_spacing = device, clip_spacing
        self.dim = self.model.cfg.out_dim
        self.identity = file_identity(checkpoint) + ("" if clip_spacing == "pinned" else f":{clip_spacing}")
        if native_rate:  # its own cache entries: another reading of the file, another fbank
            self.native_rate, self.sample_rate = True, AUTHORS_RATE
            self.identity += f":mono{AUTHORS_RATE}"

    def load(self, path: str | Path) -> tuple[np.ndarray, int]:
        """Channel 0 of the file, resampled to 16 kHz as torchaudio.functional.resample does (Meta's reading);
        native_rate: the mono mix at 44.1 kHz (the authors' utils/music/util.py `read_wav_as_tensor`: each
        channel resampled by torchaudio's default when the file's rate differs, then the channel mean)."""
        if not self.native_rate:
            return load_audio_imagebind(path, self.sample_rate)
        wave, sr = load_audio(path)  # the channel mean at the file's rate (the resampler is linear)
        return (sinc_resample(wave, sr, self.sample_rate) if sr != self.sample_rate else wave), self.sample_rate

    def clips(self, wave: np.ndarray) -> torch.Tensor:
        """The model's input for a waveform at self.sample_rate: [n_clips, 1, n_mels, target_frames]."""
        cfg = self.model.cfg
        return imagebind_clips(wave, target_frames=cfg.target_frames, num_mel_bins=cfg.n_mels,
                               clip_spacing=self.clip_spacing, sample_rate=self.sample_rate)

    def embed(self, wave: np.ndarray) -> np.ndarray:
        return self.embed_many([wave])[0]

    def embed_many(self, waves: list[np.ndarray]) -> np.ndarray:
        batch = torch.stack([self.clips(w) for w in waves])
        with torch.inference_mode():
            return self.model(batch.to(self.device)).float().cpu().numpy()


def _installed_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing (running) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


def find_vibenet_onnx(path: str | Path | None = None) -> Path:
    """vibenet's ONNX file: the given path, then $DSAML_VIBENET_ONNX, then the installed vibenet package."""
    if path or os.environ.get(VIBENET_ENV):
        p = Path(path or os.environ[VIBENET_ENV])
        if not p.is_file():
            raise UserError(f"{p}: vibenet ONNX file not found; {VIBENET_INSTALL}")
        return p
    found = _installed_file("vibenet", "artifacts/efficientnet_model.onnx")
    if found is None:
        raise UserError(f"the vibenet encoder's weights are not installed: {VIBENET_INSTALL}")
    return found


def find_musicnn_checkpoint(path: str | Path | None = None, model: str = "MSD_musicnn") -> Path:
    """Folder of a musicnn checkpoint: the given path, then $DSAML_MUSICNN_CHECKPOINT, then the installed package."""
    if path or os.environ.get(MUSICNN_ENV):
        p = Path(path or os.environ[MUSICNN_ENV])
        if not (p / ".index").is_file():
            raise UserError(f"{p}: no musicnn checkpoint here (expected {p / '.index'}); {MUSICNN_INSTALL}")
        return p
    found = _installed_file("musicnn", f"{model}/.index")
    if found is None:
        raise UserError(f"the musicnn encoder's weights are not installed: {MUSICNN_INSTALL}")
    return found.parent


class MusicnnEncoder(GlobalEncoder):
    """musicnn (MSD tagger by default): 16 kHz log-mel 3 s patches -> 1506-d pooled features, mean over patches."""

    name = "musicnn"
    FEATURES = {"pool": 1506, "penultimate": 200}

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", model: str = "MSD_musicnn",
                 feature: str = "pool") -> None:
        if model not in MUSICNN_MODELS or feature not in self.FEATURES:
            raise UserError(f"musicnn model must be one of {MUSICNN_MODELS} and feature one of {tuple(self.FEATURES)}")
        folder = find_musicnn_checkpoint(checkpoint, model)
        self.model = load_musicnn(f"{folder}/").to(device)  # musicnn's checkpoint prefix is the folder itself
        self.device, self.feature, self.dim = device, feature, self.FEATURES[feature]
        self.identity = f"{feature}:{file_identity(folder / '.data-00000-of-00001')}"

    def embed(self, wave: np.ndarray) -> np.ndarray:
        patches = torch.from_numpy(musicnn_patches(wave)).to(self.device)
        with torch.inference_mode():
            pool, penultimate, _ = self.model(patches)
        return (pool if self.feature == "pool" else penultimate).mean(dim=0).float().cpu().numpy()


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


def default_encoder_name(checkpoint: str | Path | None = None) -> str:
    """imagebind when an ImageBind checkpoint is configured (argument, env var, data/checkpoints/), else musicnn."""
    return "imagebind" if imagebind.find_checkpoint(checkpoint) is not None else "musicnn"


def get_encoder(name: str, checkpoint: str | Path | None = None, device: str = "cpu",
                clip_spacing: str = "pinned", native_rate: bool = False) -> GlobalEncoder:
    """The encoder called `name`; `checkpoint`: ImageBind's .pth, musicnn's folder or vibenet's .onnx.

    The checkpoint is found when omitted; `clip_spacing` (imagebind only): features.kaldi.CLIP_SPACINGS;
    `native_rate` (imagebind only): the authors' 44.1 kHz mono input (ImageBindEncoder).
    """
    if name == "none":
        return NoEncoder()
    if name == "imagebind":
        path = imagebind.find_checkpoint(checkpoint)
        if path is None:
            raise UserError(f"no ImageBind checkpoint configured. {imagebind.how_to_get_checkpoint()}")
        return ImageBindEncoder(path, device, clip_spacing, native_rate)
    if name == "musicnn":
        return MusicnnEncoder(checkpoint, device)
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
        wave, sr = encoder.load(audio_path)
        a = int(round((start or 0.0) * sr))
        if a >= len(wave):
            raise DataError(f"{audio_path}: excerpt starts at {start} s but the audio lasts {len(wave) / sr:.2f} s")
        b = len(wave) if duration is None else min(len(wave), a + int(round(duration * sr)))
        return np.asarray(encoder.embed(wave[a:b]), dtype=np.float32)

    if cache is None:
        return compute()
    return cache.get_or_compute("global", embedding_key(encoder, audio_path, start=start, duration=duration),
                                compute)


def embedding_key(encoder: GlobalEncoder, audio_path: Path, **rule) -> dict:
    """The feature-cache key of one embedding: the audio's content, the encoder (name, weights, input rate,
    version) and `rule` (what part of the audio, and how)."""
    return {"audio": audio_digest(audio_path), "encoder": encoder.name, "weights": encoder.identity,
            "sample_rate": encoder.sample_rate, "version": encoder.version, **rule}


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
