"""One seeding scheme for every random stream: a generator is a function of (seed, stream, *keys) only.

Each use of randomness has its own stream number, so two uses never share numbers and a result never
depends on the order in which things were computed (which is what makes an interrupted run resume
exactly). NumPy streams come from `generator`; torch's global generator is seeded with `torch_seed`
right before the random work it drives (dropout in a training update or an adaptation).
"""

from __future__ import annotations

import numpy as np

# training (per update step)
ORDER, WINDOW, TASKS, SPLIT, VALIDATION, TORCH_STEP = range(6)
# evaluation and personalization
EVAL_ORDER = 11  # a held-out listener's seeded song order
ADAPT_KSHOT = 12  # torch seed of one k-shot adaptation (listener, draw)
ADAPT_SAME_SONG = 13  # torch seed of one same-song adaptation (listener)
ADAPT_VALIDATION = 14  # torch seed of one validation listener's adaptation
ADAPT_PERSONAL = 15  # torch seed of `dsaml personalize`
PERMUTE = 16  # one permutation of a feature group (evaluation.importance: repeat, group)
# the synthetic dataset uses its own keys (song ids, listener ids) under its seed


def generator(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy generator that depends only on (seed, *keys)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]))


def torch_seed(seed: int, *keys: int) -> int:
    """A seed for torch.manual_seed that depends only on (seed, *keys)."""
    return int(generator(seed, *keys).integers(2**62))
