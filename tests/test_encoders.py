"""Global encoders: vibenet front end and weights reader, encoder choice, excerpt rule, cache, `dsaml embed`."""

import struct

import numpy as np
import pytest
import soundfile as sf
import torch

import dsaml_utils.encoders.registry as encoder_registry
from dsaml_utils import cli
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, Song
from dsaml_utils.encoders.imagebind import (
    CHECKPOINT_ENV,
    CHECKPOINT_URL,
    ImageBindAudioConfig,
)
from dsaml_utils.encoders.registry import (
    ENCODER_DIMS,
    MUSICNN_ENV,
    VIBENET_ENV,
    GlobalEncoder,
    MusicnnEncoder,
    NoEncoder,
    VibeNetEncoder,
    dataset_embeddings,
    default_encoder_name,
    embed_song,
    file_identity,
    find_musicnn_checkpoint,
    find_vibenet_onnx,
    get_encoder,
    song_excerpt,
)
from dsaml_utils.encoders.taggers import (
    EfficientNetB0,
    Musicnn,
    load_musicnn,
    load_vibenet_backbone,
    musicnn_patches,
    read_onnx_initializers,
    read_tf_checkpoint,
    slaney_mel_filterbank,
    vibenet_mel,
)
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features.cache import FeatureCache

# ---------------------------------------------------------------------------------------------------
# A tiny protobuf writer, to build ONNX files in the layout vibenet's exporter produced


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload, wire: int = 2) -> bytes:
    tag = _varint(number << 3 | wire)
    return tag + (_varint(payload) if wire == 0 else _varint(len(payload)) + payload)


def _tensor(name: str, arr: np.ndarray, style: str = "raw") -> bytes:
    dims = (_field(1, b"".join(_varint(d) for d in arr.shape)) if style != "unpacked"
            else b"".join(_field(1, d, wire=0) for d in arr.shape))
    dtype = {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.float64): 11}[arr.dtype]
    body = dims + _field(2, dtype, wire=0) + _field(8, name.encode())
    if style == "float_data":
        body += _field(4, arr.astype("<f4").tobytes())
    else:
        body += _field(9, arr.tobytes())
    return body


def write_onnx(path, tensors: dict, styles: dict | None = None) -> None:
    """An ONNX ModelProto holding `tensors` as graph initializers (plus a node and other fields to skip)."""
    styles = styles or {}
    graph = _field(1, _field(4, b"Conv") + _field(1, b"x"))  # a NodeProto, ignored by the reader
    graph += b"".join(_field(5, _tensor(k, v, styles.get(k, "raw"))) for k, v in tensors.items())
    graph += _field(2, b"main_graph")
    path.write_bytes(_field(1, 10, wire=0) + _field(2, b"pytorch") + _field(7, graph))


def randomize_stats(model) -> None:
    """Non-trivial BatchNorm statistics and biases, in place (a fresh model's are 1 / 0)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias")):
                t.normal_(0, 0.1)


def write_vibenet_onnx(path, seed=0) -> EfficientNetB0:
    """A vibenet-like ONNX file: random EfficientNet-B0 weights named backbone.*, plus head weights."""
    torch.manual_seed(seed)
    model = EfficientNetB0()
    randomize_stats(model)
    tensors = {f"backbone.{k}": v.numpy() for k, v in model.state_dict().items() if "num_batches" not in k}
    tensors["trunk.0.weight"] = np.ones(1280, np.float32)
    tensors["val_482"] = np.array([1, 1280], np.int64)
    write_onnx(path, tensors)
    return model.eval()


def write_tf_checkpoint(prefix: str, variables: dict) -> None:
    """A TensorFlow tensor bundle: prefix.data-00000-of-00001 (raw tensors) + prefix.index (a LevelDB table)."""
    data, entries, offset = b"", [(b"", _field(1, 1, wire=0))], 0  # the empty key holds the bundle header
    for name in sorted(variables):
        arr = np.array(variables[name], dtype="<f4", order="C")  # (ascontiguousarray would make scalars 1-d)
        shape = b"".join(_field(2, _field(1, d, wire=0)) for d in arr.shape)
        entry = _field(1, 1, wire=0) + _field(2, shape) + _field(4, offset, wire=0) + _field(5, arr.nbytes, wire=0)
        entries.append((name.encode(), entry))
        data, offset = data + arr.tobytes(), offset + arr.nbytes

    def block(items):  # no key sharing, one restart point; then the 5-byte trailer (no compression, crc)
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in items)
        return body + struct.pack("<II", 0, 1), b"\x00\x00\x00\x00\x00"

    data_block, trailer = block(entries)
    index_block, _ = block([(entries[-1][0], _varint(0) + _varint(len(data_block)))])
    index_off = len(data_block) + 5
    footer = (_varint(0) + _varint(0) + _varint(index_off) + _varint(len(index_block))).ljust(40, b"\x00")
    with open(f"{prefix}.index", "wb") as f:
        f.write(data_block + trailer + index_block + trailer + footer + struct.pack("<Q", 0xDB4775248B80FB57))
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:
        f.write(data)


def musicnn_tf_variables(model: Musicnn) -> dict:
    """A torch Musicnn's weights under TensorFlow's variable names and layouts (the inverse of loading)."""
    modules = dict(model.named_modules())
    out = {}
    for tf_name, name in zip(_TF_LAYERS, _TORCH_LAYERS):
        mod = modules[name]
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            pairs = {"gamma": mod.weight, "beta": mod.bias, "moving_mean": mod.running_mean,
                     "moving_variance": mod.running_var}
        else:
            w = mod.weight.detach()
            kernel = w.T if w.ndim == 2 else w.permute(2, 1, 0)[:, :, None, :] if w.ndim == 3 else w.permute(2, 3, 1, 0)
            pairs = {"kernel": kernel, "bias": mod.bias}
        out.update({f"{tf_name}/{k}": v.detach().contiguous().numpy() for k, v in pairs.items()})
    return out


_TF_LAYERS = (["batch_normalization", "conv2d", "batch_normalization_1", "conv2d_1", "batch_normalization_2"]
              + [f"conv2d_{2 + i}" for i in range(3)] + [f"batch_normalization_{3 + i}" for i in range(3)]
              + [f"conv2d_{5 + i}" for i in range(3)] + [f"batch_normalization_{6 + i}" for i in range(3)]
              + ["batch_normalization_9", "dense", "batch_normalization_10", "dense_1"])
_TORCH_LAYERS = (["input_bn", "timbral.0", "timbral_bn.0", "timbral.1", "timbral_bn.1"]
                 + [f"temporal.{i}" for i in range(3)] + [f"temporal_bn.{i}" for i in range(3)]
                 + [f"mid.{i}" for i in range(3)] + [f"mid_bn.{i}" for i in range(3)]
                 + ["pool_bn", "dense", "dense_bn", "out"])


def random_musicnn(seed=0) -> Musicnn:
    torch.manual_seed(seed)
    model = Musicnn()
    randomize_stats(model)
    return model.eval()


@pytest.fixture(scope="module")
def musicnn_dir(tmp_path_factory):
    """A folder laid out like musicnn/MSD_musicnn/ in the wheel, with random weights."""
    folder = tmp_path_factory.mktemp("musicnn") / "MSD_musicnn"
    folder.mkdir()
    model = random_musicnn()
    write_tf_checkpoint(f"{folder}/", {**musicnn_tf_variables(model), "beta1_power": np.ones((), np.float32)})
    return folder, model


@pytest.fixture(scope="module")
def vibenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vibenet") / "efficientnet_model.onnx"
    return path, write_vibenet_onnx(path)


def write_wav(path, seconds, sr=16000):
    """A wav whose sample i holds i / n (a ramp), so an excerpt's first sample tells where it starts."""
    n = int(seconds * sr)
    sf.write(path, (np.arange(n) / n).astype(np.float32), sr, subtype="FLOAT")
    return path


class Recorder(GlobalEncoder):
    """A fake encoder that records the waveforms it is given."""

    name, dim, sample_rate, identity = "recorder", 2, 16000, "r1"

    def __init__(self):
        self.waves = []

    def embed(self, wave):
        self.waves.append(wave)
        return np.array([len(wave), wave[0]], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# vibenet front end and model


def test_slaney_filterbank_matches_librosa_reference():
    fb = slaney_mel_filterbank(16000, 1024, 128, 0.0, 8000.0)
    assert fb.shape == (128, 513) and (fb >= 0).all()
    # Reference values from librosa 0.11 filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0, fmax=8000).
    for (i, j), ref in {(0, 1): 0.028577780351042747, (0, 2): 0.02837754227221012, (10, 16): 0.029578963294625282,
                        (64, 109): 0.020523004233837128, (127, 500): 0.005223188549280167, (10, 20): 0.0}.items():
        assert fb[i, j] == pytest.approx(ref, rel=1e-5, abs=1e-9)
    area = fb.sum(axis=1) * (8000 / 512)  # Slaney normalisation: each filter has unit area in Hz
    assert np.allclose(area, 1.0, rtol=0.15) and abs(area.mean() - 1.0) < 0.01


def test_vibenet_mel_matches_reference_and_layout():
    t = np.arange(32000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    mel = vibenet_mel(wave)
    assert mel.shape == (128, 1 + (32000 - 640) // 320) and mel.dtype == np.float32
    # Reference values from vibenet 0.1.0's extract_mel on the same signal.
    for (i, j), ref in {(18, 50): 24.99789810180664, (17, 50): 23.320098876953125, (71, 50): 15.952472686767578,
                        (20, 50): 4.212808132171631, (0, 0): -55.00210189819336}.items():
        assert mel[i, j] == pytest.approx(ref, abs=1e-3)
    assert mel.max() - mel.min() == pytest.approx(80.0, abs=1e-3)  # top_db clamp
    assert vibenet_mel(np.zeros(100, np.float32)).shape == (128, 1)  # shorter than a window: one frame


def test_efficientnet_b0_layout():
    model = EfficientNetB0()
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 4_007_548  # torchvision B0 minus its classifier
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.0.block.1.fc1.weight"].shape == (8, 32, 1, 1)
    assert state["features.6.3.block.2.fc2.weight"].shape == (1152, 48, 1, 1)
    assert state["features.8.0.weight"].shape == (1280, 320, 1, 1)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 128, 16)).shape == (2, 1280)


def test_read_onnx_initializers(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(3.5).reshape(()),
               "c": np.array([[1.0, -2.0]], np.float32), "shape": np.array([1, 1280], np.int64),
               "d": np.array([1.0], np.float64)}
    path = tmp_path / "m.onnx"
    write_onnx(path, tensors, styles={"c": "float_data", "a": "unpacked"})
    got = read_onnx_initializers(path)
    assert set(got) == {"a", "b", "c", "shape"}  # float64 is not a type vibenet uses: skipped
    for k in got:
        np.testing.assert_array_equal(got[k], tensors[k])
        assert got[k].dtype == tensors[k].dtype and got[k].shape == tensors[k].shape
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0f\xff")
    with pytest.raises(UserError, match="bad.onnx"):
        read_onnx_initializers(bad)


def test_vibenet_encoder_loads_onnx_weights_and_embeds(vibenet_file, tmp_path, monkeypatch):
    path, model = vibenet_file
    monkeypatch.setenv(VIBENET_ENV, str(path))
    enc = get_encoder("vibenet")
    assert isinstance(enc, VibeNetEncoder) and (enc.dim, enc.sample_rate) == (1280, 16000)
    assert enc.identity == file_identity(path)
    wave = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    z = enc.embed(wave)
    with torch.no_grad():
        ref = model(torch.from_numpy(vibenet_mel(wave))[None])[0].numpy()
    assert z.shape == (1280,) and z.dtype == np.float32
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)  # weights loaded, channels-last changes nothing
    partial = tmp_path / "partial.onnx"
    write_onnx(partial, {"backbone.features.0.0.weight": np.zeros((32, 3, 3, 3), np.float32)})
    with pytest.raises(UserError, match="partial.onnx.*missing"):
        load_vibenet_backbone(partial)


def test_find_vibenet_onnx_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(VIBENET_ENV, str(tmp_path / "missing.onnx"))
    with pytest.raises(UserError, match="missing.onnx.*pip install --no-deps vibenet==0.1.0"):
        find_vibenet_onnx()
    monkeypatch.delenv(VIBENET_ENV)
    monkeypatch.setattr(encoder_registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="not installed.*--encoder none"):
        find_vibenet_onnx()
    pkg = tmp_path / "site" / "vibenet"
    (pkg / "artifacts").mkdir(parents=True)
    (pkg / "artifacts" / "efficientnet_model.onnx").write_bytes(b"x")
    spec = type("Spec", (), {"submodule_search_locations": [str(pkg)]})()
    monkeypatch.setattr(encoder_registry.importlib.util, "find_spec", lambda name: spec)
    assert find_vibenet_onnx() == pkg / "artifacts" / "efficientnet_model.onnx"


# ---------------------------------------------------------------------------------------------------
# Choosing an encoder


def test_get_encoder_and_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    none = get_encoder("none")
    assert isinstance(none, NoEncoder) and none.dim == 0 and none.embed(np.zeros(10)).shape == (0,)
    with pytest.raises(UserError, match="unknown encoder 'clap'"):
        get_encoder("clap")
    with pytest.raises(UserError, match="no ImageBind checkpoint configured.*imagebind_huge.pth"):
        get_encoder("imagebind")
    assert default_encoder_name() == "musicnn"
    assert default_encoder_name("some/imagebind_huge.pth") == "imagebind"
    monkeypatch.setenv(CHECKPOINT_ENV, "x.pth")
    assert default_encoder_name() == "imagebind"


def test_imagebind_encoder_from_checkpoint(tmp_path):
    from test_imagebind import (
        write_official_checkpoint,  # tests/ is on sys.path under pytest
    )

    path = tmp_path / "imagebind_audio.pth"
    write_official_checkpoint(path, ImageBindAudioConfig(embed_dim=64, depth=1, num_heads=1, out_dim=48))
    enc = get_encoder("imagebind", path)
    assert (enc.name, enc.dim, enc.sample_rate) == ("imagebind", 48, 16000)
    z = enc.embed(np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32))
    assert z.shape == (48,) and np.linalg.norm(z) <= 20.0 + 1e-4  # mean of three norm-20 clip vectors


# ---------------------------------------------------------------------------------------------------
# Excerpts, cache, datasets, CLI


def test_embed_song_excerpt_and_cache(tmp_path):
    path = write_wav(tmp_path / "song.wav", 50.0)
    enc, cache = Recorder(), FeatureCache(tmp_path / "cache")
    z = embed_song(enc, path, cache, start=15.0, duration=30.0)
    assert z.tolist() == pytest.approx([30 * 16000, 15 / 50], rel=1e-4)  # 30 s starting at 15 s
    assert embed_song(enc, path, cache, 15.0, 30.0).tolist() == z.tolist()
    assert (len(enc.waves), cache.hits) == (1, 1)  # second call read the cache
    embed_song(enc, path, cache, 40.0, 30.0)  # runs past the end: the excerpt stops there
    assert len(enc.waves[-1]) == 10 * 16000
    whole = embed_song(enc, path, None)
    assert whole[0] == 50 * 16000 and len(enc.waves) == 3
    enc.identity = "other weights"
    embed_song(enc, path, cache, 15.0, 30.0)
    assert len(enc.waves) == 4  # different weights, different cache entry
    with pytest.raises(DataError, match="song.wav.*starts at 60"):
        embed_song(enc, path, cache, 60.0, 30.0)
    assert embed_song(NoEncoder(), tmp_path / "absent.wav", cache).shape == (0,)


def test_song_excerpt_and_dataset_embeddings(tmp_path):
    times = 15.0 + 0.5 * np.arange(60)
    curve = Curve(times, np.zeros(60), np.zeros(60))
    songs = {
        "2": Song("2", write_wav(tmp_path / "2.wav", 45.0), {MEAN: curve}),
        "3": Song("3", None, {MEAN: curve}),
        "4": Song("4", write_wav(tmp_path / "4.wav", 5.0), {}),
    }
    assert song_excerpt(songs["2"]) == (15.0, 30.0)
    assert song_excerpt(songs["4"]) == (None, None)
    ds = MusicDataset("synthetic", tmp_path, songs, ["2", "3", "4"], [], (-1.0, 1.0))
    out = dataset_embeddings(Recorder(), ds, ["2", "3", "4"], FeatureCache(tmp_path / "cache"))
    assert sorted(out) == ["2", "4"]
    assert out["2"][0] == 30 * 16000 and out["4"][0] == 5 * 16000
    assert any("song 3" in p for p in ds.problems)


def test_cli_embed(tmp_path, musicnn_dir, monkeypatch, capsys):
    monkeypatch.setenv(MUSICNN_ENV, str(musicnn_dir[0]))
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    a, b = write_wav(tmp_path / "a.wav", 1.0), write_wav(tmp_path / "b.wav", 1.5)
    out = tmp_path / "emb.npy"
    assert cli.main(["embed", str(a), str(b), "--whole", "--out", str(out), "--cache", str(tmp_path / "c")]) == 0
    emb = np.load(out)
    assert emb.shape == (2, 1506)  # default encoder without an ImageBind checkpoint: musicnn
    np.testing.assert_allclose(emb[1], embed_song(get_encoder("musicnn"), b, None), rtol=1e-5, atol=1e-6)
    assert "2 x 1506 musicnn" in capsys.readouterr().out

    assert cli.main(["embed", str(a), "--encoder", "none", "--out", str(out), "--overwrite"]) == 0
    assert np.load(out).shape == (1, 0)
    assert cli.main(["embed", str(a), "--out", str(out), "--no-cache", "--overwrite"]) == 2  # 15 s start > 1 s file
    assert "a.wav" in capsys.readouterr().err
    assert cli.main(["embed", str(a), "--encoder", "imagebind", "--out", str(out), "--overwrite"]) == 2
    assert CHECKPOINT_URL in capsys.readouterr().err


def test_file_identity_follows_content(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    assert file_identity(a) == file_identity(b)  # same content, other name
    b.write_bytes(b"x" * 2_999_999 + b"y")  # last MiB differs
    assert file_identity(a) != file_identity(b)
    b.write_bytes(b"x" * 3_000_001)  # size differs
    assert file_identity(a) != file_identity(b)


# ---------------------------------------------------------------------------------------------------
# musicnn


def test_musicnn_patches_match_reference():
    t = np.arange(32000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    p = musicnn_patches(wave)
    assert p.shape == (1, 187, 96) and p.dtype == np.float32  # 126 frames, repeated to fill one patch
    # Reference values: log10(1 + 10000 * librosa 0.11 melspectrogram(sr=16000, n_fft=512, hop=256, n_mels=96)).
    for (i, j), ref in {(60, 13): 6.090806007385254, (60, 53): 5.210804462432861, (0, 0): 3.516463041305542,
                        (60, 0): 0.0007358837756328285}.items():
        assert p[0, i, j] == pytest.approx(ref, abs=2e-5)
    np.testing.assert_array_equal(p[0, 126:], p[0, :61])
    assert musicnn_patches(np.zeros(16000 * 30, np.float32)).shape == (10, 187, 96)  # 1876 frames: 10 patches


def test_read_tf_checkpoint_and_errors(tmp_path):
    variables = {"a/kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 1, 4), "a/bias": np.ones(4, np.float32),
                 "scalar": np.float32(2.5).reshape(())}
    write_tf_checkpoint(f"{tmp_path}/", variables)  # musicnn's naming: files ".index" and ".data-..." in a folder
    got = read_tf_checkpoint(f"{tmp_path}/")
    assert set(got) == set(variables)
    for k, v in variables.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].shape == v.shape
    (tmp_path / "bad.index").write_bytes(b"\x00" * 60)
    with pytest.raises(UserError, match="bad.index.*magic"):
        read_tf_checkpoint(tmp_path / "bad")
    with pytest.raises(UserError, match="nothing.index"):
        read_tf_checkpoint(tmp_path / "nothing")


def test_musicnn_model_layout_and_loading(musicnn_dir, tmp_path):
    folder, model = musicnn_dir
    n = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert n == 792_079  # the MSD checkpoint's 792,081 floats less Adam's two beta powers
    loaded = load_musicnn(f"{folder}/")
    x = torch.randn(2, 187, 96)
    with torch.no_grad():
        pool, pen, logits = loaded(x)
        ref = model(x)
    assert (pool.shape, pen.shape, logits.shape) == ((2, 1506), (2, 200), (2, 50))
    for a, b in zip((pool, pen, logits), ref):
        torch.testing.assert_close(a, b)
    # Pooled features interleave max and mean over time per channel, as TensorFlow flattens [753, 2].
    assert torch.all(pool[:, 0::2] >= pool[:, 1::2] - 1e-6)
    write_tf_checkpoint(f"{tmp_path}/", {"conv2d/kernel": np.zeros((7, 38, 1, 204), np.float32)})
    with pytest.raises(UserError, match="not a musicnn checkpoint"):
        load_musicnn(f"{tmp_path}/")


def test_musicnn_encoder(musicnn_dir, monkeypatch):
    folder, model = musicnn_dir
    monkeypatch.setenv(MUSICNN_ENV, str(folder))
    enc = get_encoder("musicnn")
    assert isinstance(enc, MusicnnEncoder) and (enc.dim, enc.sample_rate) == (1506, 16000)
    assert enc.dim == ENCODER_DIMS["musicnn"] and VibeNetEncoder.dim == ENCODER_DIMS["vibenet"]
    wave = np.random.default_rng(0).standard_normal(16000 * 7).astype(np.float32) * 0.1
    z = enc.embed(wave)
    with torch.no_grad():
        ref = model(torch.from_numpy(musicnn_patches(wave)))[0].mean(0).numpy()
    assert z.shape == (1506,)
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)
    pen = MusicnnEncoder(folder, feature="penultimate")
    assert pen.embed(wave).shape == (200,) and pen.identity != enc.identity
    with pytest.raises(UserError, match="feature"):
        MusicnnEncoder(folder, feature="logits")


def test_find_musicnn_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv(MUSICNN_ENV, str(tmp_path))
    with pytest.raises(UserError, match="no musicnn checkpoint.*pip install --no-deps musicnn==0.1.0"):
        find_musicnn_checkpoint()
    monkeypatch.delenv(MUSICNN_ENV)
    monkeypatch.setattr(encoder_registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="not installed"):
        find_musicnn_checkpoint()
    (tmp_path / "musicnn" / "MSD_musicnn").mkdir(parents=True)
    (tmp_path / "musicnn" / "MSD_musicnn" / ".index").write_bytes(b"x")
    spec = type("Spec", (), {"submodule_search_locations": [str(tmp_path / "musicnn")]})()
    monkeypatch.setattr(encoder_registry.importlib.util, "find_spec", lambda name: spec)
    assert find_musicnn_checkpoint() == tmp_path / "musicnn" / "MSD_musicnn"


def test_installed_musicnn_weights_reproduce_tensorflow(monkeypatch):
    """The real MSD checkpoint (installed by `make venv` from requirements-weights.txt) through our port gives
    the logits that musicnn's own TensorFlow graph gives (TensorFlow 2.21, legacy Keras, same input)."""
    monkeypatch.delenv(MUSICNN_ENV, raising=False)
    t = np.arange(16000 * 3) / 16000
    wave = (0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1500 * t) * (t % 0.5 < 0.1)).astype(np.float32)
    model = load_musicnn(f"{find_musicnn_checkpoint()}/")
    with torch.no_grad():
        pool, _, logits = model(torch.from_numpy(musicnn_patches(wave)))
    tf_logits = [-4.193759918212891, -4.5258283615112305, -3.361064910888672, -2.4409782886505127,
                 -0.0034728050231933594, -3.0388035774230957]
    np.testing.assert_allclose(logits[0, :6].numpy(), tf_logits, atol=1e-4)
    assert pool[0, 2 * 752] == pytest.approx(25.278400421142578, rel=1e-4)  # max over time of channel 752
    assert pool[0, 2 * 752 + 1] == pytest.approx(0.276480108499527, rel=1e-3)  # its mean
