"""workbook.widgets: the batch switch, the song player of notebook 01 and the annotate-yourself tool of 09.

Widgets are built and driven without a browser: setting a slider's `.value` or calling a button's `click()`
runs the same callbacks a browser would, and the Output widgets' `outputs` hold what the page would show.
The annotate flow adapts the tiny PDMER run of test_personalize_inputs (on test_train's tiny dataset).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from test_personalize_inputs import tiny_run  # noqa: F401 (fixture)
from test_train import one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.data.types import HOP_SECONDS, MEAN, Curve
from dsaml_utils.evaluation.curves import read_curve_csv
from dsaml_utils.experiments.personalize import check_support, personalize_files
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.models.inference import predict_song
from dsaml_utils.training.runs import load_run_model
from dsaml_utils.training.store import build_store
from dsaml_utils.workbook import runner, widgets

EXAMPLE = Path(__file__).resolve().parent.parent / "notebooks" / "data" / "example_curve.csv"


def classes(w) -> list[str]:
    return list(w._dom_classes)


def html_text(value: str) -> str:
    return value.replace("<span>", "").replace("</span>", "")


def test_interactive_is_false_only_in_batch_runs(monkeypatch):
    monkeypatch.delenv(runner.BATCH_ENV, raising=False)
    assert widgets.interactive()
    monkeypatch.setenv(runner.BATCH_ENV, "1")
    assert not widgets.interactive()
    monkeypatch.setenv(runner.BATCH_ENV, "0")
    assert widgets.interactive()


@pytest.mark.parametrize("before", [None, "0"])
def test_runner_sets_the_batch_variable_for_its_kernels_and_restores_it(monkeypatch, before):
    if before is None:
        monkeypatch.delenv(runner.BATCH_ENV, raising=False)
    else:
        monkeypatch.setenv(runner.BATCH_ENV, before)
    with runner._kernel_environment():
        assert os.environ[runner.BATCH_ENV] == "1" and not widgets.interactive()
    assert os.environ.get(runner.BATCH_ENV) == before


def test_songs_with_audio_puts_the_given_songs_first_then_test_then_training(tiny_ds):  # noqa: F811
    ids = widgets.songs_with_audio(tiny_ds, first=[tiny_ds.train_ids[1]])
    assert ids[0] == tiny_ds.train_ids[1]
    assert ids[1:1 + len(tiny_ds.test_ids)] == tiny_ds.test_ids
    assert len(ids) == len(set(ids)) and all(tiny_ds.songs[s].audio_path for s in ids)


def test_excerpt_is_30_s_from_the_first_label_and_its_audio_is_downsampled(tiny_ds):  # noqa: F811
    song = tiny_ds.songs[tiny_ds.test_ids[0]]
    times = widgets.excerpt_times(song)
    first = song.curves[MEAN].times[0]
    assert times[0] == first and times[-1] <= first + 30 - HOP_SECONDS
    assert len(widgets.excerpt_times(song, seconds=5)) == 10
    audio = widgets.excerpt_audio(song, seconds=5, sr=4000)
    assert audio.data[:4] == b"RIFF"  # a WAV of 5 s at 4 kHz, 16-bit mono, plus its 44-byte header
    assert len(audio.data) == 44 + 2 * 5 * 4000
    assert "<audio" in audio._repr_html_()


def test_song_excerpt_figure_shades_the_excerpt(tiny_ds):  # noqa: F811
    song = tiny_ds.songs[tiny_ds.test_ids[0]]
    fig = widgets.plot_song_excerpt(song, seconds=5, provenance={"data": "tiny"})
    times = widgets.excerpt_times(song, 5)
    for ax in fig.axes[:2]:
        spans = [p for p in ax.patches if p.get_label() == "the excerpt you hear"]
        assert len(spans) == 1
        x0, x1 = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
        assert (x0, x1) == pytest.approx((times[0], times[-1] + HOP_SECONDS))


def test_song_player_switches_audio_and_curves_with_the_picker(tiny_ds):  # noqa: F811
    ids = widgets.songs_with_audio(tiny_ds)[:3]
    player = widgets.SongPlayer(tiny_ds, ids, provenance={"data": "tiny"})
    assert "dsaml-song-picker" in classes(player.picker) and "dsaml-song-audio" in classes(player.audio)
    assert player.picker.value == ids[0]
    first_audio = player.audio.outputs[0]["data"]["text/html"]
    assert "<audio" in first_audio and "image/png" in player.plot.outputs[0]["data"]
    player.picker.value = ids[1]
    assert len(player.audio.outputs) == len(player.plot.outputs) == 1
    assert player.audio.outputs[0]["data"]["text/html"] != first_audio
    assert [o for o, _ in player.picker.options] == [widgets.song_label(tiny_ds, s) for s in ids]


def test_adjust_curve_shifts_and_scales_around_the_mean_within_the_range():
    c = Curve([0.0, 0.5, 1.0], [0.0, 0.2, 0.4], [0.5, 0.5, 0.5])
    out = widgets.adjust_curve(c, shift=(0.1, 0.0), scale=(2.0, 1.0))
    np.testing.assert_allclose(out.arousal, [-0.1, 0.3, 0.7], atol=1e-6)
    np.testing.assert_allclose(out.valence, c.valence)
    clipped = widgets.adjust_curve(c, shift=(0.0, 0.8))
    assert clipped.valence.max() == 1.0
    mirrored = widgets.adjust_curve(c, scale=(-1.0, 1.0), center=(0.0, 0.0))
    np.testing.assert_allclose(mirrored.arousal, -c.arousal)


def test_fit_to_times_aligns_at_the_first_label_cuts_and_holds():
    stored = Curve(15.0 + HOP_SECONDS * np.arange(4), [0.1, 0.2, 0.3, 0.4], [0.0, -0.1, -0.2, 2.0])
    short = widgets.fit_to_times(stored, 40.0 + HOP_SECONDS * np.arange(2))
    np.testing.assert_allclose(short.arousal, [0.1, 0.2])
    assert short.times.tolist() == [40.0, 40.5]
    long = widgets.fit_to_times(stored, HOP_SECONDS * np.arange(6))
    np.testing.assert_allclose(long.arousal, [0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert long.valence.max() == 1.0  # clipped to the range


def test_save_curve_writes_the_personalize_format_and_never_overwrites(tmp_path):
    c = Curve(15.0 + HOP_SECONDS * np.arange(5), np.linspace(-0.5, 0.5, 5), np.zeros(5))
    first, second = widgets.save_curve(c, tmp_path / "annotate"), widgets.save_curve(c, tmp_path / "annotate")
    assert (first.name, second.name) == ("my_curve_001.csv", "my_curve_002.csv")
    assert first.read_text().splitlines()[0] == "time,arousal,valence"
    back = read_curve_csv(second)
    np.testing.assert_allclose(back.values(), c.values(), atol=1e-4)
    assert back.times.tolist() == c.times.tolist()
    (tmp_path / "annotate" / "adapted_001").mkdir()
    assert widgets.fresh_path(tmp_path / "annotate", "adapted").name == "adapted_002"


def test_the_stored_example_curve_fits_any_songs_excerpt(tiny_ds, tmp_path):  # noqa: F811
    example = read_curve_csv(EXAMPLE)
    assert len(example) == 60 and example.times[0] == 15.0
    assert np.abs(example.values()).max() <= 1.0
    song = tiny_ds.songs[tiny_ds.test_ids[0]]
    times = widgets.excerpt_times(song)
    fitted = widgets.fit_to_times(example, times, tiny_ds.value_range)
    path = widgets.save_curve(fitted, tmp_path)
    check_support(song.audio_path, path, read_curve_csv(path), tiny_ds.value_range)  # personalize accepts it


def test_starting_curve_is_the_models_prediction_on_the_excerpt(tiny_run, tiny_ds):  # noqa: F811
    cfg, model = load_run_model(tiny_run, "cpu")
    sid = tiny_ds.train_ids[0]  # a clip whose labels all lie in the excerpt
    start = widgets.starting_curve(cfg, model, tiny_ds.songs[sid])
    sd = build_store(tiny_ds, [sid], cfg, model, FeatureCache(cfg.cache_dir), progress=False)[sid]
    assert start.times.tolist() == sd.times.tolist()
    np.testing.assert_allclose(start.values(), predict_song(model, sd, cfg.train.window, cfg.eval.hop), atol=1e-5)


def test_annotator_sliders_drawing_save_and_adapt(tiny_run, tiny_ds, tmp_path):  # noqa: F811
    cfg, model = load_run_model(tiny_run, "cpu")
    ids = widgets.songs_with_audio(tiny_ds)
    folder = tmp_path / "annotate"
    tool = widgets.Annotator(tiny_ds, ids, tiny_run, cfg, model, folder, others=2, provenance={"data": "tiny"})
    for w, cls in [(tool.picker, "dsaml-annotate-song"), (tool.shift[0], "dsaml-annotate-shift-arousal"),
                   (tool.shift[1], "dsaml-annotate-shift-valence"), (tool.save_button, "dsaml-annotate-save"),
                   (tool.adapt_button, "dsaml-annotate-adapt"), (tool.status, "dsaml-annotate-status")]:
        assert cls in classes(w)
    assert tool.canvas is None and "image/png" in tool.plot.outputs[0]["data"]  # no ipympl backend here
    assert "<audio" in tool.audio.outputs[0]["data"]["text/html"]
    np.testing.assert_allclose(tool.curve.values(), tool.start.values(), atol=1e-6)

    tool.picker.value = ids[1]  # another song: its starting curve, sliders neutral
    assert tool.song.song_id == ids[1] and len(tool.start) == len(widgets.excerpt_times(tiny_ds.songs[ids[1]]))
    tool.picker.value = ids[0]
    before = tool.plot.outputs[0]["data"]["image/png"]
    tool.shift[1].value = 0.2
    np.testing.assert_allclose(tool.curve.valence, np.clip(tool.start.valence + 0.2, -1, 1), atol=1e-6)
    np.testing.assert_allclose(tool.curve.arousal, tool.start.arousal, atol=1e-6)
    assert tool.plot.outputs[0]["data"]["image/png"] != before  # redrawn
    tool.scale[0].value = 2.0
    a = tool.start.arousal
    np.testing.assert_allclose(tool.curve.arousal, np.clip(a.mean() + 2 * (a - a.mean()), -1, 1), atol=1e-5)

    # a mouse stroke on the valence panel from the 2nd to the 5th label, ending at -0.5: the curve follows it
    ax, t = tool.figure.axes[1], tool.start.times
    tool.on_press(SimpleNamespace(inaxes=ax, xdata=t[1], ydata=0.5))
    tool.on_move(SimpleNamespace(inaxes=ax, xdata=t[4] + 0.1, ydata=-0.5))
    tool.on_release(SimpleNamespace(inaxes=ax, xdata=t[4], ydata=-0.5))
    np.testing.assert_allclose(tool.curve.valence[1:5], [0.5, 1 / 6, -1 / 6, -0.5], atol=1e-5)
    tool.on_move(SimpleNamespace(inaxes=ax, xdata=t[6], ydata=0.9))  # no button held: nothing drawn
    assert tool.curve.valence[6] != pytest.approx(0.9)

    tool.save_button.click()
    saved = folder / "my_curve_001.csv"
    assert html_text(tool.status.value).endswith(f"saved {saved}")
    np.testing.assert_allclose(read_curve_csv(saved).values(), tool.curve.values(), atol=1e-4)

    tool.adapt_button.click()  # unchanged since saving: adapts on my_curve_001.csv
    out = folder / "adapted_001"
    assert html_text(tool.status.value).endswith(f"adapted; predictions in {out}")
    assert not (folder / "my_curve_002.csv").exists() and (out / "personal.pt").is_file()
    others = [s for s in ids if s != ids[0]][:2]
    assert [Path(p["audio"]) for p in tool.result["predictions"]] == [tiny_ds.songs[s].audio_path for s in others]
    for p in tool.result["predictions"]:
        assert read_curve_csv(p["csv"]).times[0] == 0.0 and Path(p["png"]).is_file()
    assert "image/png" in tool.results.outputs[0]["data"]
    assert not tool.save_button.disabled and not tool.adapt_button.disabled

    tool.shift[0].value = -0.1  # changed: adapting saves a new curve and writes a new folder
    tool.adapt_button.click()
    assert (folder / "my_curve_002.csv").is_file() and (folder / "adapted_002" / "personal.pt").is_file()
    assert html_text(tool.status.value).endswith(f"adapted; predictions in {folder / 'adapted_002'}")


def test_batch_path_adapt_predict_and_compare_with_the_average(tiny_run, tiny_ds, tmp_path):  # noqa: F811
    cfg, model = load_run_model(tiny_run, "cpu")
    sid, other = tiny_ds.test_ids
    song = tiny_ds.songs[sid]
    start = widgets.starting_curve(cfg, model, song)
    mine = widgets.fit_to_times(read_curve_csv(EXAMPLE), start.times, tiny_ds.value_range)
    csv = widgets.save_curve(mine, tmp_path)
    result = widgets.adapt_and_predict(tiny_run, song.audio_path, csv, [tiny_ds.songs[other].audio_path], tmp_path)
    assert result["out"] == str(tmp_path / "adapted_001") and len(result["predictions"]) == 1
    items = widgets.personal_vs_average(result, cfg, model)
    personal = read_curve_csv(result["predictions"][0]["csv"])
    assert items[0]["times"].tolist() == personal.times.tolist()
    np.testing.assert_allclose(items[0]["preds"]["adapted to you"], personal.values())
    average = widgets.model_curve(cfg, model, tiny_ds.songs[other].audio_path, personal.times)
    np.testing.assert_allclose(items[0]["truth"], average.values())
    assert not np.allclose(items[0]["truth"], personal.values(), atol=1e-4)  # adapting changed the prediction
    fig = widgets.annotation_figure(start, mine, tiny_ds.value_range, "t", provenance={"data": "tiny"})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["arousal", "valence"]
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(Exception, match="exists"):  # personalize itself refuses an existing folder's outputs
        personalize_files(tiny_run, result["out"], [tiny_ds.songs[other].audio_path],
                                  support=(song.audio_path, csv), progress=False)


def test_annotator_draws_on_an_ipympl_canvas_when_that_backend_is_active(tiny_run, tiny_ds, tmp_path):  # noqa: F811
    cfg, model = load_run_model(tiny_run, "cpu")
    backend = matplotlib.get_backend()
    plt.switch_backend("module://ipympl.backend_nbagg")  # what `%matplotlib widget` selects
    try:
        tool = widgets.Annotator(tiny_ds, widgets.songs_with_audio(tiny_ds)[:2], tiny_run, cfg, model, tmp_path)
        assert tool.canvas is tool.figure.canvas and tool.canvas in tool.widget.children
        ax, t = tool.figure.axes[0], tool.start.times
        tool.on_press(SimpleNamespace(inaxes=ax, xdata=t[2], ydata=0.7))
        tool.on_release(SimpleNamespace(inaxes=ax, xdata=t[2], ydata=0.7))
        assert tool.curve.arousal[2] == pytest.approx(0.7)
        assert tool._lines[0].get_ydata()[2] == pytest.approx(0.7)  # the line moved on the canvas
        plt.close(tool.figure)
    finally:
        plt.switch_backend(backend)
