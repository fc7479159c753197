"""`ModelConfig` and its component configs: the stored (flat) form never changes, and each component checks itself.

A run record stores `ModelConfig.to_dict()` under spec.model, and a re-run trains nothing only if the spec it
would write equals the stored one. So every committed record must serialise back to exactly what it stores
(records written before a field existed: what they store, plus that field's default), with the same field
names, order and defaults. The components are views of the flat fields: building one checks its own fields,
and its errors name the flat field a user set.
"""

import dataclasses
import json
import re

import pytest
from test_records import RECORDS

from model_config import (
    ContextConfig,
    InjectionConfig,
    LoopConfig,
    ModelConfig,
    PositionalConfig,
    StackConfig,
    StateConfig,
    current_names,
)

# The stored form: every field, in order, with the default a record that lacks it is read with. Never edit
# these: a changed name, order or default changes what re-runs compare against (add new fields at the end).
STORED_DEFAULTS = {
    "n_layers": 1,
    "n_heads": 4,
    "hidden_dim": 64,
    "mlp_hidden": 256,
    "context": 127,
    "pe": "none",
    "causal": True,
    "injection": "add",
    "block": "laptev",
    "mixer": "attention",
    "ssm_state": 16,
    "loop_stacks": 1,
    "ema_alpha": 0.5,
    "context_keep": "all",
    "context_n": None,
    "context_cut_at": 2,
    "context_shrink": 0,
    "context_compute": "mask",
    "state_keep": "all",
    "state_fraction": 1.0,
    "state_compute": "all",
    "init": "torch",
    "pe_at": "prompt",
    "pe_std": 1.0,
    "final_norm": None,
    "loop_embedding": "none",
}

# Which component each flat field belongs to, under which name (n_dims and context belong to the model itself).
COMPONENT_FIELDS = {
    "stack_config": {
        name: name
        for name in (
            "n_layers",
            "n_heads",
            "hidden_dim",
            "mlp_hidden",
            "block",
            "mixer",
            "ssm_state",
            "causal",
            "final_norm",
            "init",
        )
    },
    "injection_config": {"kind": "injection", "ema_alpha": "ema_alpha"},
    "positional_config": {"kind": "pe", "at": "pe_at", "std": "pe_std", "init": "init"},
    "context_config": {
        "keep": "context_keep",
        "n": "context_n",
        "cut_at": "context_cut_at",
        "shrink": "context_shrink",
        "compute": "context_compute",
    },
    "state_config": {"keep": "state_keep", "fraction": "state_fraction", "compute": "state_compute"},
    "loop_config": {"stacks": "loop_stacks", "embedding": "loop_embedding"},
}


def test_the_stored_form_keeps_its_fields_order_and_defaults():
    assert ModelConfig(n_dims=3).to_dict() == {"n_dims": 3, **STORED_DEFAULTS}
    assert list(ModelConfig(n_dims=3).to_dict()) == ["n_dims", *STORED_DEFAULTS]


def test_every_record_serialises_back_to_what_it_stores():
    complete = 0
    for name, record in RECORDS.items():
        stored = record["spec"]["model"]
        config = ModelConfig(**stored)  # the notebooks' way of reading a record back
        assert config == ModelConfig.from_dict(stored), name
        expected = {"n_dims": stored["n_dims"], **STORED_DEFAULTS, **current_names(stored)}
        assert json.dumps(config.to_dict()) == json.dumps(expected), name
        assert json.dumps(ModelConfig(**config.to_dict()).to_dict()) == json.dumps(expected), name
        if stored == current_names(stored) and set(stored) == set(expected):
            # a record written by the current schema: byte for byte what it stores
            assert json.dumps(config.to_dict(), sort_keys=True) == json.dumps(stored, sort_keys=True), name
            complete += 1
    assert complete > 0


def test_the_components_are_views_of_the_flat_fields_outside_the_stored_form():
    covered = {flat for fields in COMPONENT_FIELDS.values() for flat in fields.values()}
    assert covered | {"n_dims", "context"} == {field.name for field in dataclasses.fields(ModelConfig)}
    for record in RECORDS.values():
        config = ModelConfig.from_dict(record["spec"]["model"])
        for view, fields in COMPONENT_FIELDS.items():
            component = getattr(config, view)
            assert [f.name for f in dataclasses.fields(component)] == list(fields), view
            assert all(getattr(component, short) == getattr(config, flat) for short, flat in fields.items()), view
    config = ModelConfig(n_dims=3, injection="ema", ema_alpha=0.25)
    assert config.components[1] == InjectionConfig("ema", 0.25)
    assert "injection_config" not in config.to_dict() and "components" not in repr(config)
    assert config == dataclasses.replace(config) and hash(config) == hash(ModelConfig(**config.to_dict()))


def test_component_properties():
    assert StackConfig(1, 2, 8, 16, "gpt2", "attention", 16, True, None, "torch").normalised
    assert not StackConfig(1, 2, 8, 16, "laptev", "attention", 16, True, None, "torch").normalised
    assert StackConfig(1, 2, 8, 16, "laptev", "attention", 16, True, True, "torch").normalised
    assert StackConfig(1, 2, 8, 16, "lstm", "attention", 16, True, None, "torch").recurrent == "block='lstm'"
    assert StackConfig(1, 2, 8, 16, "gpt2", "ssm", 16, True, None, "torch").recurrent == "mixer='ssm'"
    assert InjectionConfig("ema_learned", 0.3).learned_alpha and not InjectionConfig("ema", 0.3).learned_alpha
    assert PositionalConfig("learned", "loop", 1.0, "torch").per_loop
    assert ContextConfig("first", 3, 2, 0, "drop").drops and not ContextConfig("first", 3, 2, 0, "mask").drops
    assert LoopConfig(1, "sinusoidal").signal and not LoopConfig(2, "none").signal


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: StackConfig(1, 3, 8, 16, "laptev", "attention", 16, True, None, "torch"), "hidden_dim=8 must be"),
        (lambda: StackConfig(1, 2, 8, 16, "lstm", "attention", 16, False, None, "torch"), "ModelConfig.causal=False"),
        (lambda: StackConfig(1, 2, 8, 16, "gpt2", "ssm", 16, True, None, "gpt2"), "ModelConfig.init='gpt2' is GPT-2"),
        (lambda: InjectionConfig("add", 0.3), "ModelConfig.ema_alpha=0.3 has no effect with injection='add'"),
        (lambda: PositionalConfig("none", "loop", 1.0, "torch"), "ModelConfig.pe_at='loop' has no effect"),
        (lambda: PositionalConfig("learned", "prompt", 0.02, "gpt2"), "ModelConfig.pe_std=0.02 has no effect"),
        (lambda: ContextConfig("all", 3, 2, 0, "mask"), "ModelConfig.context_n and context_shrink need"),
        (lambda: ContextConfig("random_batch", 3, 2, 0, "mask"), "it needs context_compute='drop'"),
        (lambda: StateConfig("all", 0.5, "all"), "ModelConfig.state_fraction=0.5 must be 1 when state_keep='all'"),
        (lambda: StateConfig("last_shifted", 0.5, "carried"), "needs state_keep='last_in_place'"),
        (lambda: LoopConfig(0, "none"), "ModelConfig.loop_stacks=0 must be an integer >= 1"),
        (lambda: LoopConfig(1, "learned"), "ModelConfig.loop_embedding='learned' is not allowed; choose one of"),
    ],
)
def test_each_component_checks_itself(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(block="lstm", context_keep="last", context_n=2),
            "ModelConfig.context_keep='last' is not allowed with block='lstm': a recurrence cannot mask keys; "
            "use context_keep='all'",
        ),
        (
            dict(state_keep="last_in_place", state_fraction=0.5, state_compute="carried", context_keep="first",
                 context_n=2),
            "ModelConfig.state_compute='carried' runs later loops on the carried tokens only, which a context "
            "selection cannot also cut; it needs context_keep='all' (got context_keep='first')",
        ),
    ],
)
def test_the_rules_between_components(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(n_dims=3, hidden_dim=8, n_heads=2, **overrides)
