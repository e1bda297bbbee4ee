"""Learning-rate schedules: neuraltalk2's step decay, linear warm-up, the Noam schedule."""
import math

import pytest

from imcap.schedules import decayed_lr, noam_lr, scheduled_lr, warmup_factor


def test_step_decay_halves_every_period_after_the_start():
    assert decayed_lr(1.0, 10, -1, 5) == 1.0
    assert decayed_lr(1.0, 10, 10, 5) == 1.0
    assert decayed_lr(1.0, 20, 10, 5) == pytest.approx(0.25)


def test_warmup_then_step_decay():
    assert [warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    assert scheduled_lr("step", 2.0, 1, warmup=4) == pytest.approx(1.0)
    assert scheduled_lr("step", 2.0, 30, warmup=4, decay_start=10, decay_every=10) == pytest.approx(0.5)


def test_noam_peaks_at_the_warmup_and_matches_the_papers_formula():
    d, warmup = 512, 4000
    rates = [noam_lr(1.0, i, warmup) for i in range(3 * warmup)]
    assert max(range(len(rates)), key=rates.__getitem__) == warmup - 1 and rates[warmup - 1] == pytest.approx(1.0)
    base = (d * warmup) ** -0.5  # the paper's d^-0.5 * min(n^-0.5, n * warmup^-1.5) with n = iteration + 1
    for i in (0, 100, warmup - 1, 2 * warmup, 10 * warmup):
        n = i + 1
        assert noam_lr(base, i, warmup) == pytest.approx(d**-0.5 * min(n**-0.5, n * warmup**-1.5))
    assert scheduled_lr("noam", 3e-4, 4 * warmup - 1, warmup=warmup) == pytest.approx(3e-4 / 2)
    assert math.isclose(scheduled_lr("noam", 1.0, 0, warmup=0), 1.0)
    with pytest.raises(ValueError, match="noam"):
        scheduled_lr("cosine", 1.0, 0)
