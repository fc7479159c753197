"""Files: atomic writes of JSON, weights and SVG, and saved runs.

Owns `atomic_write_bytes` (readers see the old file or the new one, never a part), `set_aside`
(an unusable file renamed out of the way with a warning), `write_json`
and `read_json`, `torch_bytes`, `save_run` / `load_run` (weights loaded with weights_only) and
`save_svg` / `stable_svg` (byte-identical SVG for identical figures, and free of last-digit
layout noise across machines).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from checks import require
from transformer import BaseLoopedTransformer, ModelConfig


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """The JSON in `path`; a file that is not JSON raises ValueError naming it (a truncated or
    hand-edited side file must say which file it is)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete or restore it") from None


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def set_aside(path: Path, why: str, then: str, what: str = "") -> Path:
    """Rename an unusable file to `<name>.set-aside` (kept for inspection) and warn, naming the file
    (after `what` it is), why it is unusable and what happens instead (`then`). Returns the new path."""
    aside = path.with_name(path.name + ".set-aside")
    if aside.is_dir():  # an earlier set-aside folder of the same name: the newer one is kept
        shutil.rmtree(aside)
    path.replace(aside)
    named = f"{what} {path}" if what else str(path)
    warnings.warn(f"{named} {why}; it is set aside as {aside.name} and {then}", stacklevel=3)
    return aside


def save_run(directory: str | Path, model: torch.nn.Module, record: dict) -> None:
    """Save weights (`model.pt`) and a JSON record (`run.json`, must hold "model_config")."""
    require("model_config" in record, "save_run record needs a 'model_config' entry")
    directory = Path(directory)
    atomic_write_bytes(directory / "model.pt", torch_bytes(model.state_dict()))
    write_json(directory / "run.json", record)


def load_run(directory: str | Path, model_class: type = BaseLoopedTransformer):
    """Rebuild the model of a saved run (weights_only load) and return (model, record)."""
    directory = Path(directory)
    record = read_json(directory / "run.json")
    model = model_class(ModelConfig.from_dict(record["model_config"]))
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    return model, record


SVG_HASH_SALT = "looped-transformers"


def save_svg(fig, path: str | Path) -> None:
    """Save a matplotlib figure as SVG (atomic write): byte-identical for identical figures on one
    machine, and across machines unchanged by layout arithmetic in the last digits (`stable_svg`)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    atomic_write_bytes(path, stable_svg(buffer.getvalue()))


SVG_DECIMALS = 3  # 0.001 pt, a third of a micrometre on paper
_SVG_ATTRIBUTE = re.compile(rb'="[^"]*"')
_SVG_DECIMAL = re.compile(rb"-?\d+\.\d{%d,}" % (SVG_DECIMALS + 1))
_SVG_HASHED_ID = re.compile(rb"\b([mph])[0-9a-f]{10}\b")  # matplotlib's marker, clip-path and hatch ids


def stable_svg(data: bytes) -> bytes:
    """An SVG from matplotlib with every coordinate in its attributes rounded to `SVG_DECIMALS`
    decimals and the ids matplotlib hashes from coordinates renamed in order of appearance.

    Matplotlib writes coordinates with 6 decimals, and two machines' layout arithmetic can differ
    in the last one (an axes spine ending at 23.229937 on one and 23.229938 on another); the
    clip-path ids hashed from those coordinates then differ too. Rounding makes such noise vanish
    unless a value sits on a rounding boundary; text (labels, titles) is left as it is."""

    def round_number(match: re.Match) -> bytes:
        text = f"{float(match.group()):.{SVG_DECIMALS}f}".rstrip("0").rstrip(".")
        return (text if text not in ("-0", "") else "0").encode()

    names: dict[bytes, bytes] = {}

    def rename(match: re.Match) -> bytes:
        return names.setdefault(match.group(), match.group(1) + b"id%d" % len(names))

    def attribute(match: re.Match) -> bytes:
        return _SVG_HASHED_ID.sub(rename, _SVG_DECIMAL.sub(round_number, match.group()))

    return _SVG_ATTRIBUTE.sub(attribute, data)
