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
    except KeyboardInterrupt:
        sys.stderr.write("imcap: interrupted\n")
        sys.exit(130)
    sys.exit(code or 0)


# ---------------------------------------------------------------- subcommands
# Keep one small `_add_<name>` function per subcommand below; the handler imports lazily so that
# `imcap --help` stays fast.


@command
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write the built-in synthetic 'scenes' data set (images + captions.json)")
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier synth output)")
    p.add_argument("--images", type=int, default=3000, help="number of images (default: 3000)")
    p.add_argument("--seed", type=int, default=123, help="random seed; same seed, same bytes (default: 123)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels, 64-128 (default: 64)")
    p.add_argument("--task", default="captions", choices=("captions", "vqa"), help="captions (default), or vqa: question/answer pairs about each scene (train `--model coatt` on answer -> question)")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from imcap.data.synth import generate_scenes

    path = generate_scenes(args.out, num_images=args.images, seed=args.seed, image_size=args.size, task=args.task)
    print(f"wrote {args.images} images and {path}" + (" (question/answer pairs)" if args.task == "vqa" else ""))
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
    from imcap.options import dataclass_from_args
    from imcap.train import train

    run = train(dataclass_from_args(TrainOptions, args))
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
    from imcap.evaluate import run_eval
    from imcap.options import dataclass_from_args

    metrics = run_eval(dataclass_from_args(EvalOptions, args))
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "CIDEr_blind", "loss"):
        if key in metrics:
            print(f"{key:>12}  {metrics[key]:.4f}")
    print(f"wrote {metrics['out']}/predictions.json, metrics.json, report.html")
    return 0


@command
def _add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption image files, folders or globs")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--model", required=True, help="run directory or checkpoint file")
    p.add_argument("--beam-size", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument("--max-length", type=int, default=16, help="longest caption in words")
    p.add_argument("-n", "--num-captions", type=int, default=1, help="captions per image")
    p.add_argument("--sample", action="store_true", help="sample instead of searching")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely words (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--attention", default="", metavar="OUT_DIR", help="attention models: write OUT_DIR/<image>.png, the attention map of every generated word")
    p.add_argument("--condition", default=None, help="conditioned models (coatt): the text to condition on for every image, e.g. the answer")
    p.set_defaults(func=_run_caption)


def _run_caption(args: argparse.Namespace) -> int:
    import json

    from imcap.captioner import Captioner, caption_paths
    from imcap.decoding import DecodeOptions

    captioner = Captioner.load(args.model, args.device)
    opts = DecodeOptions(beam_size=args.beam_size, max_length=args.max_length, sample=args.sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, n=args.num_captions)
    results, skipped = caption_paths(captioner, args.paths, opts, args.batch_size, return_attention=bool(args.attention), condition=args.condition)
    if args.attention:
        from imcap.attention_maps import write_attention_maps

        written = write_attention_maps(results, args.attention, captioner.attention_geometry)
        sys.stderr.write(f"wrote {len(written)} attention map(s) to {args.attention}\n")
        for r in results:
            del r["attention"]
    if args.json:
        print(json.dumps({"results": results, "skipped": [{"file": f, "error": e} for f, e in skipped]}, indent=2))
    else:
        for r in results:
            print(f"{r['file']}\t{r['caption']}" if len(r["captions"]) == 1 else f"{r['file']}\t" + " | ".join(r["captions"]))
    if skipped:
        sys.stderr.write(f"imcap: skipped {len(skipped)} bad image(s) of {len(results) + len(skipped)}\n")
    if not results:
        sys.stderr.write("imcap: error: no image could be captioned\n")
        return 2
    return 0


@command
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synth -> prepro -> train -> eval -> caption -> report on the built-in scenes")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--images", type=int, default=3000, help="synthetic images")
    p.add_argument("--max-iters", type=int, default=1500, help="training iterations")
    p.add_argument("--seed", type=int, default=123, help="random seed")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from imcap.demo import run_demo

    run_demo(args.out, args.images, args.max_iters, args.seed)
    return 0


@command
def _add_serve(sub) -> None:
    from imcap.options import add_dataclass_arguments
    from imcap.serve.settings import ServeSettings

    p = sub.add_parser("serve", help="caption (and search) over HTTP, with a web page; IMCAP_API_KEY turns on a Bearer key")
    p.add_argument("--model", required=True, help="run directory or checkpoint file")
    p.add_argument("--search-index", default=None, help="search index to load for POST /v1/search")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    add_dataclass_arguments(p, ServeSettings)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import os

    from imcap.options import dataclass_from_args
    from imcap.serve.settings import ServeSettings

    try:
        from imcap.serve.app import run_server
    except ModuleNotFoundError as exc:
        raise ImcapError(f"imcap serve needs the serve extra ({exc.name} is missing): pip install 'imcap[serve]'") from None
    settings = dataclass_from_args(ServeSettings, args, api_key=os.environ.get("IMCAP_API_KEY"))
    run_server(args.model, settings, args.host, args.port, args.device, args.search_index)
    return 0


@command
def _add_search(sub) -> None:
    from imcap.options import add_dataclass_arguments
    from imcap.search.options import MODELS, SearchTrainOptions

    p = sub.add_parser("search", help="natural-language image search: train/eval GNA-RNN or a dual encoder, index, query")
    ss = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND", parser_class=_Parser)
    ss.required = True
    t = ss.add_parser("train", help=f"train a text -> image search model ({', '.join(MODELS)})")
    add_dataclass_arguments(t, SearchTrainOptions)
    t.set_defaults(func=_run_search_train)
    e = ss.add_parser("eval", help="text -> image top-1/5/10 accuracy and mAP on a split")
    e.add_argument("--model", required=True, help="search run directory or checkpoint file")
    e.add_argument("--data", default="", help="data to evaluate on (default: the data the model was trained on)")
    e.add_argument("--split", default="test", choices=("train", "val", "test"), help="split (default: test)")
    e.add_argument("--max-images", type=int, default=-1, help="gallery size: the first N images of the split (-1: all)")
    e.add_argument("--batch-size", type=int, default=64, help="images per batch")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda")
    e.add_argument("--out", default="", help="folder for metrics.json")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=_run_search_eval)
    i = ss.add_parser("index", help="embed image files/folders/globs into a search index (created or appended to)")
    i.add_argument("--model", required=True, help="search run directory or checkpoint file")
    i.add_argument("--images", required=True, nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    i.add_argument("--out", required=True, help="index folder (created, or appended to when it exists)")
    i.add_argument("--batch-size", type=int, default=64, help="images per batch")
    i.add_argument("--device", default="auto", help="auto, cpu, cuda")
    i.set_defaults(func=_run_search_index)
    q = ss.add_parser("query", help="the images of an index that best match a sentence")
    q.add_argument("text", nargs="+", help="the sentence, e.g. \"a man in a red jacket\"")
    q.add_argument("--index", required=True, help="index folder written by `imcap search index`")
    q.add_argument("-k", type=int, default=10, help="number of hits (default: 10)")
    q.add_argument("--html", default="", help="also write an HTML page of the hits here")
    q.add_argument("--model", default=None, help="check that the index was built with this model")
    q.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_run_search_query)


def _run_search_train(args: argparse.Namespace) -> int:
    from imcap.options import dataclass_from_args
    from imcap.search.options import SearchTrainOptions
    from imcap.search.train import train_search

    run = train_search(dataclass_from_args(SearchTrainOptions, args))
    print(f"run directory: {run}  (best checkpoint: {run / 'best.pt'})")
    return 0


def _run_search_eval(args: argparse.Namespace) -> int:
    import json

    from imcap.search.evaluate import run_search_eval

    m = run_search_eval(args.model, args.data, args.split, args.max_images, args.batch_size, args.device, args.out)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{m['kind']} model, {m['split']} split: {m['queries']} queries, gallery {m['gallery']} images ({m['identities']} identities)")
    for key in ("top1", "top5", "top10", "mAP"):
        print(f"{key:>6}  {100 * m[key]:.2f}%")
    if args.out:
        print(f"wrote {args.out}/metrics.json")
    return 0


def _run_search_index(args: argparse.Namespace) -> int:
    from imcap.search.index import build_index

    r = build_index(args.model, args.images, args.out, args.batch_size, args.device)
    print(f"{r.path}: added {r.added} image(s), {r.already} already indexed, {r.total} in total")
    if r.skipped:
        sys.stderr.write(f"imcap: skipped {len(r.skipped)} bad image(s) (first: {r.skipped[0][1]})\n")
    return 0


def _run_search_query(args: argparse.Namespace) -> int:
    import json

    from imcap.search.index import load_index, write_hits_html

    text = " ".join(args.text)
    index = load_index(args.index, args.device, args.model)
    hits = index.query(text, args.k)
    if args.json:
        print(json.dumps({"query": text, "kind": index.kind, "hits": [{"path": p, "score": s} for p, s in hits]}, indent=2))
    else:
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:>3}  {score:.4f}  {path}")
    if args.html:
        write_hits_html(args.html, text, hits, index.kind)
        sys.stderr.write(f"wrote {args.html}\n")
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
    from imcap.features import extract_features
    from imcap.options import dataclass_from_args

    out = extract_features(dataclass_from_args(FeatureOptions, args))
    print(f"wrote {out}/meta.json and its feature arrays; train with --features-dir {out}")
    return 0


@command
def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="caption metrics (BLEU, METEOR, ROUGE-L, CIDEr, SPICE) with pycocoevalcap's numbers")
    p.add_argument("--refs", required=True, help="references: COCO annotations, Karpathy JSON, or {id: [captions]}")
    p.add_argument("--preds", required=True, help="predictions: COCO results [{image_id, caption}] or {id: caption}")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="Bleu, Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (default: all; METEOR/SPICE skipped "
                        "when Java or their jars are missing)")
    p.add_argument("--per-image", metavar="OUT", help="write per-image scores to this JSON file")
    p.add_argument("--out", metavar="OUT", help="write the corpus scores to this JSON file")
    p.add_argument("--no-tokenize", dest="tokenize", action="store_false",
                   help="captions are already PTB-tokenized (skip the tokenizer)")
    p.add_argument("--meteor-jar", help="path of meteor-1.5.jar (default: from pycocoevalcap or IMCAP_METEOR_JAR)")
    p.add_argument("--spice-jar", help="path of spice-1.0.jar with CoreNLP in lib/ (default: pycocoevalcap's)")
    p.add_argument("--java", help="Java executable (default: IMCAP_JAVA or `java` on PATH)")
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from imcap.metrics.cli_score import run

    return run(args.refs, args.preds, args.metrics, args.per_image, args.out, args.tokenize, args.meteor_jar,
               args.spice_jar, args.java)


@command
def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="saliency maps: which pixels each word of the caption depends on (PNG per image)")
    p.add_argument("paths", nargs="+", metavar="IMG", help="image files, folders or glob patterns")
    p.add_argument("--model", required=True, help="run directory or checkpoint file (any model with a CNN)")
    p.add_argument("--out", default="explain", help="folder for <image>.png (default: explain)")
    p.add_argument("--beam-size", type=int, default=1, help="beam size of the explained caption (1: greedy)")
    p.add_argument("--max-length", type=int, default=16, help="longest caption in words")
    p.add_argument("--condition", default=None, help="conditioned models (coatt): the text to condition on, e.g. the answer")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from imcap.decoding import DecodeOptions
    from imcap.saliency import run_explain

    written, skipped = run_explain(args.model, args.paths, args.out, DecodeOptions(beam_size=args.beam_size, max_length=args.max_length), args.condition, args.device)
    for path, caption in written:
        print(f"{path}\t{caption}")
    if skipped:
        sys.stderr.write(f"imcap: skipped {len(skipped)} bad image(s) of {len(written) + len(skipped)}\n")
    if not written:
        sys.stderr.write("imcap: error: no image could be explained\n")
        return 2
    return 0
