"""Evaluation of a caption model on a data split: loss, predictions, language metrics, blind baseline."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch

from imcap.config import EvalOptions
from imcap.data.features import FeatureStore
from imcap.data.fingerprint import data_fingerprint
from imcap.data.loader import CaptionDataset, PreproData, ResumableSampler, make_loader
from imcap.data.vocab import END, NULL, START, tokenize
from imcap.decoding import DecodeOptions, decode
from imcap.errors import ImcapError
from imcap.losses import caption_loss
from imcap.models.caption_model import CaptionModel
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

LANGUAGE_METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")


def teacher_forcing_batch(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, n, L) (0-padded words) -> inputs (B, n, T) starting with <START>, targets (B*n, T) ending with <END>.

    T = longest caption + 1; target positions after <END> hold <NULL> and are ignored by the loss.
    """
    lengths = (labels != NULL).sum(dim=2)  # (B, n)
    t = int(lengths.max()) + 1
    words = labels[:, :, : t - 1]  # (B, n, T-1)
    start = torch.full_like(words[:, :, :1], START)
    inputs = torch.cat([start, words], dim=2)  # (B, n, T)
    targets = torch.cat([words, torch.zeros_like(start)], dim=2)  # (B, n, T)
    targets.scatter_(2, lengths.unsqueeze(2), END)  # <END> right after the last word
    return inputs, targets.flatten(0, 1)


def eval_loader(data: PreproData, split: str, image_size: int, seq_per_img: int, max_images: int, batch_size: int, num_workers: int = 0, features: FeatureStore | None = None, feature_kind: str = "pooled"):
    """An ordered loader over the first `max_images` images of `split` (all when <= 0)."""
    indices = data.split_indices(split)
    if max_images > 0:
        indices = indices[:max_images]
    dataset = CaptionDataset(data, indices, image_size, seq_per_img, seed=0, features=features, feature_kind=feature_kind)
    return make_loader(dataset, batch_size, ResumableSampler(len(dataset), 0, shuffle=False), num_workers)


@torch.no_grad()
def evaluate_split(model: CaptionModel, data: PreproData, split: str, decode_opts: DecodeOptions, max_images: int = -1, batch_size: int = 32,
                   seq_per_img: int = 5, device: torch.device | str = "cpu", language_eval: bool = True, progress: bool = True,
                   features: FeatureStore | None = None) -> dict:
    """Return {"loss", "predictions": [{"image_id", "caption"}], "metrics": {...}} for a split."""
    model.eval()
    device = torch.device(device)
    loader = eval_loader(data, split, model.encoder.input_size, seq_per_img, max_images, batch_size, features=features, feature_kind=model.feature_kind)
    total_loss, batches, predictions = 0.0, 0, []
    for images, labels, idx in progress_bar(loader, desc=f"eval {split}", unit="batch", leave=False, disable=not progress):
        images, labels = images.to(device), labels.to(device)
        inputs, targets = teacher_forcing_batch(labels)
        condition = model.condition_for(data, idx.tolist()) if model.conditioned else None
        feats = model.encode_features(images, condition) if features is not None else model.encode(images, condition=condition)
        logprobs = model.decoder(feats, inputs.flatten(0, 1), repeats=inputs.size(1))  # (B*n, T, V+1)
        total_loss += float(caption_loss(logprobs, targets))
        batches += 1
        seqs, _ = decode(model.decoder, feats, decode_opts)
        for b, i in enumerate(idx.tolist()):
            predictions.append({"image_id": data.images[i]["id"], "caption": data.vocab.decode(seqs[b, 0].tolist())})
    result = {"loss": total_loss / max(batches, 1), "predictions": predictions, "metrics": {}}
    if language_eval and predictions:
        refs = {im["id"]: im["captions"] for im in (data.images[i] for i in loader.dataset.indices)}
        preds = {p["image_id"]: p["caption"] for p in predictions}
        result["metrics"] = language_scores(refs, preds)
    return result


def language_scores(refs: dict, preds: dict, metrics: tuple[str, ...] = LANGUAGE_METRICS) -> dict[str, float]:
    """BLEU/METEOR/ROUGE_L/CIDEr with imcap's pycocoevalcap-exact scorer (METEOR skipped without Java)."""
    from imcap.metrics import score

    return score(refs, preds, metrics=metrics)


def most_frequent_caption(data: PreproData, split: str = "train") -> str:
    """The most frequent (normalised) training caption: the blind baseline's answer for every image."""
    counts = Counter(" ".join(tokenize(c)) for i in data.split_indices(split) for c in data.images[i]["captions"])
    return counts.most_common(1)[0][0] if counts else ""


def blind_cider(data: PreproData, split: str, indices: list[int] | None = None) -> tuple[str, float]:
    """CIDEr of giving every image of `split` the most frequent training caption."""
    caption = most_frequent_caption(data)
    idx = indices if indices is not None else data.split_indices(split)
    refs = {data.images[i]["id"]: data.images[i]["captions"] for i in idx}
    return caption, language_scores(refs, {k: caption for k in refs}, ("CIDEr",))["CIDEr"]


def _check_same_data(data_dir: str, fingerprint: str, ckpt_path: Path) -> None:
    """`--data` given to eval must hold the data set the model was trained on (by the fingerprint of its prepro files)."""
    if not data_dir or not fingerprint:
        return
    if data_fingerprint(data_dir) != fingerprint:
        raise ImcapError(f"--data {data_dir}: not the data set {ckpt_path} was trained on (its prepro files differ); "
                         "evaluate on the model's own data (leave out --data)")
    log.info("--data %s: the same data set the model was trained on (same fingerprint)", data_dir)


def run_eval(opts: EvalOptions) -> dict:
    """Evaluate a checkpoint on a split; write predictions.json, metrics.json and report.html; return the metrics."""
    from imcap.captioner import Captioner
    from imcap.export.folder import is_export_folder
    from imcap.checkpoint import resolve_checkpoint
    from imcap.files import atomic_write_json
    from imcap.report import write_report

    ckpt_path = Path(opts.model) if is_export_folder(opts.model) else resolve_checkpoint(opts.model)
    run_dir = ckpt_path if ckpt_path.is_dir() else ckpt_path.parent
    captioner = Captioner.load(ckpt_path, opts.device)
    data_dir = opts.data or (captioner.info.get("options") or {}).get("data", "")
    if not data_dir:
        raise ImcapError(f"{ckpt_path}: no --data given and the checkpoint does not name its data")
    _check_same_data(opts.data, captioner.info.get("data_fingerprint") or "", ckpt_path)
    data = PreproData.load(data_dir)
    if data.vocab.idx_to_word != captioner.vocab.idx_to_word:
        raise ImcapError(f"{data_dir}: its vocabulary differs from the model's; evaluate with the data the model was trained on")
    if not data.split_indices(opts.split):
        raise ImcapError(f"{data_dir}: split {opts.split!r} is empty")
    decode_opts = DecodeOptions(beam_size=opts.beam_size, max_length=data.max_length, length_penalty=opts.length_penalty)
    features_dir = opts.features_dir or (captioner.info.get("options") or {}).get("features_dir", "")
    features = FeatureStore(features_dir) if features_dir else None
    result = evaluate_split(captioner.model, data, opts.split, decode_opts, opts.max_images, opts.batch_size, device=captioner.device, progress=opts.progress, features=features)
    indices = data.split_indices(opts.split)[: opts.max_images] if opts.max_images > 0 else data.split_indices(opts.split)
    blind_caption, blind = blind_cider(data, opts.split, indices)
    metrics = {**result["metrics"], "CIDEr_blind": blind, "blind_caption": blind_caption, "loss": result["loss"], "split": opts.split,
               "images": len(result["predictions"]), "beam_size": opts.beam_size, "checkpoint": str(ckpt_path)}
    out = Path(opts.out) if opts.out else run_dir / f"eval-{opts.split}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "predictions.json", result["predictions"])
    atomic_write_json(out / "metrics.json", metrics)
    by_id = {im["id"]: i for i, im in enumerate(data.images)}
    items = [{"image": data.image_path(by_id[p["image_id"]]), "caption": p["caption"], "refs": data.images[by_id[p["image_id"]]]["captions"]} for p in result["predictions"][: opts.html_images]]
    if captioner.has_attention and features is None:
        from imcap.attention_maps import add_attention_html

        shown = [by_id[p["image_id"]] for p in result["predictions"][: opts.html_images]]
        add_attention_html(captioner, items, decode_opts, data.condition_texts(shown, captioner.model.args.condition_field) if captioner.model.conditioned else None)
    curves = run_dir / "curves.png"
    write_report(out / "report.html", f"imcap eval: {run_dir.name} on {opts.split}", items, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, curves)
    metrics["out"] = str(out)
    return metrics
