"""`training.TRAINING_VERSION` names what training computes: the trained-model cache and checkpoints
of another version are never reused. This test holds the losses a tiny spec trains to under the
current version, so a change to what training computes fails here until the version is raised (and
these losses re-stored with it); an edit that computes the same thing passes and restarts no grid."""

import dataclasses

import pytest
from conftest import tiny_specs

from seeding import build_model
from tasks import task_from_dict
from training import TRAINING_VERSION, train

# version: the training losses of `tiny_specs([1], steps=6)` with warm-up, cosine decay and clipping
STORED_LOSSES = {1: [1.79694271, 1.67075801, 1.40336096, 2.09899664, 0.455575466, 0.466292679]}


def test_training_computes_what_its_version_says():
    spec = tiny_specs([1], steps=6)[0]
    config = dataclasses.replace(spec.train, lr_schedule="cosine", warmup=0.2, clip_grad_norm=1.0)
    losses = train(build_model(spec.model, config.seed), task_from_dict(spec.task), config).loss
    assert TRAINING_VERSION in STORED_LOSSES, f"store the losses of TRAINING_VERSION={TRAINING_VERSION} here"
    assert losses == pytest.approx(STORED_LOSSES[TRAINING_VERSION], rel=1e-6), (
        "training now computes other losses for the same spec: raise training.TRAINING_VERSION and store these "
        f"losses under it: {losses}"
    )
