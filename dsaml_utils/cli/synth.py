"""`dsaml synth`: write a synthetic music-emotion dataset in DEAM's layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsaml_utils.data.synthetic import (
    TRUTH_DIR,
    SynthConfig,
    listener_divergence,
)
from dsaml_utils.features.frame_files import synthesize


def register(subparsers) -> None:
    """Add `dsaml synth`."""
    d = SynthConfig()
    p = subparsers.add_parser("synth", help="write a synthetic dataset in DEAM's layout",
                              description="Write a synthetic music-emotion dataset in DEAM's exact layout "
                              "(MP3 audio, averaged and per-rater curves, static ratings) plus the hidden "
                              "truth under synthetic_truth/. See dsaml_utils/data/synthetic for the model.")
    p.add_argument("--out", required=True, type=Path, help="dataset root to write")
    p.add_argument("--songs", type=int, default=d.songs, help=f"45 s training clips (default {d.songs})")
    p.add_argument("--listeners", type=int, default=d.listeners,
                   help=f"training listeners (default {d.listeners})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--full-songs", type=int, default=d.full_songs,
                   help=f"long test songs, ids 2001.. (default {d.full_songs})")
    p.add_argument("--anonymous-songs", type=int, default=d.anonymous_songs,
                   help=f"clips whose per-rater files lack WorkerId (default {d.anonymous_songs})")
    p.add_argument("--test-listeners", type=int, default=d.test_listeners,
                   help=f"held-out listeners rating the full songs (default {d.test_listeners})")
    p.add_argument("--lazy-listeners", type=int, default=d.lazy_listeners,
                   help=f"near-flat raters (default {d.lazy_listeners})")
    p.add_argument("--raters-per-song", type=int, default=d.raters_per_song,
                   help=f"raters per clip (default {d.raters_per_song})")
    p.add_argument("--raters-per-full-song", type=int, default=d.raters_per_full_song,
                   help=f"raters per full song (default {d.raters_per_full_song})")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate,
                   help=f"MP3 sample rate in Hz (default {d.sample_rate})")
    p.add_argument("--clip-seconds", type=float, default=d.clip_seconds,
                   help=f"clip duration (default {d.clip_seconds})")
    p.add_argument("--full-seconds", type=float, nargs=2, default=d.full_seconds, metavar=("MIN", "MAX"),
                   help=f"full-song duration range (default {d.full_seconds[0]} {d.full_seconds[1]})")
    p.add_argument("--no-static-swap", action="store_true",
                   help="do not reproduce public DEAM's swapped static valence/arousal for ids <= 1000")
    p.add_argument("--workers", type=int, default=d.workers, help=f"threads (default {d.workers})")
    p.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--no-features", action="store_true",
                   help="do not write openSMILE frame features (features/<id>.csv; `dsaml features` can later)")
    p.add_argument("--divergence", action="store_true", help="also report how much listeners differ")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset the options describe and report it."""
    cfg = SynthConfig(
        seed=args.seed, songs=args.songs, full_songs=args.full_songs, anonymous_songs=args.anonymous_songs,
        listeners=args.listeners, test_listeners=args.test_listeners, lazy_listeners=args.lazy_listeners,
        raters_per_song=args.raters_per_song, raters_per_full_song=args.raters_per_full_song,
        sample_rate=args.sample_rate, clip_seconds=args.clip_seconds, full_seconds=tuple(args.full_seconds),
        swap_static_le_1000=not args.no_static_swap, workers=args.workers,
    )
    summary, feature_seconds = synthesize(args.out, cfg, overwrite=args.force, features=not args.no_features)
    report = summary.to_json()
    report["feature_seconds"] = None if args.no_features else feature_seconds
    if args.divergence:
        div = listener_divergence(args.out)
        div.pop("per_listener")
        report["divergence"] = div
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"wrote {summary.root} in {summary.seconds:.1f} s: {summary.clips} clips "
          f"({summary.anonymous_songs} without WorkerId), {summary.test_songs} full songs; "
          f"{summary.train_listeners} training, {summary.test_listeners} test and {summary.lazy_listeners} "
          f"lazy listeners; {summary.listener_curves} identified listener curves")
    print(f"each training listener rated >= {summary.min_clips_per_train_listener} clips; each test "
          f"listener >= {summary.min_full_songs_per_test_listener} full songs; truth in {TRUTH_DIR}/")
    if args.no_features:
        print("no frame features written (--no-features); `dsaml features --dataset synthetic` writes them")
    else:
        print(f"frame features: features/<id>.csv for all {summary.songs_with_audio} songs "
              f"({feature_seconds:.1f} s of openSMILE, summed over threads)")
    if args.divergence:
        for k, v in report["divergence"].items():
            print(f"  {k}: {v}")
    return 0
