"""The caption loss on log-probabilities, with label smoothing."""
import pytest
import torch

from imcap.data.vocab import END, NULL
from imcap.losses import caption_loss


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_caption_loss_equals_torch_cross_entropy_on_logits(eps):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    targets = torch.tensor([[4, 5, END, NULL, NULL], [6, END, NULL, NULL, NULL], [7, 8, 9, 10, END]])
    ours = caption_loss(torch.log_softmax(logits, -1), targets, label_smoothing=eps)
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=NULL, label_smoothing=eps)
    torch.testing.assert_close(ours, ref)
    (g,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, g_ref)
    assert (g[0, 3:] == 0).all()  # <NULL> targets after <END> give no gradient


def test_label_smoothing_prefers_a_less_confident_model():
    targets = torch.tensor([[3]])
    sure = torch.log_softmax(torch.tensor([[[0.0, 0.0, 0.0, 30.0, 0.0]]]), -1)
    hedged = torch.log_softmax(torch.tensor([[[0.0, 0.0, 0.0, 4.0, 0.0]]]), -1)
    assert caption_loss(sure, targets) < caption_loss(hedged, targets)
    assert caption_loss(sure, targets, 0.2) > caption_loss(hedged, targets, 0.2)
