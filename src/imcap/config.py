"""Options of the training and evaluation commands, as dataclasses (configs are data; no torch here)."""
from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainOptions:
    """Every option of neuraltalk2's train.lua (dash-named, same defaults) plus imcap's own."""

    data: str = _opt("", "prepro directory written by `imcap prepro` (neuraltalk2: input_h5/input_json)")
    checkpoint_path: str = _opt("runs/train", "run directory for checkpoints, history and curves")
    resume: bool = _opt(False, "continue the run in --checkpoint-path exactly where it stopped")
    start_from: str = _opt("", "initialise the weights from this checkpoint (a fresh run otherwise)")
    features_dir: str = _opt("", "train on precomputed features (`imcap features` output, or region features: <id>.npy/.npz files or HDF5) instead of running the CNN")
    # model
    model: str = _opt("show_tell", "decoder: show_tell (neuraltalk2), show_attend_tell (soft attention over the CNN grid or regions), coatt (IVQA co-attention conditioned on --condition-field)", choices=("show_tell", "show_attend_tell", "coatt"))
    cnn: str = _opt("small", "image encoder: small (trains from scratch), vgg16, resnet50, resnet101 (neuraltalk2: cnn_proto/cnn_model)")
    cnn_weights: str = _opt("imagenet", "CNN weights: imagenet (local torch cache), none (random), or a file path")
    cnn_width: int = _opt(32, "channels of the small CNN's first layer")
    image_size: int = _opt(0, "input side in pixels (0: the CNN's own, 64 small / 224 others)")
    rnn_size: int = _opt(512, "hidden units of the RNN")
    input_encoding_size: int = _opt(512, "size of word and image encodings")
    num_layers: int = _opt(1, "RNN layers")
    rnn_type: str = _opt("lstm", "RNN cell", choices=("lstm", "gru", "rnn"))
    drop_prob_lm: float = _opt(0.5, "dropout in the language model")
    image_input: str = _opt("first", "where the image enters the RNN: first (neuraltalk2, t=0) or every (concatenated to each word)", choices=("first", "every"))
    condition_field: str = _opt("answer", "coatt: the images.json extra field the decoder is conditioned on (e.g. the answer of `imcap synth --task vqa`); several fields joined with commas, e.g. answer,concepts")
    alpha_c: float = _opt(0.0, "show_attend_tell/coatt: weight of the doubly stochastic attention regulariser: (1 - sum_t alpha_tk)^2 averaged over regions k (0: off)")
    scheduled_sampling_start: int = _opt(-1, "iteration at which scheduled sampling starts: model samples replace input words (-1: pure teacher forcing)")
    ss_increase_every: int = _opt(500, "raise the scheduled-sampling probability every this many iterations")
    ss_increase_prob: float = _opt(0.05, "raise the scheduled-sampling probability by this much each time")
    ss_max_prob: float = _opt(0.25, "up to this probability")
    # optimisation
    max_iters: int = _opt(-1, "stop after this many iterations (-1: no limit)")
    max_epochs: int = _opt(-1, "stop after this many epochs (-1: no limit)")
    batch_size: int = _opt(16, "images per batch")
    seq_per_img: int = _opt(5, "captions per image in a batch (the CNN runs once per image)")
    grad_clip: float = _opt(0.1, "clip gradients to this value (elementwise) or norm (see --grad-clip-mode)")
    grad_clip_mode: str = _opt("value", "value: elementwise clamp as neuraltalk2; norm: total-norm clipping", choices=("value", "norm"))
    finetune_cnn_after: int = _opt(-1, "start fine-tuning a pretrained CNN after this iteration (-1: never; a CNN without pretrained weights always trains)")
    optim: str = _opt("adam", "language model optimiser", choices=("adam", "sgd", "sgdm", "rmsprop", "adagrad"))
    learning_rate: float = _opt(4e-4, "language model learning rate")
    learning_rate_decay_start: int = _opt(-1, "iteration at which the learning rate starts halving (-1: never)")
    learning_rate_decay_every: int = _opt(50000, "halve the learning rate every this many iterations")
    optim_alpha: float = _opt(0.8, "adam beta1 / momentum / rmsprop alpha")
    optim_beta: float = _opt(0.999, "adam beta2")
    optim_epsilon: float = _opt(1e-8, "optimiser epsilon")
    cnn_optim: str = _opt("adam", "CNN optimiser", choices=("adam", "sgd", "sgdm", "rmsprop", "adagrad"))
    cnn_optim_alpha: float = _opt(0.8, "CNN optimiser beta1 / momentum")
    cnn_optim_beta: float = _opt(0.999, "CNN adam beta2")
    cnn_learning_rate: float = _opt(1e-5, "learning rate of a pretrained CNN when fine-tuning (a from-scratch CNN uses --learning-rate)")
    cnn_weight_decay: float = _opt(0.0, "L2 weight decay of the CNN")
    # evaluation and saving
    val_images_use: int = _opt(3200, "validation images per evaluation (-1: all)")
    save_checkpoint_every: int = _opt(2500, "validate and checkpoint every this many iterations")
    language_eval: bool = _opt(False, "compute BLEU/METEOR/ROUGE_L/CIDEr on validation; keep the best checkpoint by CIDEr")
    losses_log_every: int = _opt(25, "record the training loss every this many iterations")
    max_loss_factor: float = _opt(3.0, "stop when the loss exceeds this times ln(vocabulary size) (exploding)")
    seed: int = _opt(123, "random seed")
    id: str = _opt("", "an id for this run, stored in its checkpoints")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    num_workers: int = _opt(0, "DataLoader worker processes")
    progress: bool = _opt(True, "show a progress bar")
    # self-critical sequence training (imcap.scst)
    self_critical_after: int = _opt(-1, "switch from cross-entropy to self-critical training (SCST, CIDEr-D reward) after this many iterations (-1: never); RUN/xe.pt keeps the cross-entropy model")
    sc_sample_n: int = _opt(5, "SCST: captions sampled per image")
    sc_baseline: str = _opt("greedy", "SCST baseline: greedy (reward of the greedy caption) or mean (mean reward of the other samples)", choices=("greedy", "mean"))
    sc_bleu4_weight: float = _opt(0.0, "SCST: add this times BLEU-4 to the CIDEr-D reward")
    sc_entropy_weight: float = _opt(0.0, "SCST: entropy bonus weight (keeps sampling diverse)")
    sc_unfinished_penalty: float = _opt(0.0, "SCST: subtract this from the reward of samples that never say <END>")
    sc_temperature: float = _opt(1.0, "SCST: sampling temperature")
    # speed and scale (imcap.speed, imcap.distributed)
    amp: bool = _opt(False, "mixed precision: autocast (bf16, or fp16 with loss scaling on GPUs without bf16)")
    amp_dtype: str = _opt("auto", "--amp dtype: auto, bf16 or fp16", choices=("auto", "bf16", "fp16"))
    compile: bool = _opt(False, "torch.compile the model (falls back to eager with a warning when compiling fails)")
    channels_last: bool = _opt(True, "channels_last memory format for the CNN on GPUs")
    nproc: int = _opt(1, "train with this many processes on this machine (runs torchrun; --batch-size is per process)")



@dataclass
class EvalOptions:
    """Options of `imcap eval`."""

    model: str = field(default="", metadata={"help": "run directory (its best checkpoint) or checkpoint file"})
    data: str = field(default="", metadata={"help": "prepro directory (default: the one the model was trained on)"})
    features_dir: str = field(default="", metadata={"help": "precomputed features instead of images (default: the ones the model was trained on, if any)"})
    split: str = field(default="test", metadata={"help": "split to evaluate", "choices": ("train", "val", "test")})
    beam_size: int = field(default=1, metadata={"help": "beam size (1: greedy)"})
    length_penalty: float = field(default=0.0, metadata={"help": "beam length penalty alpha"})
    max_images: int = field(default=-1, metadata={"help": "evaluate only the first N images (-1: all)"})
    batch_size: int = field(default=32, metadata={"help": "images per batch"})
    out: str = field(default="", metadata={"help": "output directory (default: RUN/eval-SPLIT)"})
    html_images: int = field(default=60, metadata={"help": "images shown in the HTML report"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class FeatureOptions:
    """Options of `imcap features`."""

    data: str = field(default="", metadata={"help": "prepro directory whose images to encode"})
    out: str = field(default="", metadata={"help": "output directory"})
    model: str = field(default="", metadata={"help": "take the CNN of this run/checkpoint (else --cnn)"})
    cnn: str = field(default="resnet50", metadata={"help": "CNN when no --model: small, vgg16, resnet50, resnet101"})
    cnn_weights: str = field(default="imagenet", metadata={"help": "imagenet (local torch cache), none, or a file"})
    cnn_width: int = field(default=32, metadata={"help": "channels of the small CNN"})
    image_size: int = field(default=0, metadata={"help": "input side (0: the CNN's own)"})
    kinds: str = field(default="pooled,spatial", metadata={"help": "comma-separated: pooled (D per image) and/or spatial (K x C grid)"})
    batch_size: int = field(default=32, metadata={"help": "images per batch"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
