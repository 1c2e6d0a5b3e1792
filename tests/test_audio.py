"""Decoding, mono mixing, resampling, slicing (the label/audio alignment) and content digests."""

import hashlib

import numpy as np
import pytest
import soundfile as sf

from dsaml_utils.errors import DataError
from dsaml_utils.features.audio import load_audio, slice_audio
from dsaml_utils.io.provenance import audio_digest


def tone(freq, seconds, sr, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave, sr):
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spec) * sr / len(wave)


# --- slicing: slice i covers [t_i, t_i + 0.5) ------------------------------------------------------


def test_slice_i_starts_at_its_label_time_and_lasts_half_a_second():
    sr = 44100
    wave = np.arange(46 * sr, dtype=np.float32)  # each sample's value is its own index (exact in float32)
    times = 15.0 + 0.5 * np.arange(60)  # DEAM's sample_15000ms .. sample_44500ms
    slices = slice_audio(wave, sr, times)
    assert slices.shape == (60, 22050) and slices.dtype == np.float32
    for i, t in enumerate(times):
        assert slices[i, 0] == t * sr  # first sample is at t_i
        assert slices[i, -1] == (t + 0.5) * sr - 1  # last sample is just before t_i + 0.5
    assert np.all(np.diff(slices, axis=1) == 1)  # contiguous


def test_slice_start_is_rounded_to_nearest_sample():
    sr = 1000
    wave = np.arange(5000, dtype=np.float32)
    slices = slice_audio(wave, sr, [0.0014, 0.0016, 1.2345678], hop=0.25)
    assert slices.shape == (3, 250)
    assert list(slices[:, 0]) == [1.0, 2.0, 1235.0]


def test_slice_zero_pads_before_start_and_past_end():
    sr = 100
    wave = np.ones(300, dtype=np.float32)  # 3 s of ones
    slices = slice_audio(wave, sr, [-0.2, 2.8, 5.0])
    assert slices.shape == (3, 50)
    assert np.all(slices[0, :20] == 0) and np.all(slices[0, 20:] == 1)
    assert np.all(slices[1, :20] == 1) and np.all(slices[1, 20:] == 0)
    assert np.all(slices[2] == 0)


def test_slice_empty_times_and_bad_shape():
    assert slice_audio(np.zeros(100, np.float32), 100, []).shape == (0, 50)
    with pytest.raises(ValueError, match="mono"):
        slice_audio(np.zeros((2, 100), np.float32), 100, [0.0])


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_decode_each_format_duration_rate_and_pitch(tmp_path, fmt):
    sr = 44100
    path = tmp_path / f"song.{fmt.lower()}"
    sf.write(path, tone(440.0, 2.0, sr), sr, format=fmt)
    wave, rate = load_audio(path)
    assert rate == sr and wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / sr - 2.0) < 0.03  # lossy codecs may add or drop a few ms
    assert abs(peak_hz(wave, sr) - 440.0) < 2.0


def test_stereo_is_mixed_to_mono(tmp_path):
    sr = 8000
    left, right = tone(300, 1.0, sr, 0.2), tone(300, 1.0, sr, 0.6)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    wave, _ = load_audio(path)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)


def test_resampling_changes_length_and_keeps_pitch(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1000.0, 3.0, 44100), 44100, subtype="FLOAT")
    wave, rate = load_audio(path, sr=16000)
    assert rate == 16000 and wave.dtype == np.float32
    assert len(wave) == 48000  # 3 s * 16 kHz
    assert abs(peak_hz(wave, 16000) - 1000.0) < 2.0
    same, rate2 = load_audio(path, sr=44100)  # no-op resample
    assert rate2 == 44100 and len(same) == 3 * 44100


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.mp3"
    with pytest.raises(DataError, match="nope.mp3.*not found"):
        load_audio(path)


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.mp3.*empty"):
        load_audio(path)


@pytest.mark.parametrize("content", [b"ID3 not really an mp3 " * 50, b"\xff\xfb\x90\x00" + b"\x00" * 40])
def test_corrupt_mp3_names_the_file(tmp_path, content):
    path = tmp_path / "1234.mp3"
    path.write_bytes(content)
    with pytest.raises(DataError, match="1234.mp3.*cannot decode"):
        load_audio(path)


# --- content digest -------------------------------------------------------------------------------


def test_audio_digest_is_sha256_of_bytes_and_tracks_content(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, tone(440, 0.5, 8000), 8000)
    b.write_bytes(a.read_bytes())
    assert audio_digest(a) == audio_digest(b) == hashlib.sha256(a.read_bytes()).hexdigest()
    sf.write(b, tone(441, 0.5, 8000), 8000)
    assert audio_digest(a) != audio_digest(b)
    with pytest.raises(DataError, match="missing.wav"):
        audio_digest(tmp_path / "missing.wav")
