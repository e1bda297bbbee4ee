"""The `imcap` command line: argparse subcommands, each calling one public function."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from imcap.errors import ImcapError

log = logging.getLogger("imcap")

# Read by OpenMP when torch loads: sleeping (not spinning) idle threads keeps small ops fast on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in the imcap style (one line, exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("argument "):  # "argument --batch-size: ..." -> "--batch-size: ..."
            message = message[len("argument "):]
        sys.stderr.write(f"imcap: error: {message}\n")
        sys.exit(2)


# Each entry adds one subcommand to the parser; the handler is stored as `func`.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(register: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    """Decorator: remember a function that adds a subcommand."""
    COMMANDS.append(register)
    return register


def build_parser() -> argparse.ArgumentParser:
    """Return the full `imcap` parser with every subcommand."""
    parser = _Parser(prog="imcap", description="Train, evaluate and serve image-captioning models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `imcap` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        code = args.func(args)
    except ImcapError as exc:
        sys.stderr.write(f"imcap: error: {exc}\n")
        sys.exit(2)
    except OSError as exc:  # a path the user gave: unwritable, a file where a folder belongs, a read-only disk, ...
        where = exc.filename2 or exc.filename
        sys.stderr.write(f"imcap: error: {where + ': ' if where else ''}{(exc.strerror or str(exc)).lower()}\n")
        sys.exit(2)
    except MemoryError:
        sys.stderr.write("imcap: error: out of memory: use smaller sizes (--batch-size, --rnn-size, --image-size, ...)\n")
        sys.exit(2)
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        sys.stderr.write("imcap: error: out of memory: use smaller sizes (--batch-size, --rnn-size, --image-size, ...)\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("imcap: interrupted\n")
        sys.exit(130)
    sys.exit(code or 0)


# ---------------------------------------------------------------- subcommands
# Keep one small `_add_<name>` function per subcommand below; the handler imports lazily so that
# `imcap --help` stays fast.


@command
def _add_synth(sub) -> None:
    from imcap.config import SynthOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("synth", help="write the built-in synthetic 'scenes' data set (images + captions.json)")
    add_dataclass_arguments(p, SynthOptions)
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from imcap.config import SynthOptions
    from imcap.options import dataclass_from_args

    opts = dataclass_from_args(SynthOptions, args)
    from imcap.data.synth import generate_scenes

    extra = {"difficulty": opts.difficulty} if opts.difficulty != "normal" else {}
    path = generate_scenes(opts.out, num_images=opts.images, seed=opts.seed, image_size=opts.size, task=opts.task, progress=opts.progress, **extra)
    print(f"wrote {opts.images} images and {path}" + (" (question/answer pairs)" if opts.task == "vqa" else ""))
    return 0


@command
def _add_prepro(sub) -> None:
    from imcap.data.prepro import PreproOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("prepro", help="caption file (Karpathy/raw/Flickr8k/COCO/CSV/JSONL/synth) -> vocab + labels")
    p.add_argument("--input", required=True, help="caption file or folder; format detected unless --format is given")
    p.add_argument("--output-dir", required=True, help="folder for vocab.json, images.json and labels.npy")
    add_dataclass_arguments(p, PreproOptions)
    p.set_defaults(func=_run_prepro)


def _run_prepro(args) -> int:
    from imcap.data.prepro import PreproOptions, format_stats, prepro
    from imcap.options import dataclass_from_args

    for flag, value in (("--input", args.input), ("--output-dir", args.output_dir)):
        if not value:
            raise ImcapError(f"{flag} must not be empty")
    opts = dataclass_from_args(PreproOptions, args)
    stats = prepro(opts)
    print(format_stats(stats))
    print(f"wrote {opts.output_dir}/images.json, labels.npy, vocab.json")
    return 0


@command
def _add_train(sub) -> None:
    from imcap.config import TrainOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("train", help="train a captioning model (neuraltalk2's train.lua options)")
    add_dataclass_arguments(p, TrainOptions)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from imcap.config import TrainOptions
    from imcap.options import dataclass_from_args, explicit_options

    opts = dataclass_from_args(TrainOptions, args)
    from imcap.train import train

    run = train(opts, explicit=explicit_options(args))
    print(f"run directory: {run}  (best checkpoint: {run / 'best.pt'})")
    return 0


@command
def _add_eval(sub) -> None:
    from imcap.config import EvalOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("eval", help="evaluate a model on a split: predictions, metrics JSON, HTML report")
    add_dataclass_arguments(p, EvalOptions)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from imcap.config import EvalOptions
    from imcap.options import dataclass_from_args

    opts = dataclass_from_args(EvalOptions, args)
    from imcap.evaluate import run_eval

    metrics = run_eval(opts)
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "CIDEr_blind", "loss"):
        if key in metrics:
            print(f"{key:>12}  {metrics[key]:.4f}")
    print(f"wrote {metrics['out']}/predictions.json, metrics.json, report.html")
    return 0


@command
def _add_caption(sub) -> None:
    from imcap.config import CaptionOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("caption", help="caption image files, folders or globs")
    add_dataclass_arguments(p, CaptionOptions)
    p.set_defaults(func=_run_caption)


def _run_caption(args: argparse.Namespace) -> int:
    import json

    from imcap.config import CaptionOptions
    from imcap.options import dataclass_from_args

    opts = dataclass_from_args(CaptionOptions, args)
    if opts.out:
        return _run_caption_to_file(opts)
    if opts.nproc > 1:
        raise ImcapError("--nproc needs --out (each process writes its part of the output file)")
    from imcap.captioner import Captioner, caption_paths, skip_summary

    captioner = Captioner.load(opts.model, opts.device)
    if opts.condition and not captioner.model.conditioned:
        raise ImcapError(f"--condition: {opts.model} is not a conditioned model (train one with --model coatt)")
    results, skipped = caption_paths(captioner, opts.paths, opts.decode_options(), opts.batch_size, progress=opts.progress,
                                     return_attention=bool(opts.attention), condition=opts.condition or None)
    if opts.attention:
        from imcap.attention_maps import write_attention_maps

        written = write_attention_maps(results, opts.attention, captioner.attention_geometry)
        sys.stderr.write(f"wrote {len(written)} attention map(s) to {opts.attention}\n")
        for r in results:
            del r["attention"]
    if opts.json:
        print(json.dumps({"results": results, "skipped": [{"file": f, "error": e} for f, e in skipped]}, indent=2))
    else:
        for r in results:
            print(f"{r['file']}\t{r['caption']}" if len(r["captions"]) == 1 else f"{r['file']}\t" + " | ".join(r["captions"]))
    if skipped:
        sys.stderr.write(f"imcap: skipped {len(skipped)} bad image(s) of {len(results) + len(skipped)}: {skip_summary(skipped)}\n")
    if not results:
        sys.stderr.write("imcap: error: no image could be captioned\n")
        return 2
    return 0



def _run_caption_to_file(opts) -> int:
    from imcap.caption_run import caption_to_file

    for flag, value in (("--attention", opts.attention), ("--json", opts.json)):
        if value:
            raise ImcapError(f"{flag} cannot be combined with --out (the output file holds the results)")
    r = caption_to_file(opts.model, opts.paths, opts.out, opts.decode_options(), batch_size=opts.batch_size, num_workers=opts.num_workers,
                        nproc=opts.nproc, device=opts.device, condition=opts.condition or None, progress=opts.progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports for all ranks
        print(f"{r.out}: captioned {r.captioned} image(s) in {r.seconds:.1f} s ({r.images_per_s:.1f} images/s), {r.already} already there")
    if r.skipped:
        sys.stderr.write(f"imcap: skipped {r.skipped} unreadable image(s); a rerun tries them again\n")
    return 0


@command
def _add_demo(sub) -> None:
    from imcap.config import DemoOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("demo", help="synth -> prepro -> train -> eval -> caption -> report on the built-in scenes")
    add_dataclass_arguments(p, DemoOptions)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from imcap.config import DemoOptions
    from imcap.demo import run_demo
    from imcap.options import dataclass_from_args

    opts = dataclass_from_args(DemoOptions, args)
    run_demo(opts.out, opts.images, opts.max_iters, opts.seed)
    return 0


@command
def _add_serve(sub) -> None:
    from imcap.options import add_dataclass_arguments
    from imcap.serve.settings import ServeOptions, ServeSettings

    p = sub.add_parser("serve", help="caption (and search) over HTTP, with a web page; IMCAP_API_KEY turns on a Bearer key")
    add_dataclass_arguments(p, ServeOptions)
    add_dataclass_arguments(p, ServeSettings)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import os

    from imcap.options import dataclass_from_args
    from imcap.serve.settings import ServeOptions, ServeSettings

    opts = dataclass_from_args(ServeOptions, args)
    settings = dataclass_from_args(ServeSettings, args, api_key=os.environ.get("IMCAP_API_KEY"))
    try:
        from imcap.serve.app import run_server
    except ModuleNotFoundError as exc:
        raise ImcapError(f"imcap serve needs the serve extra ({exc.name} is missing): pip install 'imcap[serve]'") from None
    run_server(opts.model, settings, opts.host, opts.port, opts.device, opts.search_index or None)
    return 0


@command
def _add_search(sub) -> None:
    from imcap.options import add_dataclass_arguments
    from imcap.search.options import MODELS, SearchEvalOptions, SearchIndexOptions, SearchQueryOptions, SearchTrainOptions

    p = sub.add_parser("search", help="natural-language image search: train/eval GNA-RNN or a dual encoder, index, query")
    ss = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND", parser_class=_Parser)
    ss.required = True
    t = ss.add_parser("train", help=f"train a text -> image search model ({', '.join(MODELS)})")
    add_dataclass_arguments(t, SearchTrainOptions)
    t.set_defaults(func=_run_search_train)
    e = ss.add_parser("eval", help="text -> image top-1/5/10 accuracy and mAP on a split")
    add_dataclass_arguments(e, SearchEvalOptions)
    e.set_defaults(func=_run_search_eval)
    i = ss.add_parser("index", help="embed image files/folders/globs (or add precomputed vectors) into a search index (created or appended to)")
    add_dataclass_arguments(i, SearchIndexOptions)
    i.set_defaults(func=_run_search_index)
    q = ss.add_parser("query", help="the images of an index that best match a sentence")
    add_dataclass_arguments(q, SearchQueryOptions)
    q.set_defaults(func=_run_search_query)


def _run_search_train(args: argparse.Namespace) -> int:
    from imcap.options import dataclass_from_args, explicit_options
    from imcap.search.options import SearchTrainOptions

    opts = dataclass_from_args(SearchTrainOptions, args)
    from imcap.search.train import train_search

    run = train_search(opts, explicit_options(args))
    print(f"run directory: {run}  (best checkpoint: {run / 'best.pt'})")
    return 0


def _run_search_eval(args: argparse.Namespace) -> int:
    import json

    from imcap.options import dataclass_from_args
    from imcap.search.options import SearchEvalOptions

    opts = dataclass_from_args(SearchEvalOptions, args)
    from imcap.search.evaluate import run_search_eval

    m = run_search_eval(opts.model, opts.data, opts.split, opts.max_images, opts.batch_size, opts.device, opts.out, opts.progress)
    if opts.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['kind']} model, {m['split']} split: {m['queries']} queries, gallery {m['gallery']} images ({m['identities']} identities)")
    for key in ("top1", "top5", "top10", "mAP"):
        print(f"{key:>6}  {100 * m[key]:.2f}%")
    if opts.out:
        print(f"wrote {opts.out}/metrics.json")
    return 0


def _run_search_index(args: argparse.Namespace) -> int:
    from imcap.options import dataclass_from_args
    from imcap.search.options import SearchIndexOptions

    o = dataclass_from_args(SearchIndexOptions, args)
    if o.embeddings:
        if o.images:
            raise ImcapError("--embeddings and --images: give one of them (vectors, or images to embed)")
        if not o.paths:
            raise ImcapError("--embeddings needs --paths FILE.txt: the image paths of its rows, one per line")
    elif o.paths:
        raise ImcapError("--paths goes with --embeddings (precomputed vectors); to embed images give --images")
    elif not o.images or not o.model:
        raise ImcapError("search index needs --model RUN and --images PATH ... (or --embeddings FILE.npy --paths FILE.txt)")
    from imcap.search.index import build_index, build_index_from_vectors

    if o.embeddings:
        r = build_index_from_vectors(o.embeddings, o.paths, o.out, o.model or None, o.kind)
    else:
        r = build_index(o.model, o.images, o.out, o.batch_size, o.device, kind=o.kind)
    print(f"{r.path}: added {r.added} image(s), {r.already} already indexed, {r.total} in total ({r.kind} index)")
    if r.skipped:
        sys.stderr.write(f"imcap: skipped {len(r.skipped)} bad image(s) (first: {r.skipped[0][1]})\n")
    return 0


def _run_search_query(args: argparse.Namespace) -> int:
    import json

    from imcap.options import dataclass_from_args
    from imcap.search.options import SearchQueryOptions

    o = dataclass_from_args(SearchQueryOptions, args)
    from imcap.search.index import load_index, write_hits_html

    text = " ".join(o.text)
    index = load_index(o.index, o.device, o.model or None)
    hits = index.query(text, o.k)
    if o.json:
        print(json.dumps({"query": text, "kind": index.kind, "hits": [{"path": p, "score": s} for p, s in hits]}, indent=2))
    else:
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:>3}  {score:.4f}  {path}")
    if o.html:
        write_hits_html(o.html, text, hits, index.kind)
        sys.stderr.write(f"wrote {o.html}\n")
    return 0


@command
def _add_reference(sub) -> None:
    from imcap.options import add_dataclass_arguments
    from imcap.reference.options import CELLS, ReferenceTrainOptions

    p = sub.add_parser("reference", help="the NumPy reference engine (cs231n RNN/LSTM/GRU captioning): gradcheck, train")
    ref = p.add_subparsers(dest="reference_command", metavar="COMMAND", parser_class=_Parser)
    ref.required = True
    g = ref.add_parser("gradcheck", help="print the relative error of every layer's and model's gradients")
    g.add_argument("--seed", type=int, default=0, help="seed of the random check inputs (default: 0)")
    g.add_argument("--cell", nargs="+", default=list(CELLS), choices=CELLS, help="model cell types to check (default: all)")
    g.set_defaults(func=_run_reference_gradcheck)
    t = ref.add_parser("train", help="overfit a small set; print the loss curve and greedy samples")
    add_dataclass_arguments(t, ReferenceTrainOptions)
    t.set_defaults(func=_run_reference_train)


def _single_threaded_blas() -> None:
    # The reference engine's matrices are small: BLAS threads only contend for shared cores (about 4x slower).
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _run_reference_gradcheck(args: argparse.Namespace) -> int:
    if not 0 <= args.seed < 2**32:
        raise ImcapError(f"--seed must be >= 0 and <= {2**32 - 1} (got {args.seed})")
    _single_threaded_blas()
    from imcap.reference.cli_reference import run_gradcheck

    return run_gradcheck(args.seed, tuple(args.cell))


def _run_reference_train(args: argparse.Namespace) -> int:
    _single_threaded_blas()
    from imcap.options import dataclass_from_args
    from imcap.reference.cli_reference import run_train
    from imcap.reference.options import ReferenceTrainOptions

    return run_train(dataclass_from_args(ReferenceTrainOptions, args))


@command
def _add_features(sub) -> None:
    from imcap.config import FeatureOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("features", help="run the CNN once over a data set and store its features (fp16 .npy)")
    add_dataclass_arguments(p, FeatureOptions)
    p.set_defaults(func=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from imcap.config import FeatureOptions
    from imcap.options import dataclass_from_args

    opts = dataclass_from_args(FeatureOptions, args)
    from imcap.features import extract_features

    out = extract_features(opts)
    print(f"wrote {out}/meta.json and its feature arrays; train with --features-dir {out}")
    return 0


@command
def _add_score(sub: argparse._SubParsersAction) -> None:
    from imcap.config import ScoreOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("score", help="caption metrics (BLEU, METEOR, ROUGE-L, CIDEr, SPICE) with pycocoevalcap's numbers")
    add_dataclass_arguments(p, ScoreOptions)
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from imcap.config import ScoreOptions
    from imcap.options import dataclass_from_args

    o = dataclass_from_args(ScoreOptions, args)
    from imcap.metrics.cli_score import run

    return run(o.refs, o.preds, o.metrics or None, o.per_image or None, o.out or None, o.tokenize, o.meteor_jar or None,
               o.spice_jar or None, o.java or None)


@command
def _add_explain(sub) -> None:
    from imcap.config import ExplainOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("explain", help="saliency maps: which pixels each word of the caption depends on (PNG per image)")
    add_dataclass_arguments(p, ExplainOptions)
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from imcap.config import ExplainOptions
    from imcap.options import dataclass_from_args

    opts = dataclass_from_args(ExplainOptions, args)
    from imcap.decoding import DecodeOptions
    from imcap.saliency import run_explain

    decode_opts = DecodeOptions(beam_size=opts.beam_size, max_length=opts.max_length, length_penalty=opts.length_penalty)
    written, skipped = run_explain(opts.model, opts.paths, opts.out, decode_opts, opts.condition or None, opts.device)
    for path, caption in written:
        print(f"{path}\t{caption}")
    if skipped:
        sys.stderr.write(f"imcap: skipped {len(skipped)} bad image(s) of {len(written) + len(skipped)}\n")
    if not written:
        sys.stderr.write("imcap: error: no image could be explained\n")
        return 2
    return 0


@command
def _add_export(sub) -> None:
    from imcap.export.options import ExportOptions
    from imcap.options import add_dataclass_arguments

    p = sub.add_parser("export", help="a run -> a portable folder: model.safetensors, config.json, vocab.json, README.md (--onnx: ONNX graphs too)")
    add_dataclass_arguments(p, ExportOptions)
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from imcap.export.command import export_model
    from imcap.export.options import ExportOptions
    from imcap.options import dataclass_from_args

    out = export_model(dataclass_from_args(ExportOptions, args))
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {out}: {', '.join(files)}")
    return 0
