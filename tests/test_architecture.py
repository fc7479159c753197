"""The committed `architecture.svg` is what `scripts/draw_architecture.py` draws from the code today.

Regenerating it must give the committed bytes: a new choice, a renamed one or an edited class
docstring changes the drawing, and this test says to run the script and commit the SVG.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT

import transformer

SCRIPT = ROOT / "scripts" / "draw_architecture.py"
FIX = "regenerate it: python scripts/draw_architecture.py, then commit architecture.svg"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("draw_architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("architecture") / "architecture.svg"
    load_script().render(out)
    return out.read_bytes()


def test_committed_svg_is_byte_identical_to_a_fresh_drawing(drawn: bytes):
    assert drawn == (ROOT / "architecture.svg").read_bytes(), f"architecture.svg is out of date; {FIX}"


def test_drawing_is_deterministic(drawn: bytes, tmp_path: Path):
    load_script().render(tmp_path / "again.svg")
    assert (tmp_path / "again.svg").read_bytes() == drawn


def test_text_is_text_not_glyph_outlines(drawn: bytes):
    svg = drawn.decode()
    assert "<text" in svg and 'id="DejaVuSans' not in svg
    assert len(drawn) < 120_000
    assert "<dc:date>" not in svg


@pytest.mark.parametrize(
    "name",
    ["INJECTION_CHOICES", "BLOCK_CHOICES", "MIXER_CHOICES", "PE_CHOICES", "CONTEXT_KEEP_CHOICES", "STATE_KEEP_CHOICES"],
)
def test_every_choice_is_drawn(drawn: bytes, name: str):
    texts = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", drawn.decode()))
    missing = [choice for choice in getattr(transformer, name) if not re.search(rf"\b{re.escape(choice)}\b", texts)]
    assert not missing, f"{name}: {missing} are not in the drawing"
