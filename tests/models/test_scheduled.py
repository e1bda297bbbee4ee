"""Scheduled sampling: the probability schedule, input replacement, and the step-by-step unroll."""
import pytest
import torch

from imcap.data.vocab import NULL, START
from imcap.models import ShowTell
from imcap.models.scheduled import sample_inputs, ss_probability, unroll


def test_probability_schedule():
    assert ss_probability(100, -1, 10, 0.05, 0.25) == 0.0  # off
    assert ss_probability(5, 10, 10, 0.05, 0.25) == 0.0  # not started
    assert ss_probability(10, 10, 10, 0.05, 0.25) == 0.0
    assert ss_probability(29, 10, 10, 0.05, 0.25) == pytest.approx(0.05)
    assert ss_probability(30, 10, 10, 0.05, 0.25) == pytest.approx(0.10)
    assert ss_probability(10_000, 10, 10, 0.05, 0.25) == pytest.approx(0.25)  # capped


def test_sample_inputs_replaces_with_the_given_probability():
    torch.manual_seed(0)
    truth = torch.full((2000,), 7)
    logprobs = torch.log_softmax(torch.zeros(2000, 10), dim=1)
    assert torch.equal(sample_inputs(logprobs, truth, 0.0), truth)
    all_sampled = sample_inputs(logprobs, truth, 1.0)
    assert not ((all_sampled == NULL) | (all_sampled == START)).any()
    assert set(all_sampled.unique().tolist()) == set(range(2, 10))
    some = sample_inputs(logprobs, truth, 0.3)
    changed = float((some != 7).float().mean())
    assert 0.3 * 7 / 8 - 0.05 < changed < 0.3 * 7 / 8 + 0.05  # 1/8 of the samples draw 7 again


@pytest.mark.parametrize("image_input", ["first", "every"])
@torch.no_grad()
def test_unroll_without_sampling_equals_fused_teacher_forcing(image_input):
    torch.manual_seed(1)
    m = ShowTell(15, 6, 8, dropout=0.0, image_input=image_input).eval()
    feats, tokens = torch.randn(3, 6), torch.randint(4, 16, (3, 5))
    tokens[:, 0] = START
    stepped, alphas = unroll(m, m.start(feats), tokens)
    assert alphas is None  # ShowTell has no attention
    torch.testing.assert_close(stepped, m(feats, tokens), atol=1e-5, rtol=1e-4)


def test_unroll_feeds_model_samples_back():
    torch.manual_seed(2)
    m = ShowTell(15, 6, 8, dropout=0.0).eval()
    fed: list[torch.Tensor] = []
    step = m.step

    def spy(tokens, state):
        fed.append(tokens.clone())
        return step(tokens, state)

    m.step = spy
    tokens = torch.full((64, 6), 9)
    tokens[:, 0] = START
    out, _ = unroll(m, m.start(torch.randn(64, 6)), tokens, ss_prob=1.0)
    assert out.shape == (64, 6, 16)
    assert torch.equal(fed[0], tokens[:, 0])  # <START> is never replaced
    assert all((f != 9).any() for f in fed[1:])
    out.sum().backward()  # the loss still reaches the weights
    assert m.logit.weight.grad is not None
