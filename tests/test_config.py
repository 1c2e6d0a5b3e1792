"""Run presets: paper values, computed deviations, run identity, JSON round trip, overrides and errors."""

import json

import pytest

from dsaml_utils.errors import UserError
from dsaml_utils.training.config import (
    NOT_DEVIATIONS,
    PRESETS,
    REASONS,
    SMOKE,
    EvalConfig,
    RunConfig,
    TrainConfig,
    _flat,
    apply_overrides,
    deviations,
    preset,
    resolve_run,
)


def test_paper_preset_holds_the_papers_values(monkeypatch, tmp_path):
    monkeypatch.setenv("DSAML_IMAGEBIND_CHECKPOINT", str(tmp_path / "imagebind_huge.pth"))
    cfg = preset("paper")
    assert (cfg.train.lr, cfg.train.steps, cfg.train.window) == (5e-5, 2000, 60)
    m = cfg.meta
    assert (m.inner_lr, m.inner_steps, m.tasks_per_step, m.support_songs, m.query_songs, m.first_order) == \
        (5e-3, 16, 16, 1, 15, True)
    assert (cfg.mel.sample_rate, cfg.mel.n_mels, cfg.mel.n_frames) == (44100, 128, 51)
    assert cfg.encoder == "auto" and resolve_run(cfg).encoder == "imagebind" and cfg.model == "dsaml"
    assert deviations(cfg) == [] and cfg.to_dict()["deviations"] == []
    assert (cfg.tasks.min_songs, cfg.tasks.flat_threshold, cfg.tasks.flat_window) == (16, 0.01, 60)
    assert cfg.model_overrides() == {"n_frames": 51, "n_mels": 128, "global_dim": 1024, "normalize_global": False}


def test_encoder_auto_falls_back_to_the_offline_encoder(monkeypatch, tmp_path):
    monkeypatch.delenv("DSAML_IMAGEBIND_CHECKPOINT", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/checkpoints/ here
    cfg = preset("paper")
    assert cfg.encoder == "auto"  # resolved when a run starts, not when a config is made
    assert resolve_run(cfg).encoder == "musicnn"
    over = cfg.model_overrides()
    assert over["global_dim"] == 1506 and over["normalize_global"] is True
    with pytest.raises(UserError, match="encoder 'clap'"):
        RunConfig(encoder="clap")


def test_quick_preset_records_its_deviations_and_fits_the_model():
    cfg = preset("quick")
    assert cfg.preset == "quick" and cfg.dataset == "synthetic"
    devs = deviations(cfg)
    assert any(d.startswith("mel.n_mels: 128 -> 96: ") for d in devs)
    assert any(d.startswith("train.lr: 5e-05 -> 0.001: ") for d in devs)
    assert cfg.to_dict()["deviations"] == devs
    over = cfg.model_overrides()
    assert over["n_mels"] == cfg.mel.n_mels == 96 and over["n_frames"] == 13 and over["use_global_encoder"] is False


def test_strategy_defaults_follow_the_mode():
    assert RunConfig(mode="pdmer").strategy == "personalized"
    assert RunConfig(mode="dmer").strategy == "traditional"
    assert RunConfig(mode="dmer", strategy="personalized").maml is False
    with pytest.raises(UserError, match="mode"):
        RunConfig(mode="maml")
    with pytest.raises(UserError, match="strategy"):
        RunConfig(strategy="random")


def test_json_round_trip(tmp_path):
    cfg = preset("quick")
    apply_overrides(cfg, ["eval.kshots=[1, 3]", "model_config.d_model=32", "train.grad_clip=1.5"])
    cfg.save(tmp_path / "config.json")
    back = RunConfig.load(tmp_path / "config.json")
    assert back.to_dict() == cfg.to_dict()
    assert back.eval.kshots == (1, 3) and isinstance(back.train, TrainConfig)
    assert back.mel.n_mels == 96 and back.model_config == {"d_model": 32}
    assert back.settings() == cfg.settings() and "deviations" not in cfg.settings()
    back.train.lr = 0.5
    assert back.settings() != cfg.settings()


def test_load_reports_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        RunConfig.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(UserError, match="bad.json"):
        RunConfig.load(bad)
    d = preset("quick").to_dict()
    d["train"]["stepz"] = 3
    bad.write_text(json.dumps(d))
    with pytest.raises(UserError, match="stepz"):
        RunConfig.load(bad)


def test_overrides_set_nested_fields_and_reject_unknown_ones():
    cfg = apply_overrides(preset("quick"), ["meta.inner_steps=8", "train.lr=0.01", "encoder=none",
                                            "mel.n_mels=32", "model_config.use_local_attention=false"])
    assert cfg.meta.inner_steps == 8 and cfg.train.lr == 0.01 and cfg.mel.n_mels == 32
    assert cfg.model_overrides()["use_local_attention"] is False and cfg.model_overrides()["n_mels"] == 32
    for bad in ("meta.inner_stepz=3", "train", "nothing.here=1"):
        with pytest.raises(UserError):
            apply_overrides(preset("quick"), [bad])
    with pytest.raises(UserError, match="select"):
        apply_overrides(preset("quick"), ["train.select=worst"])


def test_unknown_preset_and_model():
    with pytest.raises(UserError, match="preset"):
        preset("huge")
    with pytest.raises(UserError, match="model"):
        RunConfig(model="transformerxl").model_overrides()
    assert EvalConfig().kshots == (1, 2, 4, 8)


def test_inner_params_override_accepts_a_name_or_a_list():
    cfg = apply_overrides(preset("quick"), ["meta.inner_params=predictor.head"])
    assert cfg.meta.inner_params == ("predictor.head",)
    cfg = apply_overrides(cfg, ['meta.inner_params=["predictor", "fusion"]'])
    assert cfg.meta.inner_params == ("predictor", "fusion")
    assert apply_overrides(cfg, ["meta.inner_params=all"]).meta.inner_params == ()
    back = RunConfig.from_dict(json.loads(json.dumps(apply_overrides(cfg, ["meta.inner_params=predictor"]).to_dict())))
    assert back.meta.inner_params == ("predictor",)


def test_every_preset_deviation_has_a_reason_and_follows_the_values():
    for name in PRESETS:
        cfg = preset(name)
        paper, ours = _flat(preset("paper")), _flat(cfg)
        changed = {k for k in ours if ours[k] != paper[k] and k not in NOT_DEVIATIONS}
        assert changed <= set(REASONS), f"{name}: no reason for {sorted(changed - set(REASONS))}"
        assert {d.split(":")[0] for d in deviations(cfg)} == changed
    cfg = preset("quick")
    cfg.meta.inner_steps = 16  # back to the paper's value: no longer a deviation
    assert not any(d.startswith("meta.inner_steps") for d in deviations(cfg))
    cfg.tasks.min_songs = 3
    assert any(d.startswith("tasks.min_songs: 16 -> 3") for d in deviations(cfg))


def test_smoke_is_the_quick_preset_shrunk():
    smoke, quick = preset("smoke"), preset("quick")
    assert smoke.preset == "smoke" and smoke.model_size == quick.model_size == "quick"
    assert smoke.train.steps == SMOKE["train.steps"] and smoke.model_config == quick.model_config == {}
    assert smoke.mel == quick.mel and smoke.dataset == quick.dataset


def test_an_override_that_cannot_take_effect_is_refused():
    cfg = apply_overrides(preset("quick"), ["train.lr=0.123"])
    assert cfg.train.lr == 0.123 and cfg.to_dict()["train"]["lr"] == 0.123
    with pytest.raises(UserError, match=r"meta\.outer_lr.*no field 'outer_lr'.*train\.lr"):
        apply_overrides(preset("quick"), ["meta.outer_lr=0.123"])
    with pytest.raises(UserError, match="meta_steps.*train.steps"):
        apply_overrides(preset("quick"), ["meta.meta_steps=5"])
    with pytest.raises(UserError, match="deviations"):
        apply_overrides(preset("quick"), ["deviations=[]"])


def test_run_identity_ignores_path_spelling_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    a = preset("quick", root=str(tmp_path / "data" / "synthetic"), cache_dir="/somewhere/cache")
    b = preset("quick", root="data/synthetic", cache_dir="elsewhere")
    assert a.settings() == b.settings()
    monkeypatch.chdir(tmp_path / "notebooks")  # a notebook's working directory
    c = preset("quick", root="../data/synthetic")
    assert c.settings() == a.settings()
    assert preset("quick", root="../other").settings() != a.settings()
    assert resolve_run(c).root == str(tmp_path / "data" / "synthetic")
