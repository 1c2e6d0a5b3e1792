"""Splits and sampling of a run: every draw is a function of the seed and the step, so resumption is exact."""

from __future__ import annotations

from dataclasses import dataclass

from dsaml_utils.data.types import MEAN
from dsaml_utils.errors import UserError
from dsaml_utils.seeding import ORDER, SPLIT, TASKS, generator

VAL_QUERY_SONGS = 15
"""PDMER validation scores each validation listener on up to this many songs (the paper's query size)."""


def split_validation(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) ids; the validation part is a seeded random `fraction` (at least 1, if any)."""
    ids = sorted(ids)
    if fraction <= 0 or len(ids) < 2:
        return ids, []
    n_val = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    perm = generator(seed, SPLIT, 0).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    return [s for s in ids if s not in set(val)], val


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Sample indices of update `step`: epochs of seeded permutations of range(n), read in order."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        perm = generator(seed, ORDER, epoch).permutation(n)
        take = min(batch_size - len(out), n - off)
        out.extend(int(i) for i in perm[off:off + take])
        pos += take
    return out


def epoch_batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Sample indices of update `step` counted in epochs: each epoch a seeded permutation of range(n) read in
    batches of `batch_size`, the last one shorter (the authors' DMER loop: a shuffled DataLoader at batch 15,
    Littleor/Personalized-DMER train.py regular_train); ceil(n / batch_size) updates an epoch."""
    epoch, b = divmod(step, -(-n // batch_size))
    perm = generator(seed, ORDER, epoch).permutation(n)
    return [int(i) for i in perm[b * batch_size:(b + 1) * batch_size]]


@dataclass
class TaskPool:
    """Where MAML tasks come from: listener -> songs (personalized) or songs with mean labels (traditional)."""

    strategy: str
    listener_songs: dict[str, list[str]]  # personalized: the training listeners' songs
    songs: list[str]  # traditional: the training songs
    support: int  # songs in a task's support set
    query: int  # songs in a task's query set (the same for every task, so tasks stack)


def make_task_pool(strategy: str, listener_songs: dict[str, list[str]], songs: list[str], support: int,
                   query: int) -> TaskPool:
    """A TaskPool whose query size fits every listener (support and query never share a song)."""
    if strategy == "personalized":
        if not listener_songs:
            raise UserError("no listener is left for personalized tasks (check the task filter: min_songs, "
                            "flat_threshold) or use --strategy traditional")
        fewest = min(len(v) for v in listener_songs.values())
    else:
        fewest = len(songs)
    q = min(query, fewest - support)
    if q < 1:
        raise UserError(f"tasks need {support} support song(s) and at least 1 query song, but a "
                        f"{'listener has' if strategy == 'personalized' else 'training set has'} only {fewest}")
    return TaskPool(strategy, listener_songs, sorted(songs), support, q)


def check_disjoint(pool: TaskPool, n_tasks: int) -> None:
    """Raise UserError when the traditional pool has too few songs for `n_tasks` tasks that share no song."""
    need = n_tasks * (pool.support + pool.query)
    if pool.strategy == "traditional" and need > len(pool.songs):
        raise UserError(f"{n_tasks} traditional tasks sharing no song need {need} training songs "
                        f"({pool.support} support + {pool.query} query each); there are {len(pool.songs)}")


def sample_tasks(pool: TaskPool, n_tasks: int, seed: int, step: int,
                 disjoint: bool = False) -> list[tuple[list[tuple[str, str]], list[tuple[str, str]]]]:
    """Meta-batch of update `step`: per task, (support, query) lists of (song, listener), disjoint.

    disjoint (traditional tasks): no song twice in the meta-batch, as the authors' generate_task_from_dataset
    (Littleor/Personalized-DMER utils/dataset.py): one permutation of the songs, every task's support from its
    head, the queries from what follows."""
    rng = generator(seed, TASKS, step)
    k = pool.support + pool.query
    tasks = []
    if disjoint and pool.strategy == "traditional":
        check_disjoint(pool, n_tasks)
        perm = [pool.songs[j] for j in rng.permutation(len(pool.songs))]
        sup, qry = perm[:n_tasks * pool.support], perm[n_tasks * pool.support:]
        for t in range(n_tasks):
            s, q = sup[t * pool.support:(t + 1) * pool.support], qry[t * pool.query:(t + 1) * pool.query]
            tasks.append(([(x, MEAN) for x in s], [(x, MEAN) for x in q]))
        return tasks
    if pool.strategy == "personalized":
        listeners = sorted(pool.listener_songs)
        picks = rng.choice(len(listeners), size=n_tasks, replace=len(listeners) < n_tasks)
        for i in picks:
            lst = listeners[i]
            songs = [pool.listener_songs[lst][j] for j in rng.permutation(len(pool.listener_songs[lst]))[:k]]
            tasks.append(([(s, lst) for s in songs[:pool.support]], [(s, lst) for s in songs[pool.support:]]))
    else:
        for _ in range(n_tasks):
            songs = [pool.songs[j] for j in rng.choice(len(pool.songs), size=k, replace=False)]
            tasks.append(([(s, MEAN) for s in songs[:pool.support]], [(s, MEAN) for s in songs[pool.support:]]))
    return tasks
