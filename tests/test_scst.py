import json

import numpy as np
import pytest
import torch

from imcap_testing import tiny_train_options
from imcap.checkpoint import load_checkpoint
from imcap.data.loader import PreproData
from imcap.data.vocab import END, NULL
from imcap.errors import ImcapError
from imcap.metrics.bleu import Bleu
from imcap.metrics.cider import CiderDReward
from imcap.models import ShowTell
from imcap.scst import CaptionReward, SCSTLearningRate, SCSTOptions, SelfCritical, mean_of_others, policy_loss, sample_with_entropy
from imcap.train import Trainer, train


def test_mean_baseline_leaves_each_sample_out():
    rewards = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    expected = np.array([[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]])
    np.testing.assert_allclose(mean_of_others(rewards), expected)


def test_policy_loss_gradient_is_minus_advantage_per_real_token():
    seqs = torch.tensor([[5, 6, END, NULL], [7, END, NULL, NULL]])
    logps = torch.randn(2, 4, requires_grad=True)
    advantage = torch.tensor([2.0, -1.0])
    policy_loss(logps, seqs, advantage).backward()
    tokens = 5  # 3 + 2 real tokens, <END> included
    expected = torch.tensor([[-2.0, -2.0, -2.0, 0.0], [1.0, 1.0, 0.0, 0.0]]) / tokens
    torch.testing.assert_close(logps.grad, expected)


def test_entropy_bonus_lowers_the_loss_by_weighted_mean_entropy():
    seqs = torch.tensor([[5, END]])
    logps, entropy = torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])
    base = policy_loss(logps, seqs, torch.zeros(1))
    assert float(policy_loss(logps, seqs, torch.zeros(1), entropy, 0.5)) == pytest.approx(float(base) - 0.5 * 2.0)


def test_sampled_entropy_is_the_entropy_of_each_step_distribution():
    torch.manual_seed(0)
    dec = ShowTell(20, 8, 8, image_input="every").eval()
    feats = torch.randn(3, 8)
    lp, _, _ = dec.step(torch.ones(3, dtype=torch.long), dec.init_state(feats))  # the first step after <START>
    allowed = lp[:, 2:].log_softmax(dim=1)  # <NULL> and <START> are never sampled
    expected = -(allowed.exp() * allowed).sum(dim=1)
    out = sample_with_entropy(dec, feats, max_length=5, with_entropy=True)
    assert out.seqs.shape == out.logps.shape == out.entropy.shape
    torch.testing.assert_close(out.entropy[:, 0], expected)
    assert out.logps.requires_grad and out.entropy.requires_grad
    assert torch.all(sample_with_entropy(dec, feats, max_length=5).entropy == 0)  # not computed unless asked


def test_reward_of_token_ids_equals_cider_d_of_the_words(tiny_data):
    data = PreproData.load(tiny_data)
    reward = CaptionReward(data)
    train_idx = data.split_indices("train")[:4]
    ids = [data.images[i]["id"] for i in train_idx]
    rows = np.stack([data.captions_of(i)[0] for i in train_idx])  # (4, L) word ids, 0-padded
    words = [data.vocab.decode(r) for r in rows]
    refs = {data.images[i]["id"]: data.images[i]["captions"] for i in data.split_indices("train")}
    np.testing.assert_allclose(reward(ids, rows), CiderDReward(refs).score(ids, words), rtol=1e-9)
    shuffled = reward(ids, rows[[1, 2, 3, 0]])  # someone else's caption
    assert reward(ids, rows).mean() > shuffled.mean()


def test_bleu4_weight_adds_bleu4_of_each_sample(tiny_data):
    data = PreproData.load(tiny_data)
    i = data.split_indices("train")[0]
    image_id = data.images[i]["id"]
    row = data.captions_of(data.split_indices("train")[1])[:1]  # another image's caption
    plain, with_bleu = CaptionReward(data)([image_id], row), CaptionReward(data, bleu4_weight=2.0)([image_id], row)
    from imcap.metrics.tokenizer import PTBTokenizer

    refs = PTBTokenizer().tokenize_captions(data.images[i]["captions"])
    _, per_image = Bleu(4).compute_score({0: refs}, {0: [data.vocab.decode(row[0])]})
    assert with_bleu[0] - plain[0] == pytest.approx(2.0 * per_image[3][0], abs=1e-9)


def test_mean_baseline_needs_two_samples(tiny_data):
    with pytest.raises(ImcapError, match="sc-sample-n 2"):
        SelfCritical(PreproData.load(tiny_data), SCSTOptions(sample_n=1, baseline="mean"))


def test_scst_run_logs_rewards_and_keeps_the_xe_model(tiny_data, tmp_path):
    run = train(tiny_train_options(tiny_data, tmp_path / "sc", max_iters=6, self_critical_after=3, losses_log_every=1, sc_sample_n=3))
    history = json.loads((run / "history.json").read_text())
    logged = history["train_loss"]
    assert [("reward" in e) for e in logged] == [False] * 3 + [True] * 3
    assert all({"reward", "baseline", "sample_nll", "length"} <= e.keys() for e in logged[3:])
    xe, last = load_checkpoint(run / "xe.pt"), load_checkpoint(run / "last.pt")
    assert xe["iteration"] == 3 and last["iteration"] == 6
    assert any(not torch.equal(xe["model"][k], last["model"][k]) for k in xe["model"])
    assert 3 in [v["iteration"] for v in history["val"]]  # the cross-entropy model was validated at the switch


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_resume_in_the_middle_of_scst_is_exact(tiny_data, tmp_path, baseline):
    kw = dict(self_critical_after=1, sc_baseline=baseline, sc_sample_n=2, save_checkpoint_every=3, sc_entropy_weight=0.01,
              sc_learning_rate=1e-3, sc_guard_window=2, sc_guard_patience=1)  # the safeguard watches these few steps
    train(tiny_train_options(tiny_data, tmp_path / "full", max_iters=5, **kw))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=3, **kw))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=5, resume=True, **kw))
    a, b = load_checkpoint(tmp_path / "full" / "last.pt")["model"], load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_scst_steps_raise_the_reward_on_a_fixed_batch(tiny_data, tmp_path):
    trainer = Trainer(tiny_train_options(tiny_data, tmp_path / "opt", self_critical_after=0, sc_sample_n=4, sc_baseline="mean", sc_learning_rate=2e-2, sc_guard_window=0, grad_clip=1.0, drop_prob_lm=0.0))
    data = trainer.data
    idx = torch.tensor(data.split_indices("train")[:4])
    labels = torch.stack([torch.from_numpy(data.captions_of(int(i))[:2].astype(np.int64)) for i in idx])
    images = torch.rand(4, 3, 64, 64)
    rewards = []
    for _ in range(60):
        trainer.train_step(images, labels, idx)
        rewards.append(trainer.last_stats["reward"])
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.1


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory):
    """Question/answer pairs about 24 synthetic scenes (for the conditioned coatt decoder)."""
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes

    root = tmp_path_factory.mktemp("vqa")
    generate_scenes(root / "synth", num_images=24, seed=3, task="vqa", progress=False)
    prepro(PreproOptions(input=str(root / "synth"), output_dir=str(root / "data"), word_count_threshold=0))
    return root / "data"


@pytest.mark.parametrize("model,baseline", [("show_attend_tell", "greedy"), ("coatt", "greedy"), ("updown", "greedy"), ("updown", "mean"), ("transformer", "greedy"), ("transformer", "mean")])
def test_scst_trains_every_decoder(model, baseline, tiny_data, tmp_path, request):
    data = request.getfixturevalue("vqa_data") if model == "coatt" else tiny_data
    sizes = dict(d_model=16, num_heads=2, ff_size=32) if model == "transformer" else {}
    run = train(tiny_train_options(data, tmp_path / model, model=model, max_iters=3, save_checkpoint_every=3, self_critical_after=1, losses_log_every=1,
                                   sc_baseline=baseline, sc_sample_n=2, **sizes))
    logged = load_checkpoint(run / "last.pt")["history"]["train_loss"]
    assert [("reward" in e) for e in logged] == [False, True, True]
    assert all(np.isfinite(e["loss"]) for e in logged)


def blocks(*means: float, spread: float = 0.1) -> list[float]:
    """Rewards in blocks of 4 with the given averages; inside a block they alternate +-spread (sample std 0.115 for 0.1)."""
    return [m + d for m in means for d in (spread, -spread, spread, -spread)]


def test_scst_rate_is_halved_when_the_baseline_reward_falls_steadily():
    # Blocks of 4: the standard error of a difference of two block means is 0.115 * sqrt(2 / 4) = 0.082, so a
    # drop needs 3 * 0.082 = 0.245 over the last 2 blocks (patience 2).
    guard = SCSTLearningRate(1e-4, window=4, patience=2)
    rates = [guard.step(i, r) for i, r in enumerate(blocks(1.0, 0.9, 0.8, 0.7, 0.45))]
    # 1.0 -> 0.9 -> 0.8 -> 0.7 is steady but only 0.2 per two blocks (noise could do it); 0.8 -> 0.7 -> 0.45 falls by 0.35.
    assert rates[:19] == [1e-4] * 19 and rates[19] == 5e-5 and guard.lowered == [19]
    rates = [guard.step(20 + i, r) for i, r in enumerate(blocks(0.1, 0.0, 0.6, 0.7, 0.65, 0.3))]
    # The count starts again after a halving (0.7 -> 0.45 -> 0.1 does not count); rises break the streak; 0.7 -> 0.65 -> 0.3 halves.
    assert guard.lowered == [19, 43] and rates[:-1] == [5e-5] * 23 and rates[-1] == 2.5e-5
    assert guard.step(43, -5.0) == 2.5e-5 and guard.block == []  # an iteration is recorded once
    bumpy = SCSTLearningRate(1e-4, window=4, patience=2)  # a big fall that is not steady (a rise in between)
    assert {bumpy.step(i, r) for i, r in enumerate(blocks(1.0, 0.5, 0.6, 0.1))} == {1e-4}
    noisy = SCSTLearningRate(1e-4, window=4, patience=2)  # the same steady fall inside much noisier rewards
    assert {noisy.step(i, r) for i, r in enumerate(blocks(0.7, 0.5, 0.3, spread=1.0))} == {1e-4}
    off = SCSTLearningRate(1e-4, window=0, patience=1)
    assert {off.step(i, -i) for i in range(30)} == {1e-4}


def test_scst_rate_state_round_trips():
    a = SCSTLearningRate(1e-4, window=4, patience=2)
    rewards = blocks(1.0, 0.7, 0.4)
    for i, r in enumerate(rewards[:10]):
        a.step(i, r)
    b = SCSTLearningRate(1e-4, window=4, patience=2)
    b.load_state_dict(a.state_dict())
    assert [a.step(10 + i, r) for i, r in enumerate(rewards[10:])] == [b.step(10 + i, r) for i, r in enumerate(rewards[10:])] == [1e-4, 5e-5]


def test_scst_steps_use_the_sc_learning_rate_also_mid_run(tiny_data, tmp_path):
    trainer = Trainer(tiny_train_options(tiny_data, tmp_path / "lr", self_critical_after=2, sc_sample_n=2, learning_rate=1e-3, sc_learning_rate=3e-5))
    data = trainer.data
    idx = torch.tensor(data.split_indices("train")[:2])
    labels = torch.stack([torch.from_numpy(data.captions_of(int(i))[:2].astype(np.int64)) for i in idx])
    rates, cnn_rates = [], []
    for _ in range(4):
        trainer.train_step(torch.rand(2, 3, 64, 64), labels, idx)
        trainer.iteration += 1
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        cnn_rates.append(trainer.cnn_optimizer.param_groups[0]["lr"])
    assert rates == [1e-3, 1e-3, 3e-5, 3e-5]
    assert cnn_rates == rates  # the small CNN trains from scratch: it follows the language model's rate
