"""Progress output: a bar on a terminal, a plain line every tenth of the work elsewhere (logs, CI, nohup)."""
from __future__ import annotations

from imcap.progress import PlainProgress, progress_bar


def test_plain_lines_every_tenth_and_at_the_end(capsys):
    bar = PlainProgress(total=1000, desc="train", unit="it")
    for _ in range(1000):
        bar.set_postfix(loss="1.234")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("train: 100/1000 (10%)") and "loss=1.234" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("train: 1000/1000 (100%)")
    assert all("\r" not in line for line in lines)


def test_iterable_and_resumed_start(capsys):
    assert list(PlainProgress(range(7), desc="eval", every=3)) == list(range(7))
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == ["eval: 3/7 (43%)", "eval: 6/7 (86%)", "eval: 7/7 (100%)"]
    bar = PlainProgress(total=20, initial=15, desc="train", every=5)
    bar.update(5)
    assert capsys.readouterr().err.startswith("train: 20/20 (100%)")


def test_disabled_prints_nothing(capsys):
    bar = PlainProgress(total=10, disable=True)
    bar.update(10)
    bar.write("hello")
    bar.close()
    assert capsys.readouterr().err == ""


def test_not_a_terminal_gives_plain_progress():
    assert isinstance(progress_bar(total=3), PlainProgress)  # pytest's captured stderr is not a terminal
