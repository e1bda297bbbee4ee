"""The Python API: `Captioner.load(path).caption(x)` for paths, PIL images, tensors or lists."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from imcap.attention_maps import GridGeometry, attention_grid, grid_geometry
from imcap.checkpoint import load_checkpoint
from imcap.data.images import image_to_tensor, load_image
from imcap.data.vocab import NULL, Vocab
from imcap.decoding import DecodeOptions, decode
from imcap.devices import pick_device
from imcap.errors import ImcapError
from imcap.export.folder import is_export_folder, read_export
from imcap.models.caption_model import CaptionModel, build_model, model_args_from_dict

log = logging.getLogger(__name__)

ImageLike = str | Path | Image.Image | torch.Tensor


class Captioner:
    """A trained model, its vocabulary and decoding options, ready to caption images."""

    def __init__(self, model: CaptionModel, vocab: Vocab, device: torch.device | str = "cpu", info: dict | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.info = info or {}
        self._geometry: GridGeometry | None = None

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Captioner:
        """Load a checkpoint file, the best checkpoint of a run directory, or a folder written by `imcap export`."""
        if is_export_folder(path):
            model, vocab, info = read_export(path)
            return cls(model, vocab, pick_device(device), info)
        ckpt = load_checkpoint(path)
        try:
            args = model_args_from_dict(ckpt["model_args"])
            model = build_model(args, cnn_weights=None)
            model.load_state_dict(ckpt["model"])
            vocab = Vocab.from_dict(ckpt["vocab"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise ImcapError(f"{path}: checkpoint does not match this imcap's models ({str(exc).splitlines()[0][:120]})") from None
        info = {k: ckpt.get(k) for k in ("iteration", "epoch", "best_score", "best_iteration", "options", "data_fingerprint")}
        info["metrics"] = (ckpt.get("history") or {}).get("best_metrics")
        return cls(model, vocab, pick_device(device), info)

    @property
    def image_size(self) -> int:
        """Side in pixels of the images the encoder reads."""
        return self.model.encoder.input_size

    def to_tensor(self, image: ImageLike) -> torch.Tensor:
        """One image (path, PIL image, or float tensor (3, H, W) in [0, 1]) -> (3, S, S)."""
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.size(0) != 3:
                raise ImcapError(f"image tensors must be (3, H, W), got {tuple(image.shape)}")
            image = image.float()
            if image.shape[1:] != (self.image_size, self.image_size):
                image = torch.nn.functional.interpolate(image[None], size=(self.image_size,) * 2, mode="bilinear", align_corners=False)[0]
            return image
        if isinstance(image, Image.Image):
            return image_to_tensor(image, self.image_size)
        return image_to_tensor(load_image(image), self.image_size)

    @property
    def attention_geometry(self) -> GridGeometry:
        """Where the cells of the attention maps sit in the (resized, square) input image; measured once."""
        if self._geometry is None:
            self._geometry = grid_geometry(self.model.encoder, self.image_size)
        return self._geometry

    @property
    def has_attention(self) -> bool:
        """Whether the decoder attends over image regions (`caption_tensors(..., return_attention=True)` works)."""
        return self.model.decoder.has_attention

    def condition_ids(self, condition: str | Sequence[str] | None, batch: int) -> torch.Tensor | None:
        """Condition ids (B, Lc) for a conditioned model (one text for all images, or one per image)."""
        if not self.model.conditioned:
            return None
        if condition is None:
            raise ImcapError(f"this {self.model.args.model} model is conditioned on {self.model.args.condition_field!r}: give a condition (--condition)")
        texts = [condition] * batch if isinstance(condition, str) else list(condition)
        if len(texts) != batch:
            raise ImcapError(f"got {len(texts)} conditions for {batch} images")
        return self.model.encode_condition(texts)

    @torch.no_grad()
    def caption_tensors(self, images: torch.Tensor, opts: DecodeOptions | None = None, return_attention: bool = False, condition: str | Sequence[str] | None = None) -> list[list[tuple]]:
        """A batch (B, 3, S, S) -> for each image, `opts.n` (caption, log-probability) pairs.

        With `return_attention` (attention decoders), each pair becomes (caption, log-probability, weights):
        weights is a float tensor on the CPU with one row per generated token (the W words, then <END> unless
        the caption was cut at max_length): (rows, h, w) over the CNN's h x w grid, or (rows, K) for region features.
        `condition`: the text a conditioned decoder (coatt) reads, e.g. the answer; one for all images or one each.
        """
        opts = opts or DecodeOptions()
        if return_attention and not self.has_attention:
            raise ImcapError(f"{self.model.args.model} has no attention to show (use show_attend_tell, coatt, updown or transformer)")
        feats = self.model.encode(images.to(self.device), condition=self.condition_ids(condition, images.size(0)))
        out = decode(self.model.decoder, feats, opts, return_attention=return_attention)  # (B, n, L), (B, n)[, (B, n, L, K)]
        seqs, scores = out[0], out[1]
        result = []
        for b in range(seqs.size(0)):
            row = []
            for j in range(seqs.size(1)):
                ids = seqs[b, j].tolist()
                item: tuple = (self.vocab.decode(ids), float(scores[b, j]))
                if return_attention:
                    steps = sum(1 for t in ids if t != NULL)  # words and <END>
                    item += (attention_grid(out[2][b, j, :steps].float().cpu(), self.model.grid_size),)
                row.append(item)
            result.append(row)
        return result

    def caption(self, x: ImageLike | Sequence[ImageLike], beam_size: int = 1, max_length: int = 16, batch_size: int = 32, condition: str | Sequence[str] | None = None, **decode_kwargs) -> str | list[str]:
        """Caption one image (returns a string) or a list of images (returns a list of strings); `condition` for coatt."""
        single = not isinstance(x, (list, tuple)) and not (isinstance(x, torch.Tensor) and x.dim() == 4)
        items = [x] if single else list(x)
        opts = DecodeOptions(beam_size=beam_size, max_length=max_length, **decode_kwargs)
        out: list[str] = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self.to_tensor(im) for im in items[start : start + batch_size]])
            cond = condition if condition is None or isinstance(condition, str) else list(condition)[start : start + batch_size]
            out += [caps[0][0] for caps in self.caption_tensors(batch, opts, condition=cond)]
        return out[0] if single else out

    def model_card(self) -> dict:
        """Options, sizes and training metrics of the loaded model."""
        return {"model_args": asdict(self.model.args), "vocab_size": len(self.vocab), **self.info}


def caption_paths(captioner: Captioner, paths: Sequence[str], opts: DecodeOptions, batch_size: int = 32, progress: bool = True,
                  return_attention: bool = False, condition: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Caption files, folders and globs in batches; bad images are skipped.

    Returns ([{"file", "caption", "score", "captions"}], [(file, problem) for each skipped file]);
    skipped files include those found in folders that cannot be images (broken symbolic links,
    unreadable files, other file types), each logged. With `return_attention` every result also has
    "attention" (the best caption's (W+1, h, w) maps). `condition`: the text a conditioned model
    (coatt) reads for every image, e.g. the answer.
    """
    from imcap.progress import progress_bar

    from imcap.data.images import collect_images

    files, passed_over = collect_images(list(paths))
    results: list[dict] = []
    skipped: list[tuple[str, str]] = list(passed_over)
    if passed_over:
        log.warning("skipped %d file(s) that are not readable images: %s", len(passed_over), skip_summary(passed_over))
    bar = progress_bar(total=len(files), desc="caption", unit="img", disable=not progress or len(files) < 2 * batch_size)
    for start in range(0, len(files), batch_size):
        tensors, names = [], []
        for f in files[start : start + batch_size]:
            try:
                tensors.append(captioner.to_tensor(f))
                names.append(str(f))
            except ImcapError as exc:
                skipped.append((str(f), str(exc)))
                log.warning("skipped %s", exc)
        if tensors:
            for name, caps in zip(names, captioner.caption_tensors(torch.stack(tensors), opts, return_attention, condition)):
                results.append({"file": name, "caption": caps[0][0], "score": caps[0][1], "captions": [c[0] for c in caps]})
                if return_attention:
                    results[-1]["attention"] = caps[0][2]
        bar.update(len(files[start : start + batch_size]))
    bar.close()
    return results, skipped


def skip_summary(skipped: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """The first `shown` skipped files with their problems, and how many more: for a one-line summary."""
    names = ", ".join(f"{f} ({problem.removeprefix(f + ': ')})" for f, problem in skipped[:shown])
    return names + (f" and {len(skipped) - shown} more" if len(skipped) > shown else "")
