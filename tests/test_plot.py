"""``fedsock plot``: whole-number round ticks, flat constant series, loss apart from accuracy, a telling title."""

from __future__ import annotations

import json

import pytest

from fedsock.cli import main
from fedsock.errors import ConfigError
from fedsock.plot import build_figure, describe_run, read_metrics

ROWS = [{"round": r, "workers": 2, "examples": 640, "seconds": 1.5 + 0.001 * r, "bytes_in": 1_234_567,
         "bytes_out": 1_234_567, "loss": 2.0 / r, "accuracy": 0.3 + 0.2 * (r - 1)} for r in range(1, 5)]


@pytest.fixture
def figure():
    import matplotlib.pyplot as plt

    fig = build_figure(ROWS, describe_run(ROWS))
    fig.canvas.draw()
    yield fig
    plt.close(fig)


def _axes_of(fig, label):
    return [ax for ax in fig.axes if any(line.get_label() == label for line in ax.get_lines())
            or ax.get_title().startswith(label)]


def test_round_ticks_are_whole_numbers(figure):
    for ax in figure.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


def test_constant_series_are_flat_not_zoomed_to_noise(figure):
    (mb,) = _axes_of(figure, "MB per round")
    bottom, top = mb.get_ylim()
    assert bottom == 0 and 1.2 < top < 2  # 1.23 MB drawn from zero, not 1.2345 +- 1e-6
    labels = [t.get_text() for t in mb.get_yticklabels() if t.get_text()]
    assert labels and all(len(text.partition(".")[2]) <= 2 for text in labels), labels
    (workers,) = _axes_of(figure, "participants per round")
    assert workers.get_ylim()[0] == 0 and workers.get_ylim()[1] > 2
    lo, hi = workers.get_ylim()
    assert all(float(t).is_integer() for t in workers.get_yticks() if lo <= t <= hi)
    (seconds,) = _axes_of(figure, "seconds per round")
    assert seconds.get_ylim()[0] == 0  # 1.501..1.504 s is not magnified into a slope


def test_loss_and_accuracy_have_their_own_axes(figure):
    (acc,) = _axes_of(figure, "holdout metrics")
    (loss,) = _axes_of(figure, "holdout loss")
    assert acc is not loss
    assert [line.get_label() for line in acc.get_lines()] == ["accuracy"]
    assert [line.get_label() for line in loss.get_lines()] == ["loss"]
    assert acc.get_ylim() == (0, 1.02) and loss.get_ylim()[1] >= 2.0


def test_title_says_what_ran(figure):
    title = figure._suptitle.get_text()
    assert "rounds 1-4" in title and "2 workers per round" in title and "final holdout accuracy 0.900" in title


def test_cli_writes_the_png_with_a_title(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    png = tmp_path / "out.png"
    assert main(["plot", str(tmp_path), "--out", str(png), "--title", "my run"]) == 0
    assert capsys.readouterr().out.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\nnot json\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl:2 is not JSON"):
        read_metrics(tmp_path / "metrics.jsonl")
