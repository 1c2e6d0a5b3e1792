"""A synthetic music-emotion dataset in DEAM's exact layout, with listeners who differ like people do.

DEAM is not redistributable, so the default workbook runs on this generator's output. It is built so that
every stage of DSAML has something real to learn: the audio carries its emotion the way music does, the
emotion changes between sections that come back later (long-range context matters), and listeners disagree
in the ways that make personalization (PDMER) worth doing.

1. Latent emotion (the hidden truth). Each song has a form such as ``A B A' C A``: sections of 9-13 s, of
   which some return. Every distinct section letter gets an (arousal, valence) pair in [-0.85, 0.85] (song
   centre + letter offset); a return (A') repeats its letter's music and emotion with a small perturbation.
   Within a section the emotion drifts slowly (a linear trend plus a gentle wobble); at a boundary it
   changes over ~1 s. The latent lives on a 20 Hz control grid and drives both the audio and the labels.

2. Music from the latent (vectorised additive synthesis: wavetable notes summed with ``np.bincount``).
   Arousal (as drive d = (a + 1) / 2 in [0, 1]) sets
   - tempo: 62 + 116 d BPM (62-178), integrated from the latent, so tempo follows within-section drift;
   - note density: melody on every beat, eighths with probability ~1.5 d, sixteenths ~1.6 d - 0.7;
     hi-hat clicks on the sixteenth grid likewise; snare on beats 2 and 4 once d > 0.4; chords re-struck
     every beat instead of every two beats when d > 0.55;
   - loudness: -16 dB to -2 dB across d, times a per-song mastering gain of +-4 dB (so loudness is a
     cue within a song but not a perfect one across songs);
   - brightness: every note mixes a dark wavetable (3 harmonics, 1/h^2.5) with a bright one (up to 16
     harmonics, 1/h^0.9) in proportion to d; a high-passed noise bed rises with d^2; attacks get sharper.
   Valence (v in [-1, 1]) sets
   - mode: notes and chords come from the parallel major scale when v > 0 and the natural minor when
     v <= 0 (chords are stacked scale thirds, so the triad qualities follow the mode);
   - consonance vs dissonance: for v < 0 chords gain a clashing voice (a minor second above the root,
     plus a tritone below v = -0.4) and detuned partner voices that beat (roughness), all growing with -v;
   - register: melody and chords move up to 6 scale steps up at v = 1 and down at v = -1.
   (With 3 scale steps and quieter dissonant voices, valence was hard to hear: a ridge probe on pooled
   96-band log-mel slices reached CCC 0.54 against the true valence on the test songs, 0.75 now, with the
   arousal probe at 0.92; see docs/audio_probe.py. The labels did not change: the audio uses no extra
   random draws.)
   Each section letter owns a 4-chord progression and an 8-note melodic motif, so a returning section
   sounds like its first occurrence. Kick drum on every beat, bass on the chord root; the mix is
   soft-clipped with tanh and written as MP3 by libsndfile (same seed, same bytes).

3. True curves. Label i has time t_i = 15.0, 15.5, ... (DEAM drops the first 15 s) for every t_i with
   t_i + 0.5 <= duration, and equals the latent averaged over [t_i, t_i + 0.5) (a 45 s clip has 60).

4. Listeners. Each listener has, per dimension, an offset (sd 0.25), a log-normal gain (log sd 0.35), a
   reaction lag in [0, 2] s (2 x Beta(1.5, 3), mean 0.67 s; the slider sits at 0 until they react),
   exponential smoothing with a time constant of 0.2-1.0 s (starting from 0, which is why early labels are
   unreliable), a squash tanh(k x) / k with k in 0.3-1.5 (compresses the extremes, more for larger k),
   AR(1) annotation noise (sd 0.02-0.06, 1.5 s memory) and a small per-song offset (sd 0.03). A minority
   (``invert_fraction`` = 30 % of each group, rounded, at least one in a group of two or more) hears
   valence inverted. The stable traits (offset, gain, squash, inversion) outweigh the per-song noise, as
   with real annotators who use the scale in their own way, so a listener's other songs say how they will
   rate the next one: that is what personalization can learn. Curves are clipped to
   [-1, 1] and written with 4 decimals; the MEAN curve of a song is the average of its raters' written
   curves (as in DEAM), written with 6 decimals.
   - training listeners (``listeners``) annotate the 45 s clips, balanced so each rates about
     ``(songs - anonymous_songs) * raters_per_song / (listeners + lazy_listeners)`` identified clips
     (default 22-23: enough for the authors' "more than 15 songs" filter);
   - lazy listeners (``lazy_listeners``) rate clips too but hardly move the slider: every one of their
     curves is removed by the authors' flat filter (``data.types.is_flat``);
   - test listeners (``test_listeners``) rate only the full songs (by default each of the 8 rates all
     10), so PDMER is evaluated on listeners never seen in training, with up to 9 support songs (k-shot);
   - the first ``anonymous_songs`` clips (ids 2..) are rated by training listeners whose identity is not
     written: their per-rater files have no ``WorkerId`` column, like DEAM's 2013 set.
   Static (song-level) ratings: each rater gives round(5 + 4 * mean(own curve) + N(0, 0.5)) on 1..9.

   How much listeners differ, as measured by ``listener_divergence`` on the default dataset (seed 0;
   identified listeners' non-flat curves, scored per song, averaged per listener, then over listeners;
   arousal / valence): a listener against the MEAN curve RMSE 0.22 / 0.31, CCC 0.59 / 0.25; a listener
   against the hidden truth RMSE 0.26 / 0.37, CCC 0.55 / 0.34; the MEAN curve against the truth RMSE
   0.17 / 0.29, CCC 0.67 / 0.33. The MEAN is closer to the truth than a single listener, but not equal
   to it: every listener reacts late and smooths (the MEAN lags the music), and the inverted minority
   shrinks the mean valence. ``DEFAULT_DIVERGENCE`` holds these numbers.

   How much an ideal personalizer could gain, as measured by ``personalization_headroom`` (held-out
   listeners, every ordered pair of their songs: a linear recalibration a + b * MEAN fitted on the first
   60 labels of one song, scored by CCC on the other): the MEAN curve scores 0.74 / 0.26 against a held-out
   listener, the recalibrated MEAN 0.90 / 0.76, a headroom of +0.15 / +0.49 (``DEFAULT_HEADROOM``). With
   the earlier, noise-dominated listener model (offset sd 0.15, gain log sd 0.25, 20 % inverted, noise
   0.03-0.10, per-song offset 0.05, lag up to 3 s) it was -0.01 / +0.20.

5. Layout written under ``out`` (the folder and file names of the public DEAM release)::

     DEAM_audio/MEMD_audio/<id>.mp3                      clips 2.. (45 s) and full songs 2001.. (60-90 s)
     DEAM_Annotations/annotations/annotations averaged per song/dynamic (per second annotations)/
         arousal.csv, valence.csv          song_id,sample_15000ms,...  (empty cells past a song's end)
     DEAM_Annotations/annotations/annotations averaged per song/song_level/
         static_annotations_averaged_songs_1_2000.csv     "song_id, valence_mean, valence_std, ..."
         static_annotations_averaged_songs_2000_2058.csv  (+ max/min columns, as DEAM's 2015 file)
     DEAM_Annotations/annotations/annotations per each rater/dynamic (per second annotations)/
         arousal/<id>.csv, valence/<id>.csv   WorkerId,sample_15000ms,... (anonymous block: no WorkerId)
     synthetic_truth/truth.npz       "<id>/times" [T], "<id>/truth" [T, 2] (arousal, valence)
     synthetic_truth/listeners.json  every listener: id, role (train/test/lazy), parameters, songs rated
     synthetic_truth/songs.json      every song: duration, form, section bounds and emotions, key
     synthetic_truth/config.json     the SynthConfig and the summary

   Static swap: public DEAM copies have the valence and arousal columns of songs <= 1000 swapped in the
   1_2000 static file. ``swap_static_le_1000`` (default True, CLI ``--no-static-swap`` to turn off)
   reproduces that quirk so loaders can be tested on it; the dynamic files are never swapped.

Default size: 120 clips (24 anonymous) + 10 full songs (60-90 s), 24 training + 2 lazy + 8 test
listeners, 6 raters per clip and 8 per full song, 22.05 kHz MP3 (~40 MB on disk). It costs ~70 s of
CPU (MP3 encoding is about half), so ~40 s on two free cores with the default two threads.

Use: ``dsaml synth --out data/synthetic`` (see ``--help``), or in Python ``generate(out, SynthConfig(...))``.
``plan(cfg)`` shows who rates what without making audio, ``render_song(id, seconds, cfg)`` gives one song's
audio and truth in memory, ``load_truth(root)`` reads the hidden curves and listener records back, and
``listener_divergence(root)`` measures how far listeners are from the MEAN curves and from the truth, and
``personalization_headroom(root)`` how much a one-song recalibration of the MEAN gains on held-out listeners.

Modules, each using only those before it: ``config`` (SynthConfig, ListenerModel, the layout, seeded random
streams), ``latent`` (sections and the hidden emotion), ``music`` (audio from the latent), ``listeners``
(simulated annotators), ``writer`` (render_song, plan, generate) and ``analysis`` (load_truth and the two
measures above, read through the DEAM loader).
"""

from dsaml_utils.data.synthetic.analysis import (
    listener_divergence,
    load_truth,
    personalization_headroom,
)
from dsaml_utils.data.synthetic.config import (
    ANN_DIR,
    AUDIO_DIR,
    AVG_DYNAMIC_DIR,
    CONTROL_RATE,
    DEFAULT_DIVERGENCE,
    DEFAULT_HEADROOM,
    FIRST_FULL_ID,
    LABEL_START,
    RATER_DYNAMIC_DIR,
    STATIC_CLIPS_FILE,
    STATIC_DIR,
    STATIC_FULL_FILE,
    TRUTH_DIR,
    ListenerModel,
    SynthConfig,
    SynthSummary,
)
from dsaml_utils.data.synthetic.latent import Section, label_times
from dsaml_utils.data.synthetic.listeners import Listener
from dsaml_utils.data.synthetic.writer import (
    RenderedSong,
    SynthPlan,
    generate,
    plan,
    render_song,
)

__all__ = [
    "ANN_DIR",
    "AUDIO_DIR",
    "AVG_DYNAMIC_DIR",
    "CONTROL_RATE",
    "DEFAULT_DIVERGENCE",
    "DEFAULT_HEADROOM",
    "FIRST_FULL_ID",
    "LABEL_START",
    "RATER_DYNAMIC_DIR",
    "STATIC_CLIPS_FILE",
    "STATIC_DIR",
    "STATIC_FULL_FILE",
    "TRUTH_DIR",
    "Listener",
    "ListenerModel",
    "RenderedSong",
    "Section",
    "SynthConfig",
    "SynthPlan",
    "SynthSummary",
    "generate",
    "label_times",
    "listener_divergence",
    "load_truth",
    "personalization_headroom",
    "plan",
    "render_song",
]
