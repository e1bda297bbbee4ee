"""Options of imcap's commands, as dataclasses (configs are data; no torch here, so `imcap --help` stays fast).

Each option is defined once with `opt` (flag, default, help, validation). Groups shared by several commands
(device, decoding, CNN, optimiser, training loop) are small dataclasses that a command's options inherit.
`imcap train --help`, docs/options.md (tools/gen_option_docs.py) and the options saved in checkpoints all
come from these classes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from imcap.devices import device_name_error
from imcap.options import opt, redefault, validate

OPTIMIZERS = ("adam", "sgd", "sgdm", "rmsprop", "adagrad")


def workers_error(count: int) -> str | None:
    """Why `count` DataLoader workers is too many for this machine (each is a process holding the data set)."""
    most = 4 * (os.cpu_count() or 1)
    return f"must be at most {most} on this machine (4 per core) (got {count})" if count > most else None


def processes_error(count: int) -> str | None:
    """Why `count` local processes is too many: more than this machine's cores (or GPUs, where there are more)."""
    if count <= (os.cpu_count() or 1):
        return None
    most = max(os.cpu_count() or 1, _gpu_count())
    return f"must be at most {most} on this machine (one per core or GPU) (got {count})" if count > most else None


def _gpu_count() -> int:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def nonempty_error(value: str) -> str | None:
    """An empty path would mean the current directory: refuse it."""
    return "must not be empty" if not value else None


# ---------------------------------------------------------------- shared groups
@dataclass
class DeviceOptions:
    """Where the work runs and how it reports progress."""

    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps", check=device_name_error)
    progress: bool = opt(True, "show a progress bar (a plain line every few seconds when output is not a terminal)")


@dataclass
class WorkerOptions:
    """DataLoader worker processes."""

    num_workers: int = opt(-1, "DataLoader worker processes (-1: chosen from the core count; 0: load in the main process)", min=0, allow=(-1,),
                           check=workers_error)


@dataclass
class BeamOptions:
    """Beam search width and length penalty."""

    beam_size: int = opt(1, "beam size (1: greedy)", min=1, max=1000)
    length_penalty: float = opt(0.0, "beam length penalty alpha (GNMT; 0: off)", min=0.0)


@dataclass
class DecodingOptions(BeamOptions):
    """How captions are drawn from a model: search or sampling."""

    max_length: int = opt(16, "longest caption in words", min=1, max=1000)
    n: int = opt(1, "captions per image", min=1, max=1000, flag="--num-captions", short="-n")
    sample: bool = opt(False, "sample instead of searching")
    temperature: float = opt(1.0, "sampling temperature", gt=0.0)
    top_k: int = opt(0, "sample from the k most likely words (0: all)", min=0)
    top_p: float = opt(1.0, "nucleus sampling: smallest set of words with this much probability", gt=0.0, max=1.0)

    def __post_init__(self) -> None:
        validate(self)  # also for Python callers: DecodeOptions(beam_size=0) is an error, not greedy decoding

    def decode_options(self) -> DecodingOptions:
        """Only the decoding fields (what `imcap.decoding` reads), from a command's options."""
        return DecodingOptions(**{f.name: getattr(self, f.name) for f in fields(DecodingOptions)})


@dataclass
class CnnOptions:
    """The image encoder."""

    cnn: str = opt("small", "image encoder: small (trains from scratch), vgg16, resnet50, resnet101, or torchvision:NAME (neuraltalk2: cnn_proto/cnn_model)")
    cnn_weights: str = opt("imagenet", "CNN weights: imagenet (local torch cache), none (random), or a file path")
    cnn_width: int = opt(32, "channels of the small CNN's first layer", min=1, max=1024)
    image_size: int = opt(0, "input side in pixels (0: the CNN's own, 64 small / 224 others)", min=16, max=4096, allow=(0,))


@dataclass
class OptimOptions:
    """Optimisers, learning-rate schedule and gradient clipping (shared by every trainer)."""

    optim: str = opt("adam", "language model optimiser", choices=OPTIMIZERS)
    learning_rate: float = opt(4e-4, "language model learning rate", gt=0.0)
    learning_rate_decay_start: int = opt(-1, "iteration at which the learning rate starts halving (-1: never)", min=0, allow=(-1,))
    learning_rate_decay_every: int = opt(50000, "halve the learning rate every this many iterations", min=1)
    optim_alpha: float = opt(0.8, "adam beta1 / momentum / rmsprop alpha", min=0.0, lt=1.0)
    optim_beta: float = opt(0.999, "adam beta2", min=0.0, lt=1.0)
    optim_epsilon: float = opt(1e-8, "optimiser epsilon", gt=0.0)
    grad_clip: float = opt(0.1, "clip gradients to this value (elementwise) or norm (see --grad-clip-mode); 0: off", min=0.0)
    grad_clip_mode: str = opt("value", "value: elementwise clamp as neuraltalk2; norm: total-norm clipping", choices=("value", "norm"))
    finetune_cnn_after: int = opt(-1, "start fine-tuning a pretrained CNN after this iteration (-1: never; a CNN without pretrained weights always trains)", min=0, allow=(-1,))
    cnn_optim: str = opt("adam", "CNN optimiser", choices=OPTIMIZERS)
    cnn_optim_alpha: float = opt(0.8, "CNN optimiser beta1 / momentum", min=0.0, lt=1.0)
    cnn_optim_beta: float = opt(0.999, "CNN adam beta2", min=0.0, lt=1.0)
    cnn_learning_rate: float = opt(1e-5, "learning rate of a pretrained CNN when fine-tuning (a from-scratch CNN uses --learning-rate)", gt=0.0)
    cnn_weight_decay: float = opt(0.0, "L2 weight decay of the CNN", min=0.0)


@dataclass
class LoopOptions:
    """The training loop: run directory, length, batch, validation and checkpoint cadence, seed."""

    data: str = opt("", "prepro directory written by `imcap prepro` (neuraltalk2: input_h5/input_json)")
    checkpoint_path: str = opt("runs/train", "run directory for checkpoints, history and curves", check=nonempty_error)
    resume: bool = opt(False, "continue the run in --checkpoint-path exactly where it stopped, with its saved options")
    max_iters: int = opt(-1, "stop after this many iterations (-1: no limit)", min=1, allow=(-1,))
    max_epochs: int = opt(-1, "stop after this many epochs (-1: no limit)", min=1, allow=(-1,))
    max_train_seconds: float = opt(-1.0, "stop after this many seconds of training (validation and checkpoints not counted; kept across --resume; -1: no limit)",
                                   gt=0.0, max=1e9, allow=(-1.0,))
    batch_size: int = opt(16, "images per batch", min=1, max=1_000_000)
    val_images_use: int = opt(3200, "validation images per evaluation (-1: all)", min=1, allow=(-1,))
    save_checkpoint_every: int = opt(2500, "validate and checkpoint every this many iterations", min=1)
    losses_log_every: int = opt(25, "record the training loss every this many iterations", min=1)
    seed: int = opt(123, "random seed", min=0, max=2**32 - 1)


# Options a `--resume` may change (typed explicitly): they do not change what the run computes.
RESUME_OVERRIDES = frozenset({"resume", "max_iters", "max_epochs", "max_train_seconds", "save_checkpoint_every", "device", "num_workers", "progress",
                              "compile", "nproc", "data", "checkpoint_path"})


# ---------------------------------------------------------------- commands
@dataclass
class TrainOptions(DeviceOptions, WorkerOptions, OptimOptions, CnnOptions, LoopOptions):
    """`imcap train`: every option of neuraltalk2's train.lua (dash-named, same defaults) plus imcap's own."""

    start_from: str = opt("", "initialise the weights from this checkpoint (a fresh run otherwise); model sizes come from it")
    features_dir: str = opt("", "train on precomputed features (`imcap features` output, or region features: <id>.npy/.npz files or HDF5) instead of running the CNN")
    # model
    model: str = opt("show_tell", "decoder: show_tell (neuraltalk2), show_attend_tell (soft attention over the CNN grid or regions), coatt (IVQA co-attention conditioned on --condition-field), "
                     "updown (two-LSTM bottom-up/top-down attention), transformer (encoder over the features, masked decoder; see --d-model)",
                     choices=("show_tell", "show_attend_tell", "coatt", "updown", "transformer"))
    rnn_size: int = opt(512, "hidden units of the RNN", min=1, max=65536)
    input_encoding_size: int = opt(512, "size of word and image encodings", min=1, max=65536)
    num_layers: int = opt(1, "RNN layers (transformer: encoder and decoder layers)", min=1, max=64)
    rnn_type: str = opt("lstm", "RNN cell", choices=("lstm", "gru", "rnn"))
    drop_prob_lm: float = opt(0.5, "dropout in the language model", min=0.0, lt=1.0)
    image_input: str = opt("first", "where the image enters the RNN: first (neuraltalk2, t=0) or every (concatenated to each word)", choices=("first", "every"))
    condition_field: str = opt("answer", "coatt: the images.json extra field the decoder is conditioned on (e.g. the answer of `imcap synth --task vqa`); several fields joined with commas, e.g. answer,concepts")
    alpha_c: float = opt(0.0, "show_attend_tell/coatt: weight of the doubly stochastic attention regulariser: (1 - sum_t alpha_tk)^2 averaged over regions k (0: off)", min=0.0)
    scheduled_sampling_start: int = opt(-1, "iteration at which scheduled sampling starts: model samples replace input words (-1: pure teacher forcing)", min=0, allow=(-1,))
    ss_increase_every: int = opt(500, "raise the scheduled-sampling probability every this many iterations", min=1)
    ss_increase_prob: float = opt(0.05, "raise the scheduled-sampling probability by this much each time", min=0.0, max=1.0)
    ss_max_prob: float = opt(0.25, "up to this probability", min=0.0, max=1.0)
    # training
    seq_per_img: int = opt(5, "captions per image in a batch (the CNN runs once per image)", min=1, max=1000)
    language_eval: bool = opt(False, "compute BLEU/METEOR/ROUGE_L/CIDEr on validation; keep the best checkpoint by CIDEr")
    max_loss_factor: float = opt(3.0, "stop when the loss exceeds this times ln(vocabulary size) (exploding)", gt=0.0)
    id: str = opt("", "an id for this run, stored in its checkpoints")
    # self-critical sequence training (imcap.scst)
    self_critical_after: int = opt(-1, "switch from cross-entropy to self-critical training (SCST, CIDEr-D reward) after this many iterations (-1: never); RUN/xe.pt keeps the cross-entropy model", min=0, allow=(-1,))
    sc_sample_n: int = opt(5, "SCST: captions sampled per image", min=1)
    sc_baseline: str = opt("greedy", "SCST baseline: greedy (reward of the greedy caption) or mean (mean reward of the other samples)", choices=("greedy", "mean"))
    sc_bleu4_weight: float = opt(0.0, "SCST: add this times BLEU-4 to the CIDEr-D reward", min=0.0)
    sc_entropy_weight: float = opt(0.0, "SCST: entropy bonus weight (keeps sampling diverse)", min=0.0)
    sc_unfinished_penalty: float = opt(0.0, "SCST: subtract this from the reward of samples that never say <END>", min=0.0)
    sc_temperature: float = opt(1.0, "SCST: sampling temperature", gt=0.0)
    # speed and scale (imcap.speed, imcap.distributed)
    amp: bool = opt(False, "mixed precision: autocast (bf16, or fp16 with loss scaling on GPUs without bf16)")
    amp_dtype: str = opt("auto", "--amp dtype", choices=("auto", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the model (falls back to eager with a warning when compiling fails)")
    channels_last: bool = opt(True, "channels_last memory format for the CNN on GPUs")
    nproc: int = opt(1, "train with this many processes on this machine (runs torchrun; --batch-size is per process)", min=1, check=processes_error)
    # decoders (issue 16): the transformer, its schedule and loss, the SCST learning rate and its safeguard
    d_model: int = opt(512, "transformer: width of the encoder and decoder layers", min=1)
    num_heads: int = opt(8, "transformer: attention heads (must divide --d-model)", min=1)
    ff_size: int = opt(2048, "transformer: hidden units of the feed-forward sub-layers", min=1)
    transformer_dropout: float = opt(0.1, "transformer: dropout (residual, attention, feed-forward, embeddings)", min=0.0, lt=1.0)
    position_encoding: str = opt("auto", "transformer: where each feature sits: grid (box of each cell of a square CNN grid), boxes (region boxes x0,y0,x1,y1 in [0, 1] "
                                 "in the last 4 feature columns), none; auto: grid with a CNN, none on region features", choices=("auto", "grid", "boxes", "none"))
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing: this much target probability spread over the vocabulary (0: off)", min=0.0, lt=1.0)
    lr_schedule: str = opt("step", "learning-rate schedule: step (neuraltalk2 halving, see --learning-rate-decay-start) or noam (warm-up, then inverse square root; --learning-rate is the peak)", choices=("step", "noam"))
    warmup_steps: int = opt(0, "linear learning-rate warm-up over this many iterations (noam: its peak iteration; 0: none)", min=0)
    sc_learning_rate: float = opt(2e-5, "SCST: language model learning rate while self-critical (replaces --learning-rate and its schedule, also when SCST starts mid-run)", gt=0.0)
    sc_guard_window: int = opt(25, "SCST safeguard: average the baseline reward over blocks of this many iterations (0: safeguard off)", min=2, allow=(0,))
    sc_guard_patience: int = opt(3, "SCST safeguard: halve the SCST learning rate when this many blocks in a row fell, by 3 standard errors in all", min=1)


@dataclass
class EvalOptions(DeviceOptions, BeamOptions):
    """`imcap eval`: predictions, metrics and an HTML report for one split."""

    model: str = opt("", "run directory (its best checkpoint) or checkpoint file", required=True)
    data: str = opt("", "prepro directory (default: the one the model was trained on; another one must hold the same data set)")
    features_dir: str = opt("", "precomputed features instead of images (default: the ones the model was trained on, if any)")
    split: str = opt("test", "split to evaluate", choices=("train", "val", "test"))
    max_images: int = opt(-1, "evaluate only the first N images (-1: all)", min=1, allow=(-1,))
    batch_size: int = opt(32, "images per batch", min=1, max=1_000_000)
    out: str = opt("", "output directory (default: RUN/eval-SPLIT)")
    html_images: int = opt(60, "images shown in the HTML report", min=0)


@dataclass
class CaptionOptions(DeviceOptions, WorkerOptions, DecodingOptions):
    """`imcap caption`: caption image files, folders or globs."""

    paths: list[str] = opt([], "image files, folders or glob patterns", positional=True, metavar="PATH")
    model: str = opt("", "run directory, checkpoint file or export folder", required=True)
    batch_size: int = opt(32, "images per batch", min=1, max=1_000_000)
    out: str = opt("", "write one JSON object per image to this .jsonl (or .parquet) file; a rerun skips images already in it")
    nproc: int = opt(1, "with --out: caption in this many local processes, each writing its own part, merged at the end", min=1, check=processes_error)
    json: bool = opt(False, "print JSON instead of text")
    attention: str = opt("", "attention models: write OUT_DIR/<image>.png, the attention map of every generated word", metavar="OUT_DIR")
    condition: str = opt("", "conditioned models (coatt): the text to condition on for every image, e.g. the answer")


@dataclass
class ExplainOptions(DeviceOptions, BeamOptions):
    """`imcap explain`: saliency maps of each word of the caption."""

    paths: list[str] = opt([], "image files, folders or glob patterns", positional=True, metavar="IMG")
    model: str = opt("", "run directory or checkpoint file (any model with a CNN)", required=True)
    out: str = opt("explain", "folder for <image>.png")
    max_length: int = opt(16, "longest caption in words", min=1)
    condition: str = opt("", "conditioned models (coatt): the text to condition on, e.g. the answer")


@dataclass
class FeatureOptions(DeviceOptions, WorkerOptions, CnnOptions):
    """`imcap features`: run the CNN once over a data set and store its features."""

    data: str = opt("", "prepro directory whose images to encode", required=True)
    out: str = opt("", "output directory", required=True)
    model: str = opt("", "take the CNN of this run/checkpoint (else --cnn)")
    cnn: str = redefault(CnnOptions, "cnn", "resnet50", "CNN when no --model: small, vgg16, resnet50, resnet101 or torchvision:NAME")
    store: str = opt("auto", "pooled (one D vector per image: show_tell), spatial (the K x C grid: attention decoders) or both; "
                     "auto: what --model's decoder reads, pooled without --model", choices=("auto", "pooled", "spatial", "both"))
    kinds: str = opt("", "old name of --store: pooled, spatial or pooled,spatial")
    batch_size: int = opt(32, "images per batch", min=1, max=1_000_000)
    commit_every: int = opt(1024, "make the images done durable (what a rerun after a kill continues from) every this many images", min=1)


@dataclass
class SynthOptions:
    """`imcap synth`: the built-in synthetic scenes."""

    out: str = opt("", "output directory (new, empty, or an earlier synth output)", required=True)
    images: int = opt(3000, "number of images", min=1, max=10_000_000)
    seed: int = opt(123, "random seed; same seed, same bytes", min=0, max=2**32 - 1)
    size: int = opt(64, "image side in pixels", min=64, max=128)
    task: str = opt("captions", "captions, or vqa: question/answer pairs about each scene (train `--model coatt` on answer -> question)", choices=("captions", "vqa"))
    progress: bool = opt(True, "show progress (plain lines when output is not a terminal)")
    difficulty: str = opt("normal", "normal: 1-3 objects; hard: 3-6 overlapping, textured objects, counting and long-range relations", choices=("normal", "hard"))


@dataclass
class DemoOptions:
    """`imcap demo`: synth -> prepro -> train -> eval -> caption -> report."""

    out: str = opt("runs/demo", "output directory")
    images: int = opt(3000, "synthetic images", min=10)
    max_iters: int = opt(1500, "training iterations", min=1)
    seed: int = opt(123, "random seed", min=0)


@dataclass
class ScoreOptions:
    """`imcap score`: caption metrics with pycocoevalcap's numbers."""

    refs: str = opt("", "references: COCO annotations, Karpathy JSON, or {id: [captions]}", required=True)
    preds: str = opt("", "predictions: COCO results [{image_id, caption}] or {id: caption}", required=True)
    metrics: list[str] = opt([], "Bleu, Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (default: all; METEOR/SPICE skipped when Java or their jars are missing)")
    per_image: str = opt("", "write per-image scores to this JSON file", metavar="OUT")
    out: str = opt("", "write the corpus scores to this JSON file", metavar="OUT")
    tokenize: bool = opt(True, "PTB-tokenize the captions (--no-tokenize: they already are)")
    meteor_jar: str = opt("", "path of meteor-1.5.jar (default: from pycocoevalcap or IMCAP_METEOR_JAR)")
    spice_jar: str = opt("", "path of spice-1.0.jar with CoreNLP in lib/ (default: pycocoevalcap's)")
    java: str = opt("", "Java executable (default: IMCAP_JAVA or `java` on PATH)")
