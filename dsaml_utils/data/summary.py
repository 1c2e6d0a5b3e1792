"""What a loaded dataset holds and can be used for (`dsaml inspect`)."""

from __future__ import annotations

from dsaml_utils.data.types import MEAN, MusicDataset, personalized_tasks


def summarize(ds: MusicDataset) -> dict:
    """Counts that say what a loaded dataset can be used for, plus its problems (JSON-ready)."""
    songs = ds.songs.values()
    split = set(ds.train_ids) | set(ds.test_ids)
    lengths = [len(s.curves[MEAN]) for s in songs if MEAN in s.curves]
    summary = {
        "name": ds.name,
        "root": str(ds.root),
        "value_range": list(ds.value_range),
        "songs_annotated": len(ds.songs),
        "songs_with_audio": sum(s.audio_path is not None for s in songs),
        "full_length_songs": sum(s.full_length for s in songs),
        "static_songs": sum(s.static is not None for s in songs),
        "train_songs": len(ds.train_ids),
        "test_songs": len(ds.test_ids),
        "unsplit_songs": sum(sid not in split for sid in ds.songs),
        "mean_labels_min": min(lengths, default=0),
        "mean_labels_max": max(lengths, default=0),
        "listeners": len(ds.listeners()),
        "listener_curves": sum(len(s.listeners) for s in songs),
        "task_listeners_train": len(personalized_tasks(ds, ds.train_ids)),
        "anonymous_curves": ds.anonymous_curves,
        "problems": list(ds.problems),
    }
    reason = None
    if not ds.songs:
        reason = "no annotated songs"
    elif not ds.train_ids:
        reason = "no training songs in the paper's split"
    elif not ds.test_ids:
        reason = "no test songs in the paper's split"
    summary["usable"] = reason is None
    summary["reason"] = reason
    return summary


def format_summary(summary: dict, max_problems: int = 20) -> str:
    """The summary as a few human-readable lines."""
    s = summary
    lines = [
        f"dataset    {s['name']}  (root {s['root']}, labels in "
        f"[{s['value_range'][0]}, {s['value_range'][1]}])",
        f"songs      {s['songs_annotated']} annotated, {s['songs_with_audio']} with audio, "
        f"{s['full_length_songs']} full-length, {s['static_songs']} with static labels",
        f"split      train {s['train_songs']}, test {s['test_songs']}, "
        f"outside the split {s['unsplit_songs']}",
        f"labels     {s['mean_labels_min']}..{s['mean_labels_max']} mean-curve values per song (2 Hz)",
        f"listeners  {s['listeners']} identified, {s['listener_curves']} listener-song curves, "
        f"{s['task_listeners_train']} with a personalized training task (default filters), "
        f"{s['anonymous_curves']} anonymous rater curves",
        f"usable     {'yes' if s['usable'] else 'no: ' + s['reason']}",
        f"problems   {len(s['problems'])}",
    ]
    lines += [f"  - {p}" for p in s["problems"][:max_problems]]
    if len(s["problems"]) > max_problems:
        lines.append(f"  ... and {len(s['problems']) - max_problems} more (see --json)")
    return "\n".join(lines)
