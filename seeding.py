"""Random streams: every run draws its initial weights, training data, validation data and
level-2 prompts from its own named stream of one seed.

Owns `STREAMS`, `stream_seed`, `make_generator`, `step_generator`, `build_model` and `seed_everything`. Because the
streams are independent, variants trained with one seed see the same prompts (comparisons are
paired) and a change of architecture does not change the data a run sees.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from transformer import BaseLoopedTransformer, ModelConfig

STREAMS = {"init": 0, "train": 1, "validation": 2, "level2": 3, "ood": 4, "jacobian": 5}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (for code outside this library)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: str) -> int:
    """A 32-bit seed for one named random stream of a run, independent of the others."""
    if stream not in STREAMS:
        raise ValueError(f"stream={stream!r} is not known; choose one of {tuple(STREAMS)}")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(STREAMS[stream],))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def make_generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, stream))
    return generator


def step_generator(seed: int, stream: str, step: int) -> torch.Generator:
    """A CPU generator for the draws of one training step in one named stream: a function of (seed,
    stream, step) alone, so a resumed run draws the same without a generator in its checkpoint, and
    the other streams (the training data above all) are left as they were."""
    if stream not in STREAMS:
        raise ValueError(f"stream={stream!r} is not known; choose one of {tuple(STREAMS)}")
    if not (isinstance(step, int) and step >= 0):
        raise ValueError(f"step={step!r} must be an integer >= 0")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(STREAMS[stream], step))
    generator = torch.Generator()
    generator.manual_seed(int(sequence.generate_state(1, dtype=np.uint32)[0]))
    return generator


def build_model(config: ModelConfig, seed: int, model_class: type = BaseLoopedTransformer):
    """Build a model whose initial weights depend only on (config, seed), not on global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "init"))
        return model_class(config)
