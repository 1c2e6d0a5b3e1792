"""The workbook's interactive cells: listen to a song next to its curves (01), annotate a song yourself (09).

`interactive()` is False in batch runs (`dsaml workbook` and papermill: the runner sets DSAML_WORKBOOK_BATCH=1
for its kernels) and True in JupyterLab; widget cells build their controls only when it is True and otherwise
draw the same content statically. Every control a browser test looks for carries a CSS class (``add_class``).

The annotate-yourself flow is plain functions that the `Annotator` widget calls and batch cells call directly:
`starting_curve` (the PDMER model's un-adapted, average prediction on a song's excerpt), `adjust_curve`
(shift/scale per dimension), `save_curve` (the `dsaml personalize` curve CSV, under a fresh numbered name),
`adapt_and_predict` (`experiments.personalize.personalize_files` into a fresh folder) and
`personal_vs_average` (the adapted predictions next to the un-adapted ones, read back for plotting).
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Audio, Image
from matplotlib.figure import Figure

from dsaml_utils.data.types import HOP_SECONDS, MEAN, Curve, MusicDataset, Song
from dsaml_utils.evaluation.curves import read_curve_csv, write_curve_csv
from dsaml_utils.experiments.personalize import dataset_value_range, personalize_files
from dsaml_utils.features.audio import load_audio
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.models.inference import predict_song
from dsaml_utils.errors import DataError
from dsaml_utils.plots.base import DIMS, stamp
from dsaml_utils.plots.data import plot_listener_curves
from dsaml_utils.plots.results import plot_predicted_curves
from dsaml_utils.training.store import build_store
from dsaml_utils.workbook.runner import BATCH_ENV

EXCERPT_SECONDS = 30.0
"""Length of the excerpt a person listens to and annotates: 30 s from the song's first label (DEAM: 15-45 s)."""

AUDIO_RATE = 11025
"""Sample rate of the embedded audio: low enough to keep an executed notebook small (30 s: about 0.9 MB)."""


def interactive() -> bool:
    """False in batch runs (DSAML_WORKBOOK_BATCH=1: `dsaml workbook`, papermill), else True."""
    return os.environ.get(BATCH_ENV, "") != "1"


def songs_with_audio(ds: MusicDataset, first: Sequence[str] = ()) -> list[str]:
    """Ids of the songs with audio and a MEAN curve: `first`, then the test songs, then the training songs."""
    ids = dict.fromkeys([*first, *ds.test_ids, *ds.train_ids, *ds.songs])
    return [s for s in ids if s in ds.songs and ds.songs[s].audio_path is not None and MEAN in ds.songs[s].curves]


def excerpt_times(song: Song, seconds: float = EXCERPT_SECONDS) -> np.ndarray:
    """The label times of the song's excerpt: its MEAN curve's first `seconds` (all of it when shorter)."""
    times = song.curves[MEAN].times
    return times[times < times[0] + seconds - 1e-6]


def excerpt_audio(song: Song, seconds: float = EXCERPT_SECONDS, sr: int = AUDIO_RATE) -> Audio:
    """An IPython Audio player of the song's excerpt (the audio under `excerpt_times`), resampled to `sr`."""
    times = excerpt_times(song, seconds)
    wave, sr = load_audio(song.audio_path, sr)
    start, stop = int(round(times[0] * sr)), int(round((times[-1] + HOP_SECONDS) * sr))
    return Audio(data=wave[start:stop], rate=sr)


def plot_song_excerpt(song: Song, seconds: float = EXCERPT_SECONDS, max_listeners: int = 4,
                      provenance: Mapping[str, object] | None = None) -> Figure:
    """The song's listener and MEAN curves (`plots.plot_listener_curves`) with the excerpt you hear shaded."""
    fig = plot_listener_curves(song, max_listeners=max_listeners, provenance=provenance)
    times = excerpt_times(song, seconds)
    for ax in fig.axes:
        ax.axvspan(times[0], times[-1] + HOP_SECONDS, color="gold", alpha=0.2, lw=0, label="the excerpt you hear")
    fig.axes[1].legend(fontsize=7, loc="best")
    return fig


def figure_image(fig: Figure, dpi: int = 100) -> Image:
    """The figure as a PNG Image (for an Output widget), closing the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Image(data=buf.getvalue(), format="png")


def show_in(out: W.Output, *objs) -> None:
    """Replace an Output widget's content by these display objects (works without a browser)."""
    out.outputs = ()
    for obj in objs:
        out.append_display_data(obj)


def song_label(ds: MusicDataset, sid: str) -> str:
    """'2001 (test song, 2 listeners)': a song picker's label."""
    split = "test" if sid in ds.test_ids else "training"
    return f"{sid} ({split} song, {len(ds.songs[sid].listeners)} listeners)"


class SongPlayer:
    """Pick a song, listen to its excerpt and see its curves: `widget` shows a Dropdown, the Audio and the plot."""

    def __init__(self, ds: MusicDataset, song_ids: Sequence[str], provenance: Mapping[str, object] | None = None,
                 seconds: float = EXCERPT_SECONDS):
        self.ds, self.seconds, self.provenance = ds, seconds, provenance
        self.picker = W.Dropdown(options=[(song_label(ds, s), s) for s in song_ids], description="song")
        self.picker.add_class("dsaml-song-picker")
        self.audio, self.plot = W.Output(), W.Output()
        self.audio.add_class("dsaml-song-audio")
        self.plot.add_class("dsaml-song-plot")
        self.picker.observe(lambda change: self.show(change["new"]), names="value")
        self.widget = W.VBox([self.picker, self.audio, self.plot])
        self.show(self.picker.value)

    def show(self, sid: str) -> None:
        """Put song `sid`'s excerpt audio and curves into the widget."""
        song = self.ds.songs[sid]
        show_in(self.audio, excerpt_audio(song, self.seconds))
        with plt.ioff():  # drawn into the widget, not shown as a figure of its own (ipympl would)
            fig = plot_song_excerpt(song, self.seconds, provenance=self.provenance)
        show_in(self.plot, figure_image(fig))


# ---- annotate a song yourself (09) ----------------------------------------------------------------------


def model_curve(cfg, model, audio: str | Path, times: np.ndarray, params: dict | None = None,
                device: str = "cpu") -> Curve:
    """The model's prediction on an audio file at these label times (params: adapted weights, None: as trained)."""
    song = Song("audio", Path(audio), {MEAN: Curve(times, np.zeros(len(times)), np.zeros(len(times)))})
    ds = MusicDataset("personal", Path(audio).parent, {"audio": song}, [], [], dataset_value_range(cfg.dataset))
    store = build_store(ds, ["audio"], cfg, model, FeatureCache(cfg.cache_dir), progress=False)
    if "audio" not in store:
        raise DataError("; ".join(ds.problems) or f"{audio}: could not read the audio")
    pred = predict_song(model, store["audio"], cfg.train.window, cfg.eval.hop, params, device)
    return Curve(times, pred[:, 0], pred[:, 1])


def starting_curve(cfg, model, song: Song, seconds: float = EXCERPT_SECONDS, device: str = "cpu") -> Curve:
    """The model's un-adapted (average-listener) prediction on the song's excerpt: where annotating starts."""
    return model_curve(cfg, model, song.audio_path, excerpt_times(song, seconds), device=device)


def adjust_curve(curve: Curve, shift: Sequence[float] = (0.0, 0.0), scale: Sequence[float] = (1.0, 1.0),
                 value_range: tuple[float, float] = (-1.0, 1.0), center: Sequence[float] | None = None) -> Curve:
    """Per dimension: center + scale * (value - center) + shift (center: the curve's mean), clipped to the range."""
    vals = curve.values().astype(np.float64)
    c = vals.mean(axis=0) if center is None else np.asarray(center, dtype=np.float64)
    out = np.clip(c + np.asarray(scale) * (vals - c) + np.asarray(shift), *value_range)
    return Curve(curve.times, out[:, 0], out[:, 1])


def fit_to_times(curve: Curve, times: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> Curve:
    """A stored curve laid onto another song's label times: aligned at the first label, interpolated, its last
    value held past its end, clipped to the range (the batch run's example annotation for any song)."""
    rel = curve.times - curve.times[0]
    t = np.asarray(times, dtype=np.float64) - times[0]
    vals = [np.clip(np.interp(t, rel, curve.values()[:, d]), *value_range) for d in range(2)]
    return Curve(times, vals[0], vals[1])


def fresh_path(folder: str | Path, stem: str, suffix: str = "") -> Path:
    """folder/<stem>_NNN<suffix> with the first number that names nothing yet (never an existing file)."""
    folder = Path(folder)
    n = 1
    while (folder / f"{stem}_{n:03d}{suffix}").exists():
        n += 1
    return folder / f"{stem}_{n:03d}{suffix}"


def save_curve(curve: Curve, folder: str | Path, stem: str = "my_curve") -> Path:
    """Write the curve as a `dsaml personalize` curve CSV (time,arousal,valence at 2 Hz) under a fresh name."""
    path = fresh_path(folder, stem, ".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_curve_csv(path, curve.times, curve.values())
    return path


def adapt_and_predict(run: str | Path, audio: str | Path, curve_csv: str | Path, predict: Sequence[str | Path],
                      folder: str | Path, stem: str = "adapted") -> dict:
    """`personalize_files`: adapt the run on (audio, curve_csv), predict the `predict` songs into a fresh folder;
    returns its record plus "out" (the folder)."""
    out = fresh_path(folder, stem)
    result = personalize_files(run, out, list(predict), support=(audio, curve_csv), progress=False)
    return {**result, "out": str(out)}


def personal_vs_average(result: dict, cfg, model, device: str = "cpu") -> list[dict]:
    """For each predicted song of `adapt_and_predict`: its personal curve (read back from its CSV) and the
    un-adapted model's at the same times, as `plots.plot_predicted_curves` items (the average is the reference)."""
    items = []
    for p in result["predictions"]:
        mine = read_curve_csv(p["csv"])
        avg = model_curve(cfg, model, p["audio"], mine.times, device=device)
        items.append({"title": f"song {Path(p['audio']).stem}", "times": mine.times, "truth": avg.values(),
                      "truth_label": "average model (before adapting)", "preds": {"adapted to you": mine.values()}})
    return items


def plot_annotation(start: Curve, mine: Curve, value_range: tuple[float, float], title: str = "",
                    fig: Figure | None = None) -> Figure:
    """Two panels (arousal, valence): the model's starting curve (grey, dashed) and yours (drawn on top)."""
    fig = fig if fig is not None else Figure(figsize=(10, 3.2))
    axes = fig.subplots(1, 2, sharex=True)
    for d, ax in enumerate(axes):
        ax.plot(start.times, start.values()[:, d], color="0.5", ls="--", lw=1.5, label="model's starting curve")
        ax.plot(mine.times, mine.values()[:, d], color="C0" if d == 0 else "C3", lw=2, label="your curve")
        ax.set_ylim(*value_range)
        ax.set_title(DIMS[d])
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class Annotator:
    """The annotate-yourself tool (09): pick a song, listen, move or draw the starting curve, save it, adapt.

    `widget` holds the song picker, the audio, shift/scale sliders per dimension, the curve (an ipympl canvas
    to draw on with the mouse when `%matplotlib widget` is active, else a picture), the save and adapt buttons,
    a status line and the predictions. `others` songs (the first of `song_ids` after the picked one) are predicted.
    """

    def __init__(self, ds: MusicDataset, song_ids: Sequence[str], run: str | Path, cfg, model, folder: str | Path,
                 others: int = 3, provenance: Mapping[str, object] | None = None, device: str = "cpu",
                 seconds: float = EXCERPT_SECONDS):
        self.ds, self.song_ids, self.run, self.cfg, self.model = ds, list(song_ids), Path(run), cfg, model
        self.folder, self.others, self.provenance = Path(folder), others, provenance
        self.device, self.seconds = device, seconds
        self.value_range = dataset_value_range(cfg.dataset)
        self.saved: tuple[Path, np.ndarray] | None = None  # last saved CSV and the values it holds
        self.result: dict | None = None
        self._drawing: int | None = None  # the dimension the mouse is drawing on
        self._last: int | None = None
        self._quiet, self._lines = False, []
        self.picker = W.Dropdown(options=[(song_label(ds, s), s) for s in self.song_ids], description="song")
        self.picker.add_class("dsaml-annotate-song")
        self.audio, self.results = W.Output(), W.Output()
        self.audio.add_class("dsaml-annotate-audio")
        self.results.add_class("dsaml-annotate-results")
        self.shift = [W.FloatSlider(0.0, min=-1.0, max=1.0, step=0.05, description=f"shift {d}",
                                    continuous_update=False) for d in DIMS]
        self.scale = [W.FloatSlider(1.0, min=0.1, max=2.0, step=0.05, description=f"scale {d}",
                                    continuous_update=False) for d in DIMS]
        for d, name in enumerate(DIMS):
            self.shift[d].add_class(f"dsaml-annotate-shift-{name}")
            self.scale[d].add_class(f"dsaml-annotate-scale-{name}")
        self.save_button = W.Button(description="Save my curve", icon="save")
        self.adapt_button = W.Button(description="Adapt and predict", icon="magic", button_style="primary")
        self.save_button.add_class("dsaml-annotate-save")
        self.adapt_button.add_class("dsaml-annotate-adapt")
        self.status = W.HTML("")
        self.status.add_class("dsaml-annotate-status")
        self.figure, self.canvas = self._make_figure()
        self.plot = W.Output()
        self.plot.add_class("dsaml-annotate-plot")
        self.picker.observe(lambda change: self.pick(change["new"]), names="value")
        for s in self.shift + self.scale:
            s.observe(lambda change: self.redraw(), names="value")
        self.save_button.on_click(lambda _: self.save())
        self.adapt_button.on_click(lambda _: self.adapt())
        controls = W.HBox([W.VBox(self.shift), W.VBox(self.scale)])
        self.widget = W.VBox([self.picker, self.audio, controls, self.canvas or self.plot,
                              W.HBox([self.save_button, self.adapt_button]), self.status, self.results])
        self.pick(self.picker.value)

    def _make_figure(self) -> tuple[Figure, W.DOMWidget | None]:
        """A figure on an ipympl canvas (mouse drawing connected) when that backend is active (`%matplotlib
        widget`), else a plain one."""
        with plt.ioff():
            fig = plt.figure(figsize=(10, 3.2))
        if isinstance(fig.canvas, W.DOMWidget):
            fig.canvas.header_visible = False
            for event, handler in (("button_press_event", self.on_press), ("motion_notify_event", self.on_move),
                                   ("button_release_event", self.on_release)):
                fig.canvas.mpl_connect(event, handler)
            return fig, fig.canvas
        plt.close(fig)
        return Figure(figsize=(10, 3.2)), None

    @property
    def curve(self) -> Curve:
        """Your curve now: the drawn values with the sliders' shift and scale (around the starting curve's mean)."""
        return adjust_curve(self.drawn, [s.value for s in self.shift], [s.value for s in self.scale],
                            self.value_range, center=self.start.values().mean(axis=0))

    def pick(self, sid: str) -> None:
        """Start annotating song `sid`: its audio, the model's starting curve, sliders back to neutral."""
        self.song = self.ds.songs[sid]
        show_in(self.audio, excerpt_audio(self.song, self.seconds))
        self.start = starting_curve(self.cfg, self.model, self.song, self.seconds, self.device)
        self.drawn = Curve(self.start.times, self.start.arousal.copy(), self.start.valence.copy())
        self._quiet = True  # one redraw below, not one per slider
        for s, neutral in [(s, 0.0) for s in self.shift] + [(s, 1.0) for s in self.scale]:
            s.value = neutral
        self._quiet = False
        self.redraw(full=True)
        self.set_status(f"song {sid}: the model's starting curve; move the sliders or draw, then save")

    def redraw(self, full: bool = False) -> None:
        """Draw the starting curve and yours (on the canvas, or as a picture in the plot output); without `full`
        only your curve's lines move."""
        if self._quiet:
            return
        if full or not self._lines:
            self.figure.clear()
            plot_annotation(self.start, self.curve, self.value_range, f"song {self.song.song_id}: your annotation",
                            fig=self.figure)
            self._lines = [ax.lines[1] for ax in self.figure.axes[:2]]
        else:
            vals = self.curve.values()
            for d, line in enumerate(self._lines):
                line.set_ydata(vals[:, d])
        if self.canvas is not None:
            self.canvas.draw_idle()
        else:
            buf = io.BytesIO()
            self.figure.savefig(buf, format="png", dpi=90)
            show_in(self.plot, Image(data=buf.getvalue(), format="png"))

    def draw_at(self, dim: int, time: float, value: float) -> None:
        """Set your curve to `value` at `time` on dimension `dim` (0 arousal, 1 valence), filling the gap from the
        previous point of the same stroke; undoes the sliders' shift and scale so the curve passes through it."""
        times = self.drawn.times
        i = int(np.clip(np.round((time - times[0]) / HOP_SECONDS), 0, len(times) - 1))
        c = float(self.start.values()[:, dim].mean())
        raw = c + (float(np.clip(value, *self.value_range)) - self.shift[dim].value - c) / self.scale[dim].value
        vals = self.drawn.arousal if dim == 0 else self.drawn.valence
        j = self._last if self._last is not None else i
        lo, hi = sorted((i, j))
        ends = [vals[j], raw] if j <= i else [raw, vals[j]]
        vals[lo:hi + 1] = np.interp(np.arange(lo, hi + 1), [lo, hi], ends) if hi > lo else raw
        self._last = i

    def _dim_of(self, event) -> int | None:
        axes = self.figure.axes[:2]
        return axes.index(event.inaxes) if event.inaxes in axes else None

    def on_press(self, event) -> None:
        """Mouse button down on a panel: start a stroke there."""
        self._drawing, self._last = self._dim_of(event), None
        self.on_move(event)

    def on_move(self, event) -> None:
        """Mouse moved: while a stroke is on, set the curve under the pointer."""
        if self._drawing is not None and self._dim_of(event) == self._drawing and event.xdata is not None:
            self.draw_at(self._drawing, event.xdata, event.ydata)
            self.redraw()

    def on_release(self, event) -> None:
        """Mouse button up: end the stroke."""
        self._drawing, self._last = None, None

    def set_status(self, text: str) -> None:
        """Show one line of status."""
        self.status.value = f"<span>{html.escape(text)}</span>"

    def save(self) -> Path:
        """Write your curve (a fresh numbered CSV under the folder); the status ends with 'saved <path>'."""
        curve = self.curve
        path = save_curve(curve, self.folder)
        self.saved = (path, curve.values())
        self.set_status(f"song {self.song.song_id}: saved {path}")
        return path

    def adapt(self) -> dict:
        """Adapt the model on your saved curve (saving it first if it changed) and predict the other songs."""
        if self.saved is None or not np.array_equal(self.saved[1], self.curve.values()):
            self.save()
        sid = self.song.song_id
        others = [s for s in self.song_ids if s != sid][: self.others]
        self.set_status(f"adapting to your curve of song {sid} ...")
        for b in (self.save_button, self.adapt_button):
            b.disabled = True
        try:
            self.result = adapt_and_predict(self.run, self.song.audio_path, self.saved[0],
                                            [self.ds.songs[s].audio_path for s in others], self.folder)
            items = personal_vs_average(self.result, self.cfg, self.model, self.device)
            with plt.ioff():  # drawn into the results output, not shown as a figure of its own
                fig = plot_predicted_curves(items, provenance=self.provenance)
            show_in(self.results, figure_image(fig))
        except Exception as exc:
            self.set_status(f"adapting failed: {exc}")
            raise
        finally:
            for b in (self.save_button, self.adapt_button):
                b.disabled = False
        self.set_status(f"adapted; predictions in {self.result['out']}")
        return self.result


def annotation_figure(start: Curve, mine: Curve, value_range: tuple[float, float], title: str,
                      provenance: Mapping[str, object] | None = None) -> Figure:
    """`plot_annotation` on a pyplot figure with the provenance footer (for `wb.save`)."""
    return stamp(plot_annotation(start, mine, value_range, title, fig=plt.figure(figsize=(10, 3.2))), provenance)
