"""Reports: training curves (PNG) and self-contained HTML pages of images with their captions."""
from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from imcap.files import atomic_write, atomic_write_text, file_data_uri, thumbnail_data_uri


def plot_history(history: dict, out: str | Path) -> None:
    """Write a PNG with the training loss, validation loss and validation metrics against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = history.get("train_loss", []), history.get("val", [])
    metric_names = [k for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr") if any(k in v for v in val)]
    fig, axes = plt.subplots(1, 2 if metric_names else 1, figsize=(10 if metric_names else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([t["iteration"] for t in train], [t["loss"] for t in train], label="train", lw=1)
    if val:
        ax.plot([v["iteration"] for v in val], [v["loss"] for v in val], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    if metric_names:
        ax2 = axes[0][1]
        for k in metric_names:
            pts = [(v["iteration"], v[k]) for v in val if k in v]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k)
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("validation score")
        ax2.legend()
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table.metrics td,table.metrics th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:1em}.card{width:260px;border:1px solid #ddd;border-radius:6px;padding:.5em}
.card img{width:256px;image-rendering:pixelated}.pred{font-weight:600}.refs{color:#666;font-size:.85em;margin:.3em 0 0 1em;padding:0}"""


def write_report(out: str | Path, title: str, items: Sequence[dict], metrics: dict | None = None, curves: str | Path | None = None, note: str = "") -> Path:
    """Write a self-contained HTML page.

    items: dicts with "image" (path), "caption" and optional "refs" (list of strings), "score", "extra_html".
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    if metrics:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>" if isinstance(v, float) else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in metrics.items())
        parts.append(f"<h2>Scores</h2><table class='metrics'>{rows}</table>")
    if curves and Path(curves).exists():
        parts.append(f"<h2>Training curves</h2><img src='{file_data_uri(curves)}' alt='training curves'>")
    parts.append("<h2>Captions</h2><div class='grid'>")
    for it in items:
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in it.get("refs", []))
        score = f" <small>({it['score']:.2f})</small>" if isinstance(it.get("score"), (int, float)) else ""
        parts.append(
            f"<div class='card'><img src='{thumbnail_data_uri(it['image'])}' alt='{html.escape(str(Path(it['image']).name))}'>"
            f"<div class='pred'>{html.escape(it['caption'])}{score}</div>"
            + (f"<ul class='refs'>{refs}</ul>" if refs else "")
            + it.get("extra_html", "")
            + "</div>"
        )
    parts.append("</div></body></html>")
    atomic_write_text(out, "\n".join(parts))
    return Path(out)
