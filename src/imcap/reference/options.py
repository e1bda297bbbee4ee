"""Options of `imcap reference train`; NumPy-free so that building the `imcap` parser stays fast."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# ../shared/data/flickr8k next to the repository (present in the development checkout only)
DEFAULT_FLICKR8K = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "flickr8k"
CELLS = ("rnn", "lstm", "gru")
RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")


@dataclass
class ReferenceTrainOptions:
    """Options of `imcap reference train` (defaults overfit 50 captions in well under a minute)."""

    cell: str = field(default="lstm", metadata={"help": "recurrent cell", "choices": CELLS})
    features: str | None = field(default=None, metadata={"help": "N x D float .npy of image features, or an "
                                                                    "`imcap features` folder (its pooled.npy)"})
    captions: str | None = field(default=None, metadata={"help": "K x T int .npy of caption ids (<START> first, "
                                                                    "<NULL>-padded)"})
    image_idxs: str | None = field(default=None, metadata={"help": "K int .npy: feature row of each caption "
                                                                      "(none: caption k -> row k)"})
    prepro: str | None = field(default=None, metadata={"help": "imcap prepro folder to take the captions and vocab "
                                                                  "from (instead of --captions); --features rows "
                                                                  "follow its images.json"})
    split: str = field(default="train", metadata={"help": "split of the --prepro images to use"})
    vocab: str | None = field(default=None, metadata={"help": "vocab.json from imcap prepro (word names)"})
    num_train: int = field(default=50, metadata={"help": "captions to overfit (first ones of the data)", "min": 1})
    flickr8k: str = field(default=str(DEFAULT_FLICKR8K), metadata={
        "help": "Flickr8k folder for the built-in set when --captions is not given (synthetic words if absent)", "doc_default": "`../shared/data/flickr8k` beside the repository"})
    feature_dim: int = field(default=512, metadata={"help": "random feature size of the built-in set", "min": 1})
    wordvec_dim: int = field(default=128, metadata={"help": "word embedding size", "min": 1})
    hidden_dim: int = field(default=128, metadata={"help": "RNN hidden size", "min": 1})
    update_rule: str = field(default="adam", metadata={"help": "update rule", "choices": RULES})
    learning_rate: float = field(default=1e-2, metadata={"help": "learning rate", "gt": 0.0})
    lr_decay: float = field(default=1.0, metadata={"help": "learning-rate factor after each epoch", "gt": 0.0})
    batch_size: int = field(default=25, metadata={"help": "captions per minibatch", "min": 1})
    num_epochs: int = field(default=100, metadata={"help": "epochs", "min": 1})
    seed: int = field(default=0, metadata={"help": "random seed (weights, shuffling, built-in features)", "min": 0})
    max_length: int = field(default=30, metadata={"help": "longest sampled caption", "min": 1})
    show: int = field(default=5, metadata={"help": "captions to sample and print", "min": 0})
