"""ImageBind's waveform path as Meta's code has it: torchaudio's windowed-sinc resampler, channel 0, the pinned
pytorchvideo clip positions, the whole file; and `dsaml embed --encoder imagebind` against a reference written
here from those rules (facebookresearch/ImageBind imagebind/data.py, torchaudio 0.13 functional.resample)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from dsaml_utils import cli
from dsaml_utils.encoders.imagebind import (
    CHECKPOINT_ENV,
    ImageBindAudioConfig,
    load_imagebind_audio,
)
from dsaml_utils.encoders.registry import (
    EMBED_VERSION,
    GlobalEncoder,
    embed_song,
    get_encoder,
)
from dsaml_utils.features.audio import load_audio, load_audio_imagebind
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.features.kaldi import (
    constant_clip_bounds,
    imagebind_clips,
    kaldi_fbank,
)
from dsaml_utils.features.resample import resampled_length, sinc_resample

TINY = ImageBindAudioConfig(embed_dim=64, depth=1, num_heads=1, out_dim=1024)  # official key layout, small


def direct_resample(x, orig, new, lowpass_filter_width=6, rolloff=0.99):
    """Each output sample as its own sum over the input, from the rule in torchaudio's resampler comments.

    y[n] = sum_i x[i] (c / orig) sinc(u) cos(pi u / (2 w))^2, u = c (i / orig - n / new) clipped to [-w, w],
    c = rolloff * min(orig, new), x = 0 outside the signal; ceil(len * new / orig) outputs. Evaluated in
    float64 in plain seconds (no gcd reduction, no polyphase table), vectorised over n by gathering, for each
    output sample, the input samples within its window.
    """
    x = np.asarray(x, dtype=np.float64)
    c = rolloff * min(orig, new)
    n_out = math.ceil(Fraction(len(x) * new, orig))
    reach = lowpass_filter_width * orig / c  # input samples on either side with a non-zero window
    n = np.arange(n_out)
    first = np.floor(n * orig / new - reach).astype(np.int64) - 1
    i = first[:, None] + np.arange(int(2 * reach) + 4)[None, :]  # [n_out, taps]: each output's own inputs
    u = np.clip(c * (i / orig - n[:, None] / new), -lowpass_filter_width, lowpass_filter_width)
    weight = (c / orig) * np.sinc(u) * np.cos(np.pi * u / (2 * lowpass_filter_width)) ** 2
    inside = (i >= 0) & (i < len(x))
    return np.sum(np.where(inside, weight * x[np.clip(i, 0, max(len(x) - 1, 0))], 0.0), axis=1)


def stereo_fixture(path, seconds=6.5, sr=44100):
    """A stereo WAV whose two channels differ and whose spectrum changes over time (up to 22 kHz)."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * sr)) / sr
    chirp = np.sin(2 * np.pi * (100 * t + 0.5 * (7500 - 100) / seconds * t**2))  # 100 Hz -> 7.6 kHz
    left = 0.4 * chirp * (0.3 + t / seconds) + 0.05 * rng.standard_normal(len(t))
    right = 0.3 * np.sin(2 * np.pi * 440 * t) * np.cos(np.pi * t / seconds) + 0.2 * rng.standard_normal(len(t))
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="PCM_16")
    return path


def meta_clips(wave16, spacing_steps):
    """Meta's clip handling on a [channels, n] 16 kHz float32 array: [3, 1, 128, 204] normalised fbanks.

    Clips: start k * Fraction(max(n / 16000 - 2, 0)) / spacing_steps s (the sampler's rule; ImageBind passes a
    float duration), samples int(start * 16000) .. int(end * 16000); each clip's mean over all channels is
    subtracted in place from the waveform (waveform2melspec on a view), then the fbank reads channel 0.
    """
    wave = torch.from_numpy(np.array(wave16, dtype=np.float32))
    last = Fraction(max(wave.shape[1] / 16000 - 2.0, 0))
    out = []
    for k in range(3):
        start = last / spacing_steps * k
        clip = wave[:, int(start * 16000):int((start + 2) * 16000)]
        clip -= clip.mean()
        fb = kaldi_fbank(clip[0]).T  # torchaudio's fbank: channel=-1 -> max(channel, 0) = 0
        fb = torch.nn.functional.pad(fb, (0, 204 - fb.shape[1])) if fb.shape[1] < 204 else fb[:, :204]
        out.append((fb + 4.268) / 9.138)
    return torch.stack(out).unsqueeze(1)


def meta_read(path):
    """Meta's reading of a file: torchaudio.load ([channels, n] float32, the same PCM scaling as soundfile),
    then every channel resampled to 16 kHz by torchaudio.functional.resample (here: direct_resample)."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = data.T
    if sr != 16000:
        wave = np.stack([direct_resample(ch, sr, 16000) for ch in wave])
    return wave.astype(np.float32)


def meta_embedding(wave16, model, spacing_steps=2):
    """The model on meta_clips of a [channels, n] 16 kHz array: Meta's load_and_transform_audio_data + forward."""
    with torch.no_grad():
        return model(meta_clips(wave16, spacing_steps)[None])[0].numpy()


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """(path, Meta's 16 kHz reading of it): 6.5 s stereo at 44.1 kHz, clips 0-2, 2.25-4.25 and 4.5-6.5 s."""
    path = stereo_fixture(tmp_path_factory.mktemp("song") / "song.wav")
    return path, meta_read(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_imagebind import (
        write_official_checkpoint,  # tests/ is on sys.path under pytest
    )

    path = tmp_path_factory.mktemp("ckpt") / "imagebind_tiny.pth"
    write_official_checkpoint(path, TINY)
    return path


# --- (c) the resampler ---------------------------------------------------------------------------


@pytest.mark.parametrize("orig", [44100, 48000, 22050])
def test_sinc_resample_equals_direct_formula(orig):
    rng = np.random.default_rng(orig)
    t = np.arange(int(0.3 * orig)) / orig
    x = rng.standard_normal(len(t)) * 0.3 + 0.5 * np.sin(2 * np.pi * 7900 * t)  # energy up to Nyquist
    ours = sinc_resample(x.astype(np.float32), orig, 16000)
    ref = direct_resample(x.astype(np.float32), orig, 16000)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    two = sinc_resample(torch.from_numpy(np.stack([x, -2 * x]).astype(np.float32)), orig, 16000)
    assert isinstance(two, torch.Tensor) and two.shape == (2, len(ref))  # per channel, along the last axis
    np.testing.assert_allclose(two[1].numpy(), -2 * ref, rtol=0, atol=4e-6)
    assert np.abs(soxr.resample(x, orig, 16000, quality="HQ")[: len(ref)] - ref).max() > 1e-3  # soxr is not it


def test_sinc_resample_upsampling_and_other_rates():
    x = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    for orig, new in [(16000, 44100), (8000, 16000), (11025, 16000), (96000, 16000)]:
        np.testing.assert_allclose(sinc_resample(x, orig, new), direct_resample(x, orig, new), rtol=0, atol=2e-6)


def test_resampled_length_rule():
    for orig, new in [(44100, 16000), (48000, 16000), (22050, 16000), (16000, 44100)]:
        for n in [0, 1, 2, 440, 441, 442, 2999, 3000, 44100, 44101]:
            expected = math.ceil(Fraction(n * new, orig))  # torchaudio keeps ceil(new * n / orig) samples
            assert resampled_length(n, orig, new) == expected
            assert len(sinc_resample(np.ones(n, np.float32), orig, new)) == expected
    x = np.arange(5, dtype=np.float32)
    assert np.array_equal(sinc_resample(x, 16000, 16000), x)  # equal rates: unchanged, as torchaudio
    with pytest.raises(ValueError, match="positive integers"):
        sinc_resample(x, 44100.5, 16000)
    with pytest.raises(ValueError, match="positive integers"):
        sinc_resample(x, 0, 16000)


# --- (a) clip positions --------------------------------------------------------------------------


def test_clip_bounds_pinned_and_old_spacing_by_hand():
    n = 100_000  # 6.25 s at 16 kHz (exact in binary): the last clip may start at 4.25 s
    # Pinned: steps of 4.25 / 2 = 2.125 s -> starts 0, 34000, 68000; the last clip ends at the file's end.
    assert constant_clip_bounds(n, 16000) == [(0, 32000), (34000, 66000), (68000, 100000)]
    # pytorchvideo 0.1.5: steps of 4.25 / 3 s -> starts 0, 22666.67, 45333.33 s * 16000, truncated.
    assert constant_clip_bounds(n, 16000, clip_spacing="pytorchvideo-0.1.5") == [
        (0, 32000), (22666, 54666), (45333, 77333)]
    # Shorter than a clip: the last start is 0, all three clips are the whole wave.
    for spacing in ("pinned", "pytorchvideo-0.1.5"):
        assert constant_clip_bounds(20000, 16000, clip_spacing=spacing) == [(0, 20000)] * 3
    # The duration is a float: 700001 / 16000 = 43.7500625 is stored just below, so (d - 2) * 16000 is
    # 668000.99.. and truncates to 668000 (an exact fraction would give 668001).
    assert Fraction(700001 / 16000) < Fraction(700001, 16000)
    assert constant_clip_bounds(700001, 16000)[2] == (668000, 700000)
    assert constant_clip_bounds(40000, 16000, n_clips=1) == [(0, 32000)]
    with pytest.raises(ValueError, match="clip_spacing"):
        constant_clip_bounds(n, 16000, clip_spacing="uniform")


def test_imagebind_clips_default_is_pinned_spacing():
    wave = torch.from_numpy(np.random.default_rng(3).standard_normal(100_000).astype(np.float32))
    expected = {"pinned": [(0, 32000), (34000, 66000), (68000, 100000)],
                "pytorchvideo-0.1.5": [(0, 32000), (22666, 54666), (45333, 77333)]}
    for spacing, bounds in expected.items():
        out = imagebind_clips(wave) if spacing == "pinned" else imagebind_clips(wave, clip_spacing=spacing)
        for k, (a, b) in enumerate(bounds):
            clip = wave[a:b]
            ref = (kaldi_fbank(clip - clip.mean()).T + 4.268) / 9.138
            torch.testing.assert_close(out[k, 0, :, :198], ref)


# --- (b) channel 0, the loader ---------------------------------------------------------------------


def test_load_audio_imagebind_reads_channel_0_resampled(tmp_path):
    path = stereo_fixture(tmp_path / "stereo.wav", seconds=1.0)
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    wave, sr = load_audio_imagebind(path)
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == (16000,)
    np.testing.assert_allclose(wave, direct_resample(data[:, 0], 44100, 16000), rtol=0, atol=2e-6)
    assert np.abs(wave - direct_resample(data.mean(axis=1), 44100, 16000)).max() > 0.1  # not the mono mix

    native = tmp_path / "native.wav"  # at 16 kHz no resampling happens: channel 0 exactly
    sf.write(native, data[:16000], 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio_imagebind(native)[0], data[:16000, 0])


def test_other_encoders_keep_the_soxr_mono_mix(tmp_path):
    class Recorder(GlobalEncoder):
        name, dim, identity = "recorder", 1, "r"

        def embed(self, wave):
            self.wave = wave
            return np.zeros(1, np.float32)

    path = stereo_fixture(tmp_path / "stereo.wav", seconds=1.0)
    rec = Recorder()
    embed_song(rec, path, None)
    mono, _ = load_audio(path, 16000)
    np.testing.assert_array_equal(rec.wave, mono)
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    np.testing.assert_allclose(mono, soxr.resample(data.mean(axis=1), 44100, 16000, quality="HQ"), atol=1e-6)


# --- (d) `dsaml embed --encoder imagebind` equals Meta's pipeline ------------------------------------


def test_cli_embed_imagebind_equals_meta_pipeline(tmp_path, song, checkpoint, monkeypatch, capsys):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    wav, wave16 = song
    out = tmp_path / "z.npy"
    args = ["embed", str(wav), "--encoder", "imagebind", "--checkpoint", str(checkpoint), "--no-cache"]
    assert cli.main([*args, "--out", str(out)]) == 0  # the whole file: a 15 s default start would fail here
    assert "1 x 1024 imagebind" in capsys.readouterr().out
    z = np.load(out)[0]
    model = load_imagebind_audio(checkpoint)
    ref = meta_embedding(wave16, model)
    assert z.shape == (1024,)
    np.testing.assert_allclose(z, ref, rtol=0, atol=1e-4)

    # Reverting any one change moves the vector well past that tolerance.
    data, _ = sf.read(str(wav), dtype="float32", always_2d=True)
    mixed = direct_resample(data.mean(axis=1), 44100, 16000)[None].astype(np.float32)
    soxr0 = soxr.resample(data[:, 0], 44100, 16000, quality="HQ")[None].astype(np.float32)
    with torch.no_grad():
        reverted = {
            "mono mix": model(meta_clips(mixed, 2)[None])[0].numpy(),
            "soxr": model(meta_clips(soxr0, 2)[None])[0].numpy(),
            "0.1.5 spacing": meta_embedding(wave16, model, spacing_steps=3),
        }
        old_wave, _ = load_audio(wav, 16000)  # the old path: soxr mono mix, 0.1.5 spacing
        old_clips = imagebind_clips(old_wave, clip_spacing="pytorchvideo-0.1.5")
        reverted["old preprocessing"] = model(old_clips[None])[0].numpy()
    for what, vec in reverted.items():
        assert np.abs(vec - z).max() > 1e-2, what

    # The excerpt flags still reach an excerpt: 0.25 s + 6.25 s of the resampled channel 0 (at least 6 s, so
    # that the clips do not overlap: see imagebind_clips on Meta's in-place mean subtraction).
    assert cli.main([*args, "--start", "0.25", "--duration", "6.25", "--out", str(out), "--overwrite"]) == 0
    part = np.load(out)[0]
    np.testing.assert_allclose(part, meta_embedding(wave16[:, 4000:104000], model), rtol=0, atol=1e-4)
    assert np.abs(part - z).max() > 1e-2


def test_old_imagebind_cache_entries_are_not_reused(tmp_path, song, checkpoint):
    wav, wave16 = song
    cache = FeatureCache(tmp_path / "cache")
    old = get_encoder("imagebind", checkpoint)
    old.version = EMBED_VERSION  # an entry written by the previous preprocessing (mono mix + soxr)
    old.load = lambda path: load_audio(path, 16000)
    stale = embed_song(old, wav, cache)
    new = get_encoder("imagebind", checkpoint)
    fresh = embed_song(new, wav, cache)
    assert cache.misses == 2 and np.abs(fresh - stale).max() > 1e-2
    older_spacing = get_encoder("imagebind", checkpoint, clip_spacing="pytorchvideo-0.1.5")
    assert older_spacing.identity != new.identity  # its own cache entries
    np.testing.assert_allclose(embed_song(older_spacing, wav, cache),
                               meta_embedding(wave16, load_imagebind_audio(checkpoint), spacing_steps=3), atol=1e-4)
    assert cache.misses == 3
