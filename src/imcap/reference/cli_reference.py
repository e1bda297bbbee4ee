"""`imcap reference gradcheck` and `imcap reference train`: print the checks, overfit a small set."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from imcap.data.vocab import Vocab
from imcap.errors import ImcapError
from imcap.options import validate
from imcap.reference.data import load_array, load_prepro, overfit_set, placeholder_vocab
from imcap.reference.gradcheck import ORDER, STEP, TOLERANCE, gradcheck
from imcap.reference.model import CELL_TYPES, CaptioningRNN
from imcap.reference.notebook import notebook_checks
from imcap.reference.options import ReferenceTrainOptions
from imcap.reference.solver import CaptionData, CaptioningSolver


def run_gradcheck(seed: int = 0, cells: tuple[str, ...] = CELL_TYPES) -> int:
    """Print the notebook's value checks and the gradient check of every layer and model; 1 if any fails."""
    values = notebook_checks()
    print("cs231n notebook values")
    for v in values:
        print(f"  {v.name:32s} {v.got:.11f}  expected {v.expected:.11f}  error {v.error:.1e}  {_mark(v.ok)}")
    checks = gradcheck(seed, cells)
    print(f"\ngradient checks (float64, seed {seed}, order-{ORDER} centred differences, step {STEP:g})")
    print(f"  {'layer':22s} {'wrt':8s} {'rel error':>9s}  {'abs error':>9s}")
    for c in checks:
        print(f"  {c.layer:22s} {c.wrt:8s} {c.error:9.1e}  {c.abs_error:9.1e}  {_mark(c.ok)}")
    failed = [c for c in checks if not c.ok] + [v for v in values if not v.ok]
    worst = max(c.error for c in checks)
    print(f"\n{len(checks)} gradients, worst relative error {worst:.1e} (tolerance {TOLERANCE:g}); "
          f"{len(values)} notebook values; {len(failed)} failed")
    return 1 if failed else 0


def _mark(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def load_training_set(opts: ReferenceTrainOptions) -> tuple[CaptionData, Vocab, str]:
    """The data to overfit: .npy files, a prepro folder, or the built-in set; cut to `num_train` captions."""
    vocab = Vocab.load(opts.vocab) if opts.vocab else None
    if opts.prepro and opts.captions:
        raise ImcapError("--prepro and --captions: give one of them")
    has_captions = bool(opts.prepro or opts.captions)
    if (opts.features is None) == has_captions:
        raise ImcapError("--features: give it together with --captions or --prepro, or neither")
    if opts.features is None:
        data, vocab, source = overfit_set(opts.num_train, opts.feature_dim, seed=opts.seed, vocab=vocab,
                                          flickr8k_dir=Path(opts.flickr8k))
        return data, vocab, f"built-in set: random {opts.feature_dim}-d features, captions from {source}"
    features_path = Path(opts.features)
    if features_path.is_dir():  # an `imcap features` folder: its per-image pooled features
        features_path = features_path / "pooled.npy"
    features = load_array(features_path, "features")
    if opts.prepro:
        captions, idxs, prepro_vocab = load_prepro(opts.prepro, opts.split)
        vocab = prepro_vocab if vocab is None else vocab
        if idxs.max() >= len(features):
            raise ImcapError(f"{features_path}: {len(features)} feature rows, but {opts.prepro} has more images "
                             "(one row per images.json entry)")
        source = f"{features_path} + {opts.prepro} ({opts.split})"
    else:
        captions = load_array(opts.captions, "captions")
        idxs = load_array(opts.image_idxs, "image_idxs") if opts.image_idxs else None
        vocab = placeholder_vocab(captions) if vocab is None else vocab
        source = f"{features_path} + {opts.captions}"
    if captions.max() >= len(vocab) or captions.min() < 0:
        raise ImcapError(f"{opts.prepro or opts.captions}: word ids outside the {len(vocab)}-word vocabulary")
    data = CaptionData(features, captions, idxs, name=opts.prepro or opts.captions)
    n = min(opts.num_train, len(data))
    return CaptionData(data.features, data.captions[:n], data.image_idxs[:n], name=data.name), vocab, source


def run_train(opts: ReferenceTrainOptions) -> int:
    """Overfit the training set, print the loss curve and greedy samples next to the true captions."""
    validate(opts)
    data, vocab, source = load_training_set(opts)
    model = CaptioningRNN(vocab.word_to_idx, data.features.shape[1], opts.wordvec_dim, opts.hidden_dim,
                          cell_type=opts.cell, seed=opts.seed)
    solver = CaptioningSolver(model, data, update_rule=opts.update_rule,
                              optim_config={"learning_rate": opts.learning_rate}, lr_decay=opts.lr_decay,
                              batch_size=opts.batch_size, num_epochs=opts.num_epochs, seed=opts.seed)
    print(f"data: {len(data)} captions, {len(vocab)}-word vocabulary, {source}")
    print(f"model: CaptioningRNN cell={opts.cell} wordvec={opts.wordvec_dim} hidden={opts.hidden_dim}; "
          f"{opts.update_rule} lr={opts.learning_rate:g} decay={opts.lr_decay:g}, {opts.num_epochs} epochs "
          f"of batch {opts.batch_size}")
    solver.train()
    history = solver.loss_history
    if not history:
        print("no training iterations (--num-epochs 0)")
        return 0
    print("loss curve (minibatch loss):")
    marks = sorted({0, len(history) - 1, *range(0, len(history), max(1, len(history) // 10))})
    for i in marks:
        print(f"  iteration {i + 1:5d}  {history[i]:9.4f}")
    print(f"final loss on all {len(data)} captions: {solver.best_loss:.4f} (best of {len(solver.epoch_loss_history)} "
          "epochs, summed over words / captions)")
    rows = np.arange(min(opts.show, len(data)))
    features, truth = data.batch(rows)
    samples = model.decode(model.sample(features, opts.max_length))
    print("greedy samples:")
    for k, caption, sample in zip(rows, truth, samples):
        print(f"  [{k}] truth:  {vocab.decode(caption)}\n      sample: {sample}")
    return 0
