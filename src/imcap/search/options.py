"""Options of `imcap search` commands, as dataclasses (no torch here, so `imcap --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("gna", "dual")


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class SearchTrainOptions:
    """Options of `imcap search train` (GNA-RNN train.lua names and defaults where it has them)."""

    data: str = _opt("", "prepro folder (`imcap prepro`), any caption file/folder imcap reads, or CUHK-PEDES reid_raw.json")
    format: str = _opt("", "caption format of --data when it is a caption file (detected when empty; also cuhk-pedes)")
    image_root: str = _opt("", "folder the image paths of --data are relative to (default: per format)")
    max_length: int = _opt(50, "words kept per caption when --data is a caption file (a prepro folder has its own)")
    word_count_threshold: int = _opt(5, "training words seen this often or less become <UNK> (caption files only)")
    checkpoint_path: str = _opt("runs/search", "run directory for best.pt, last.pt and history.json")
    resume: bool = _opt(False, "continue the run in --checkpoint-path exactly where it stopped")
    model: str = _opt("gna", "gna: GNA-RNN pairwise affinity; dual: dual encoder (scales to large galleries)", choices=MODELS)
    cnn: str = _opt("small", "image encoder: small (trains from scratch), vgg16, resnet50, resnet101")
    cnn_weights: str = _opt("imagenet", "CNN weights: imagenet (local torch cache), none (random), or a file path")
    cnn_width: int = _opt(32, "channels of the small CNN's first layer")
    cnn_from: str = _opt("", "start the image encoder (CNN and head) from another imcap run or checkpoint, search or captioning, "
                             "trained on the same images (GNA-RNN's VGG-16 was first trained on the person images); it keeps training")
    image_size: int = _opt(0, "input side in pixels (0: the CNN's own, 64 small / 224 others)")
    input_encoding_size: int = _opt(512, "size of the image encoding and of the word embeddings")
    rnn_size: int = _opt(512, "hidden units of the sentence RNN")
    units: int = _opt(512, "gna: visual units (the attention runs over them)")
    embed_size: int = _opt(256, "dual: size of the joint embedding space")
    rnn_type: str = _opt("gru", "dual: sentence RNN cell (gna always uses an LSTM)", choices=("gru", "lstm"))
    drop_prob_lm: float = _opt(0.5, "dropout on word embeddings and RNN outputs")
    neg_time: int = _opt(3, "gna: mismatched sentences per matching pair")
    batch_size: int = _opt(32, "images per batch")
    max_iters: int = _opt(-1, "stop after this many iterations (-1: no limit)")
    max_epochs: int = _opt(-1, "stop after this many epochs (-1: no limit)")
    grad_clip: float = _opt(5.0, "clamp every gradient element to [-grad_clip, grad_clip] (0: off)")
    optim: str = _opt("adam", "optimiser", choices=("adam", "sgd", "sgdm", "rmsprop"))
    learning_rate: float = _opt(4e-4, "learning rate")
    learning_rate_decay_start: int = _opt(-1, "iteration at which the learning rate starts halving (-1: never)")
    learning_rate_decay_every: int = _opt(50000, "halve the learning rate every this many iterations")
    optim_alpha: float = _opt(0.8, "adam beta1 / momentum / rmsprop alpha")
    optim_beta: float = _opt(0.999, "adam beta2")
    optim_epsilon: float = _opt(1e-8, "optimiser epsilon")
    finetune_cnn_after: int = _opt(10000, "fine-tune a pretrained CNN from this iteration (-1: never; a CNN without pretrained weights always trains)")
    cnn_learning_rate: float = _opt(1e-5, "learning rate of a pretrained CNN when fine-tuning")
    cnn_weight_decay: float = _opt(0.0, "L2 weight decay of the CNN")
    val_images_use: int = _opt(100, "validation gallery size (-1: the whole val split)")
    save_checkpoint_every: int = _opt(100, "validate and checkpoint every this many iterations")
    losses_log_every: int = _opt(25, "record the training loss every this many iterations")
    image_cache_mb: int = _opt(1024, "keep decoded training images in memory up to this many MiB")
    seed: int = _opt(123, "random seed")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    progress: bool = _opt(True, "show a progress bar")
