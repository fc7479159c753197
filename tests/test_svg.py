"""What `storage.save_svg` promises: the same bytes for the same figure on one machine, and
across machines no change from layout arithmetic in the last digits (coordinates rounded to
`SVG_DECIMALS` decimals, matplotlib's coordinate-hashed ids renamed in order); text untouched."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from storage import SVG_HASH_SALT, save_svg, stable_svg

VALUES = np.array([0.31, 0.2, 0.137, 0.0912, 0.0604, 0.0411])


def figure(scale: float = 1.0, left: float = 0.125):
    fig, ax = plt.subplots(figsize=(4, 3))
    fig.subplots_adjust(left=left)
    ax.plot(np.arange(len(VALUES)), VALUES * scale, marker="o", label="looped")
    ax.fill_between(np.arange(len(VALUES)), VALUES * scale * 0.9, VALUES * scale * 1.1, alpha=0.2)
    ax.set_title("error 0.1234567 at b = 10")
    ax.legend()
    return fig


def raw_svg(fig) -> bytes:
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def saved(fig, tmp_path, name: str) -> bytes:
    save_svg(fig, tmp_path / name)
    plt.close(fig)
    return (tmp_path / name).read_bytes()


def test_the_same_figure_gives_the_same_bytes(tmp_path):
    assert saved(figure(), tmp_path, "a.svg") == saved(figure(), tmp_path, "b.svg")


def test_last_digit_layout_noise_changes_no_byte(tmp_path):
    # Another machine's arithmetic, imitated: the data and the axes' position moved by about 1e-5 pt,
    # which changes matplotlib's 6-decimal coordinates and its clip-path ids, not the drawing.
    nudged = dict(scale=1 + 3e-8, left=0.125 + 3e-8)
    assert raw_svg(figure()) != raw_svg(figure(**nudged))  # the noise is there before rounding
    assert saved(figure(), tmp_path, "a.svg") == saved(figure(**nudged), tmp_path, "b.svg")


def test_a_real_change_still_shows(tmp_path):
    assert saved(figure(), tmp_path, "a.svg") != saved(figure(scale=1.01), tmp_path, "b.svg")


def test_coordinates_are_rounded_ids_renamed_and_text_kept():
    svg = (
        b'<clipPath id="p0123456789"><rect x="23.229937" y="-0.0001"/></clipPath>'
        b'<g clip-path="url(#p0123456789)"><use xlink:href="#m9876543210" x="1.5"/></g>'
        b"<text>0.1234567</text>"
    )
    assert stable_svg(svg) == (
        b'<clipPath id="pid0"><rect x="23.23" y="0"/></clipPath>'
        b'<g clip-path="url(#pid0)"><use xlink:href="#mid1" x="1.5"/></g>'
        b"<text>0.1234567</text>"
    )
    assert stable_svg(stable_svg(svg)) == stable_svg(svg)
