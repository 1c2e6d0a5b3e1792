"""Log-mel, Kaldi fbank, ImageBind clips, the feature cache and per-song features."""

import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import dsaml_utils.features.cache as feature_cache
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song
from dsaml_utils.errors import DataError
from dsaml_utils.features.audio import load_audio, slice_audio
from dsaml_utils.features.cache import FeatureCache, dataset_features, song_features
from dsaml_utils.features.kaldi import (
    constant_clip_bounds,
    imagebind_clips,
    kaldi_fbank,
    kaldi_mel_banks,
    kaldi_mel_centers,
)
from dsaml_utils.features.mel import (
    MelConfig,
    hz_to_mel,
    log_mel,
    mel_centers,
    mel_filterbank,
    mel_to_hz,
)


def tone(freq, seconds, sr, amp=0.5):
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- per-slice log-mel ----------------------------------------------------------------------------


def test_mel_config_defaults_are_the_authors():
    cfg = MelConfig()
    assert (cfg.sample_rate, cfg.n_mels, cfg.win_length, cfg.hop_length) == (44100, 128, 2646, 441)
    assert cfg.slice_samples == 22050 and cfg.n_frames == 51
    assert MelConfig(center=False).n_frames == 1 + (22050 - 2646) // 441


def test_log_mel_shape_for_30_seconds():
    sr = 44100
    wave = np.random.default_rng(0).standard_normal(46 * sr).astype(np.float32) * 0.1
    slices = slice_audio(wave, sr, 15.0 + 0.5 * np.arange(60))
    mel = log_mel(torch.from_numpy(slices))
    assert mel.shape == (60, 51, 128) and mel.dtype == torch.float32
    assert torch.isfinite(mel).all()


@pytest.mark.parametrize("band", [30, 60, 100])
def test_log_mel_pure_tone_peaks_in_its_band(band):
    cfg = MelConfig()
    freq = mel_centers(cfg)[band]
    slices = tone(freq, 1.0, cfg.sample_rate).reshape(2, -1)
    mel = log_mel(slices, cfg)
    assert (mel.mean(dim=1).argmax(dim=-1) == band).all()


def test_log_mel_of_silence_is_log_offset():
    mel = log_mel(np.zeros((2, 22050), np.float32))
    torch.testing.assert_close(mel, torch.full((2, 51, 128), math.log(1e-6)))


def test_log_mel_is_per_slice_and_chunking_does_not_matter():
    x = torch.randn(5, 22050) * 0.1
    whole = log_mel(x)
    torch.testing.assert_close(log_mel(x, chunk=2), whole)
    torch.testing.assert_close(log_mel(x[3:4]), whole[3:4])
    assert log_mel(torch.zeros(0, 22050)).shape == (0, 51, 128)
    with pytest.raises(ValueError, match="slices"):
        log_mel(torch.zeros(22050))


def test_htk_mel_scale():
    assert hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2))
    f = np.array([0.0, 440.0, 22050.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)
    centres = mel_centers(MelConfig(n_mels=4, f_max=8000.0))
    assert len(centres) == 4 and np.all(np.diff(hz_to_mel(centres)) == pytest.approx(hz_to_mel(8000) / 5))


def test_mel_filterbank_triangles_peak_at_their_centres():
    cfg = MelConfig()
    fb = mel_filterbank(1324, 44100, 128)
    assert fb.shape == (1324, 128) and fb.min() >= 0 and fb.max() <= 1
    bin_width = 44100 / 2646
    peak_hz = fb.argmax(dim=0).numpy() * bin_width
    assert np.all(np.abs(peak_hz - mel_centers(cfg)) < bin_width)  # within one FFT bin of the centre
    assert (fb.max(dim=0).values > 0.5).all()  # no band is empty


# --- Kaldi fbank ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [400, 559, 560, 16000, 32000])
def test_kaldi_frame_count(n):
    out = kaldi_fbank(torch.randn(n))
    assert out.shape == (1 + (n - 400) // 160, 128)


def test_kaldi_pure_tone_lands_in_its_bin():
    centres = kaldi_mel_centers(128, 16000)
    for b in (40, 90):
        out = kaldi_fbank(tone(centres[b], 1.0, 16000))
        assert out.mean(dim=0).argmax().item() == b


def test_kaldi_dc_offset_is_removed_per_frame():
    x = torch.from_numpy(tone(1000, 0.5, 16000, 0.3))
    base = kaldi_fbank(x)
    torch.testing.assert_close(kaldi_fbank(x + 0.5), base, atol=1e-3, rtol=0)
    kept = kaldi_fbank(x + 0.5, remove_dc_offset=False)
    assert (kept[:, :5] - base[:, :5]).mean() > 1.0  # the offset's energy shows in the lowest bins


def test_kaldi_preemphasis_gain_matches_its_transfer_function():
    # y[j] = x[j] - c x[j-1] scales a tone's power by |1 - c e^{-iw}|^2 = 1 - 2c cos w + c^2.
    centres = kaldi_mel_centers(128, 16000)
    for b in (20, 100):
        x = tone(centres[b], 0.5, 16000)
        gain = kaldi_fbank(x, preemphasis=0.97)[:, b] - kaldi_fbank(x, preemphasis=0.0)[:, b]
        w = 2 * math.pi * centres[b] / 16000
        expected = math.log(1 - 2 * 0.97 * math.cos(w) + 0.97**2)
        assert abs(gain.mean().item() - expected) < 0.05


def test_kaldi_options_and_errors():
    x = torch.randn(4000)
    outs = {w: kaldi_fbank(x, window_type=w) for w in ("hanning", "povey", "hamming", "rectangular")}
    assert all(o.shape == (23, 128) for o in outs.values())
    assert not torch.allclose(outs["hanning"], outs["povey"])
    assert kaldi_fbank(x, num_mel_bins=40).shape == (23, 40)
    assert kaldi_fbank(x, round_to_power_of_two=False).shape == (23, 128)
    silent = kaldi_fbank(torch.zeros(800))
    torch.testing.assert_close(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))
    with pytest.raises(ValueError, match="window_type"):
        kaldi_fbank(x, window_type="triangle")
    with pytest.raises(ValueError, match="shorter than one"):
        kaldi_fbank(torch.randn(399))


def test_kaldi_mel_banks_layout():
    banks = kaldi_mel_banks(128, 512, 16000)
    assert banks.shape == (128, 257) and banks.min() >= 0 and banks.max() <= 1
    assert (banks[:, -1] == 0).all()  # the Nyquist bin carries no weight
    assert (banks[:, 0] == 0).all()  # DC (0 Hz) is below low_freq = 20 Hz
    with pytest.raises(ValueError, match="mel range"):
        kaldi_mel_banks(128, 512, 16000, low_freq=9000)


# --- ImageBind clips ------------------------------------------------------------------------------


def test_constant_clip_bounds_by_hand():
    # 30 s: last possible start 28 s; ImageBind's pinned sampler puts clips every 28/2 s (start, middle, end),
    # pytorchvideo 0.1.5 every 28/3 s.
    assert constant_clip_bounds(30 * 16000, 16000) == [(0, 32000), (224000, 256000), (448000, 480000)]
    assert constant_clip_bounds(30 * 16000, 16000, clip_spacing="pytorchvideo-0.1.5") == [
        (0, 32000), (149333, 181333), (298666, 330666)]
    assert constant_clip_bounds(16000, 16000) == [(0, 16000)] * 3  # shorter than a clip: whole wave, 3x
    assert constant_clip_bounds(32000, 16000, n_clips=2) == [(0, 32000)] * 2


def test_imagebind_clips_match_fbank_of_each_clip():
    wave = torch.randn(10 * 16000) * 0.1
    out = imagebind_clips(wave)
    assert out.shape == (3, 1, 128, 204)
    for k, (a, b) in enumerate(constant_clip_bounds(len(wave), 16000)):
        clip = wave[a:b]
        ref = (kaldi_fbank(clip - clip.mean()).T - (-4.268)) / 9.138  # 198 frames for 2 s
        torch.testing.assert_close(out[k, 0, :, :198], ref)
        torch.testing.assert_close(out[k, 0, :, 198:], torch.full((128, 6), 4.268 / 9.138))


def test_imagebind_clips_short_and_cut():
    assert imagebind_clips(torch.randn(100)).shape == (3, 1, 128, 204)  # shorter than one frame
    assert imagebind_clips(torch.randn(5 * 16000), clip_seconds=3, target_frames=100).shape == (3, 1, 128, 100)


# --- cache ----------------------------------------------------------------------------------------


def test_cache_hit_miss_and_types(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    key = {"audio": "abc", "cfg": MelConfig(), "times": np.array([15.0, 15.5])}
    a = cache.get_or_compute("mel", key, compute)
    b = FeatureCache(tmp_path).get_or_compute("mel", key, compute)  # a fresh cache object: a second run
    assert len(calls) == 1 and np.array_equal(a, b) and b.dtype == np.float32
    cache.get_or_compute("mel", {**key, "audio": "abd"}, compute)
    assert len(calls) == 2 and (cache.hits, cache.misses) == (0, 2)

    d = cache.get_or_compute("pair", {"k": 1}, lambda: {"x": np.ones(2), "y": np.zeros((1, 2))})
    d2 = cache.get_or_compute("pair", {"k": 1}, lambda: pytest.fail("recomputed"))
    assert set(d2) == {"x", "y"} and np.array_equal(d["y"], d2["y"])
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_cache_recovers_from_a_corrupt_entry_and_rejects_bad_input(tmp_path):
    cache = FeatureCache(tmp_path)
    path = cache.path_for("mel", {"k": 1})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    assert cache.get_or_compute("mel", {"k": 1}, lambda: np.ones(3)).sum() == 3
    assert cache.get_or_compute("mel", {"k": 1}, lambda: np.zeros(3)).sum() == 3  # now a valid hit
    with pytest.raises(ValueError, match="simple name"):
        cache.path_for("../x", {})
    with pytest.raises(TypeError, match="ndarray"):
        cache.get_or_compute("bad", {}, lambda: [1, 2])
    with pytest.raises(TypeError, match="JSON"):
        cache.path_for("mel", {"x": object()})


# --- per-song features ----------------------------------------------------------------------------


def make_song(path, song_id="7", seconds=3.0, freq=440.0):
    sf.write(path, tone(freq, seconds, 44100), 44100, subtype="FLOAT")
    times = 0.5 * np.arange(int(seconds * 2))
    curve = Curve(times, np.zeros(len(times)), np.zeros(len(times)))
    return Song(song_id, path, {MEAN: curve})


def test_song_features_values_shapes_and_second_run_computes_nothing(tmp_path, monkeypatch):
    song = make_song(tmp_path / "7.wav")
    cfg = MelConfig()
    decodes = []
    real_load = feature_cache.load_audio
    monkeypatch.setattr(feature_cache, "load_audio", lambda *a, **k: decodes.append(a) or real_load(*a, **k))

    cache = FeatureCache(tmp_path / "cache")
    out = song_features(song, cfg, cache, wave_sr=16000)
    assert out["mel"].shape == (6, 51, 128) and out["wave"].shape == (6, 8000)
    assert out["mel"].dtype == np.float32 and np.array_equal(out["times"], song.curves[MEAN].times)
    wave, sr = load_audio(song.audio_path, 44100)
    np.testing.assert_allclose(out["mel"], log_mel(slice_audio(wave, sr, out["times"]), cfg).numpy())
    assert len(decodes) == 2 and cache.misses == 2

    again = song_features(song, cfg, FeatureCache(tmp_path / "cache"), wave_sr=16000)
    assert len(decodes) == 2  # nothing decoded or computed on the second run
    np.testing.assert_array_equal(again["mel"], out["mel"])

    other = song_features(song, MelConfig(n_mels=64), cache)  # a setting change is a new entry
    assert other["mel"].shape == (6, 51, 64) and len(decodes) == 3


def test_song_features_recompute_when_the_audio_file_changes(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    song = make_song(tmp_path / "7.wav", freq=440.0)
    first = song_features(song, MelConfig(), cache)["mel"]
    make_song(tmp_path / "7.wav", freq=2000.0)  # same path, new content
    second = song_features(song, MelConfig(), cache)["mel"]
    assert cache.misses == 2 and not np.allclose(first, second)


def test_song_features_listener_times_and_errors(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    song = make_song(tmp_path / "7.wav")
    out = song_features(song, MelConfig(), cache, listener_times=[1.0, 1.5])
    assert out["mel"].shape == (2, 51, 128)
    with pytest.raises(DataError, match="song 8: no audio"):
        song_features(Song("8", None, song.curves), MelConfig(), cache)
    with pytest.raises(DataError, match="song 9: no 'mean' curve"):
        song_features(Song("9", song.audio_path, {}), MelConfig(), cache)


def test_dataset_features_skips_and_records_a_corrupt_song(tmp_path):
    songs = {sid: make_song(tmp_path / f"{sid}.wav", sid, seconds=1.0) for sid in ("1", "2", "3")}
    (tmp_path / "2.wav").write_bytes(b"garbage" * 20)
    ds = MusicDataset("synthetic", tmp_path, songs, ["1", "2", "3"], [], (-1.0, 1.0))
    out = dataset_features(ds, ["1", "2", "3"], MelConfig(), FeatureCache(tmp_path / "cache"), wave_sr=16000)
    assert sorted(out) == ["1", "3"] and out["1"]["mel"].shape == (2, 51, 128)
    assert len(ds.problems) == 1 and "song 2" in ds.problems[0] and "2.wav" in ds.problems[0]
    assert os.path.isdir(tmp_path / "cache" / "mel")


def test_log_mel_equals_a_direct_numpy_stft():
    # Centred STFT written out by hand: reflect-pad half a window, periodic hann, |rfft|^2, mel, log.
    cfg = MelConfig()
    x = np.random.default_rng(1).standard_normal(22050).astype(np.float64) * 0.1
    n, hop = cfg.win_length, cfg.hop_length
    padded = np.pad(x, n // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    frames = np.stack([padded[i * hop:i * hop + n] * window for i in range(51)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    expected = np.log(power @ mel_filterbank(n // 2 + 1, 44100, 128).double().numpy() + 1e-6)
    np.testing.assert_allclose(log_mel(x[None].astype(np.float32), cfg)[0].numpy(), expected, atol=2e-3)


@pytest.mark.parametrize("sr,win,hop", [(44100, 60, 10), (22050, 60, 20), (16000, 60, 20), (22050, 25, 10)])
def test_n_frames_matches_log_mel_for_odd_and_even_windows(sr, win, hop):
    cfg = MelConfig(sample_rate=sr, n_mels=16, win_ms=win, hop_ms=hop)
    out = log_mel(torch.zeros(2, cfg.slice_samples), cfg)
    assert out.shape[1] == cfg.n_frames
