"""Music from a latent emotion: note events rendered by wavetable lookup and summed with np.bincount."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsaml_utils.data.synthetic.config import CONTROL_RATE
from dsaml_utils.data.synthetic.latent import Section

_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
_PROGRESSIONS = [[0, 3, 4, 0], [0, 5, 3, 4], [0, 4, 5, 3], [5, 3, 0, 4], [0, 1, 4, 0], [0, 3, 5, 4]]
_TABLE = 2048
_LAYERS = {"bass": 250.0, "chord": 900.0, "melody": 1600.0}  # highest fundamental of each layer (Hz)


def wavetables(sr: int) -> np.ndarray:
    """[layers * 2, TABLE]: a dark and a bright single-cycle wave per layer, band-limited for `sr`."""
    ph = np.arange(_TABLE) / _TABLE
    tables = []
    for fmax in _LAYERS.values():
        n_harm = max(1, int(0.45 * sr / fmax))
        for n, tilt in ((min(3, n_harm), 2.5), (min(16, n_harm), 0.9)):
            h = np.arange(1, n + 1)
            w = (np.sin(2 * np.pi * np.outer(h, ph)) / h[:, None] ** tilt).sum(axis=0)
            tables.append(w / np.abs(w).max())
    return np.asarray(tables, dtype=np.float32)


def _degree_to_semitone(deg: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Scale degree (any integer) to semitones above the tonic, in the major or natural minor scale."""
    deg = np.asarray(deg)
    scale = np.where(minor[..., None], _MINOR, _MAJOR)
    step = np.take_along_axis(scale, (deg % 7)[..., None], axis=-1)[..., 0]
    return step + 12 * (deg // 7)


def _midi_hz(m: np.ndarray) -> np.ndarray:
    """Frequency in Hz of a MIDI pitch."""
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


@dataclass
class _Notes:
    """Oscillator note events (parallel lists, converted to arrays for rendering)."""

    start: list = field(default_factory=list)  # s
    dur: list = field(default_factory=list)  # s
    freq: list = field(default_factory=list)  # Hz
    amp: list = field(default_factory=list)
    bright: list = field(default_factory=list)  # 0 dark .. 1 bright
    attack: list = field(default_factory=list)  # s
    decay: list = field(default_factory=list)  # s, exponential decay time constant
    layer: list = field(default_factory=list)  # index into _LAYERS

    def add(self, start, dur, freq, amp, bright, attack, decay, layer):
        """Append a batch of notes (scalars broadcast to the batch)."""
        n = np.broadcast(start, dur, freq, amp, bright, attack, decay).size
        for name, val in zip(
            ("start", "dur", "freq", "amp", "bright", "attack", "decay", "layer"),
            (start, dur, freq, amp, bright, attack, decay, layer),
        ):
            getattr(self, name).append(np.broadcast_to(np.asarray(val, dtype=np.float64), (n,)).ravel())

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field as one array."""
        return {k: np.concatenate(getattr(self, k)) for k in self.__dataclass_fields__}


def _render_notes(out: np.ndarray, sr: int, notes: dict[str, np.ndarray], tables: np.ndarray, rng) -> None:
    """Add every note to `out` in place: wavetable oscillator x attack/exponential-decay envelope."""
    start = np.round(notes["start"] * sr).astype(np.int64)
    length = np.minimum(np.round(notes["dur"] * sr).astype(np.int64), len(out) - start)
    keep = length > 0
    start, length = start[keep], length[keep]
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    inc = f32(notes["freq"][keep] / sr)  # cycles per sample
    phase0 = f32(rng.random(len(start)))
    amp, bright = f32(notes["amp"][keep]), f32(notes["bright"][keep])
    inv_att, inv_dec = f32(1 / (notes["attack"][keep] * sr)), f32(1 / (notes["decay"][keep] * sr))
    row = (2 * notes["layer"][keep]).astype(np.int64) * _TABLE  # offset of the layer's dark table
    flat = tables.ravel()
    # Render in batches of ~1 M samples so memory stays small for long songs.
    batch_of = np.cumsum(length) // 1_000_000
    for b in np.unique(batch_of):
        sel = np.nonzero(batch_of == b)[0]
        L = length[sel]
        nid = np.repeat(sel, L)  # note of every sample
        idx = np.arange(int(L.sum()), dtype=np.int64) - np.repeat(np.cumsum(L) - L, L)  # sample in note
        t = idx.astype(np.float32)
        ph = inc[nid] * t + phase0[nid]
        k = ((ph - np.floor(ph)) * _TABLE).astype(np.int64) + row[nid]
        dark = flat[k]
        wave = dark + bright[nid] * (flat[k + _TABLE] - dark)
        env = np.minimum(t * inv_att[nid], 1.0) * np.exp(-t * inv_dec[nid])
        env *= np.minimum(1.0, (length[nid] - idx).astype(np.float32) * (100.0 / sr))  # 10 ms release
        out += np.bincount(start[nid] + idx, weights=amp[nid] * env * wave, minlength=len(out))[: len(out)]


def _render_templates(out: np.ndarray, sr: int, starts, amps, template: np.ndarray) -> None:
    """Add copies of a one-shot sample (drum) at `starts` (s) scaled by `amps`."""
    starts = np.round(np.asarray(starts) * sr).astype(np.int64)
    if len(starts) == 0:
        return
    L = len(template)
    idx = np.tile(np.arange(L), len(starts))
    pos = np.repeat(starts, L) + idx
    y = np.repeat(np.asarray(amps), L) * template[idx]
    ok = pos < len(out)
    out += np.bincount(pos[ok], weights=y[ok], minlength=len(out))[: len(out)]


def _drums(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Kick (falling sine), snare (noise + tone) and hi-hat click (high-passed noise) one-shots."""
    t = np.arange(int(0.25 * sr)) / sr
    freq = 45 + 70 * np.exp(-t / 0.04)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.09)
    ts = t[: int(0.18 * sr)]
    snare = (0.7 * rng.standard_normal(len(ts)) + 0.5 * np.sin(2 * np.pi * 190 * ts)) * np.exp(-ts / 0.05)
    th = t[: int(0.05 * sr)]
    hat = np.diff(rng.standard_normal(len(th) + 1)) * np.exp(-th / 0.012)
    return {"kick": kick, "snare": snare, "hat": hat / 2}


def synthesize(rng: np.random.Generator, sections: list[Section], lat: np.ndarray, duration: float,
               sr: int, tables: np.ndarray) -> tuple[np.ndarray, dict]:
    """Render the song's audio from its latent; returns float32 mono audio and musical facts."""
    n_ctrl = len(lat)
    ctrl_t = np.arange(n_ctrl) / CONTROL_RATE
    d_ctrl = (lat[:, 0] + 1) / 2  # arousal as 0..1 "drive"
    tonic = int(rng.integers(12))
    timbre = rng.uniform(-0.1, 0.1)  # per-song brightness offset
    master = 10 ** (rng.uniform(-4, 4) / 20)  # per-song mastering gain: loudness alone is not arousal
    letters = sorted({s.letter for s in sections})
    progression = {ltr: _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))] for ltr in letters}
    def tune() -> np.ndarray:  # a stepwise 8-note motif in scale degrees
        steps = np.concatenate([[rng.integers(0, 5)], rng.choice([-2, -1, -1, 1, 1, 2, 0], 7)])
        return np.clip(np.cumsum(steps), -2, 9)

    motif = {ltr: tune() for ltr in letters}
    sec_start = np.array([s.start for s in sections])

    # The sixteenth-note grid follows the tempo curve: phase = integral of beats per second.
    bpm = 62 + 116 * d_ctrl
    beat_phase = np.concatenate([[0.0], np.cumsum(bpm / 60 / CONTROL_RATE)])[:-1]
    n_slots = int(beat_phase[-1] * 4)
    slot_t = np.interp(np.arange(n_slots) / 4, beat_phase, ctrl_t)
    ci = np.minimum((slot_t * CONTROL_RATE).astype(int), n_ctrl - 1)
    v, d = lat[ci, 1], d_ctrl[ci]
    sec = np.searchsorted(sec_start, slot_t, side="right") - 1
    pos = np.arange(n_slots) % 16  # position in a 4/4 bar of sixteenths
    minor = v <= 0
    gain = 10 ** ((-16 + 14 * d) / 20)
    bright = np.clip(0.1 + 0.8 * d + timbre, 0, 1)
    attack = 0.03 - 0.025 * d
    shift = np.round(6 * v).astype(int)  # register in scale steps
    diss = np.clip(-v, 0, 1)
    next_t = np.append(slot_t[1:], duration)
    slot_dur = next_t - slot_t
    notes = _Notes()

    # Melody: the section letter's motif, one motif step per played note, density from arousal.
    p_play = np.select([pos % 4 == 0, pos % 2 == 0], [0.95, np.clip(1.5 * d - 0.1, 0, 1)],
                       np.clip(1.6 * d - 0.7, 0, 1))
    play = np.nonzero(rng.random(n_slots) < p_play)[0]
    step_in_sec = np.zeros(len(play), dtype=int)
    for s in np.unique(sec[play]):
        m = sec[play] == s
        step_in_sec[m] = np.arange(m.sum())
    deg = np.array([motif[sections[sec[i]].letter][j % 8] for i, j in zip(play, step_in_sec)]) + shift[play]
    pitch = 60 + tonic + _degree_to_semitone(deg, minor[play])
    gap = np.diff(np.append(slot_t[play], duration))
    notes.add(slot_t[play], np.minimum(gap * 0.95, 1.2), _midi_hz(pitch),
              0.30 * gain[play] * np.where(pos[play] % 4 == 0, 1.2, 1.0), bright[play],
              attack[play], 0.25 + 0.6 * (1 - d[play]), 2)

    # Chords and bass: the letter's progression, one chord per bar; struck every beat or every 2 beats.
    bar = np.arange(n_slots) // 16
    first_slot = np.searchsorted(sec, np.arange(len(sections)))  # sec never decreases
    bar_in_sec = bar - bar[np.minimum(first_slot, n_slots - 1)][sec]
    strike = np.nonzero((pos % 8 == 0) | ((pos % 4 == 0) & (d > 0.55)))[0]
    root = np.array([progression[sections[sec[i]].letter][bar_in_sec[i] % 4] for i in strike])
    length = np.minimum(np.where(d[strike] > 0.55, 4, 8) * slot_dur[strike] * 0.98, 1.6)
    for voice in (0, 2, 4):  # stacked scale thirds: the triad's quality follows the mode
        p = 48 + tonic + _degree_to_semitone(root + voice + shift[strike], minor[strike])
        notes.add(slot_t[strike], length, _midi_hz(p), 0.09 * gain[strike], 0.6 * bright[strike],
                  attack[strike] + 0.01, 0.8, 1)
        rough = diss[strike] > 0.05  # a detuned partner beats against the voice: roughness
        notes.add(slot_t[strike][rough], length[rough], _midi_hz(p[rough] + 0.35 * diss[strike][rough]),
                  0.12 * gain[strike][rough] * diss[strike][rough], 0.6 * bright[strike][rough],
                  attack[strike][rough] + 0.01, 0.8, 1)
    base = 48 + tonic + _degree_to_semitone(root + shift[strike], minor[strike])
    for interval, thresh in ((1, 0.15), (6, 0.4)):  # minor second, then tritone: dissonant clusters
        m = diss[strike] > thresh
        notes.add(slot_t[strike][m], length[m], _midi_hz(base[m] + interval),
                  0.12 * gain[strike][m] * diss[strike][m], 0.6 * bright[strike][m],
                  attack[strike][m] + 0.01, 0.8, 1)
    on_beat = np.nonzero(pos % 4 == 0)[0]
    bass_pitch = 36 + tonic + _degree_to_semitone(
        np.array([progression[sections[sec[i]].letter][bar_in_sec[i] % 4] for i in on_beat]), minor[on_beat])
    notes.add(slot_t[on_beat], np.minimum(4 * slot_dur[on_beat], 1.0), _midi_hz(bass_pitch),
              0.22 * gain[on_beat], 0.3 * bright[on_beat], 0.01, 0.35, 0)

    n = int(round(duration * sr))
    out = np.zeros(n)
    _render_notes(out, sr, notes.arrays(), tables, rng)

    # Percussion: kick every beat, snare on 2 and 4 when driven, hi-hat clicks on the sixteenth grid.
    drums = _drums(sr, rng)
    kick_amp = 0.35 * gain[on_beat] * (0.4 + 0.6 * d[on_beat])
    _render_templates(out, sr, slot_t[on_beat], kick_amp, drums["kick"])
    sn = np.nonzero((pos % 8 == 4) & (d > 0.4))[0]
    _render_templates(out, sr, slot_t[sn], 0.25 * gain[sn] * d[sn], drums["snare"])
    p_hat = np.where(pos % 2 == 0, np.clip(1.6 * d - 0.3, 0, 1), np.clip(1.8 * d - 0.9, 0, 1))
    hats = np.nonzero(rng.random(n_slots) < p_hat)[0]
    _render_templates(out, sr, slot_t[hats], 0.2 * gain[hats] * (0.3 + 0.7 * d[hats]), drums["hat"])

    # Noise bed: high-passed noise whose level rises with brightness.
    level = np.interp(np.arange(n) / sr, ctrl_t, 0.02 * np.clip(0.1 + 0.8 * d_ctrl + timbre, 0, 1) ** 2
                      * 10 ** ((-16 + 14 * d_ctrl) / 20))
    out += level * np.diff(rng.standard_normal(n + 1))

    audio = np.tanh(1.2 * master * out).astype(np.float32)
    facts = {"tonic_pitch_class": tonic, "mean_bpm": round(float(bpm.mean()), 1),
             "letters": letters, "progressions": {k: list(map(int, p)) for k, p in progression.items()}}
    return audio, facts
