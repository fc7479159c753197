"""Every committed run record still loads: its model config builds the model it describes.

A record (`results/experiment */data/<run>.json`, and `full/data/` where a full-preset run was
committed) keeps its `ModelConfig` under spec.model, written by whatever version of the code
ran it. Loading must keep working across renames (old choice names such as block='seed000' read
as the current ones) and added fields (missing ones take their defaults).
"""

import json
from pathlib import Path

import pytest

from transformer import RENAMED_VALUES, BaseLoopedTransformer, ModelConfig, count_parameters

ROOT = Path(__file__).resolve().parents[1]
RECORD_PATHS = sorted(
    [*ROOT.glob("results/experiment */data/*.json"), *ROOT.glob("results/experiment */full/data/*.json")]
)


def model_records() -> dict[str, dict]:
    """Relative path -> record, for every committed JSON that is a run record (has spec.model)."""
    records = {}
    for path in RECORD_PATHS:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "model" in record.get("spec", {}):
            records[str(path.relative_to(ROOT))] = record
    return records


RECORDS = model_records()


def test_there_are_records():
    assert len(RECORDS) > 0


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_model_config_loads_and_builds(name):
    stored = RECORDS[name]["spec"]["model"]
    config = ModelConfig.from_dict(stored)
    current = config.to_dict()
    # Every stored field is kept, under its current name where the choice was renamed.
    for field, value in stored.items():
        assert current[field] == RENAMED_VALUES.get(field, {}).get(value, value), field
    assert not any(current[field] in renames for field, renames in RENAMED_VALUES.items())
    assert ModelConfig.from_dict(current) == config
    # The model it describes has the parameter count the run recorded.
    model = BaseLoopedTransformer(config)
    if "parameters" in RECORDS[name]:
        assert count_parameters(model) == RECORDS[name]["parameters"]


def test_a_file_that_is_not_json_is_named_when_read(tmp_path):
    import pytest

    from storage import read_json

    path = tmp_path / "data" / "grid.json"
    path.parent.mkdir()
    path.write_text('{"wall_time_s": 1')  # truncated
    with pytest.raises(ValueError, match=r"grid.json is not valid JSON .*; delete or restore it"):
        read_json(path)
