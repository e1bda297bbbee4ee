"""The model card (README.md) of an export folder: what the model is, what it learned from, how well it did, how to load it."""
from __future__ import annotations


def model_card(config: dict, folder_name: str) -> str:
    """README.md of an export: what the model is, what it was trained on, how well it did, how to load it."""
    args, training, data = config["model_args"], config["training"], config["data"]
    cnn = args["cnn"] + (f" (width {args['cnn_width']})" if args["cnn"] == "small" else "")
    lines = [
        f"# imcap model: {args['model']}",
        "",
        (f"Exported by `imcap export` on {config['created'][:10]} (UTC) from `{config['source']}`, "
         f"iteration {training.get('iteration')}, epoch {training.get('epoch')}; imcap {config['imcap_version']}."),
        "",
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| decoder | {args['model']} ({args['rnn_type']}, {args['num_layers']} layer(s) of {args['rnn_size']}) |",
        f"| image encoder | {cnn}, {config['image_size']} x {config['image_size']} px input |",
        f"| parameters | {config['parameters']:,} |",
        f"| vocabulary | {config['vocab_size']} tokens |",
        "",
        "## Training data",
        "",
        f"- path: `{data['path'] or 'unknown'}`",
        f"- fingerprint: {data['fingerprint'] or 'unknown (the data folder was not found at export time)'}",
        "- images per split: " + (", ".join(f"{k} {v}" for k, v in sorted(data["splits"].items())) if data["splits"] else "unknown"),
        "",
    ]
    metrics = training.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("iteration", "epoch")}
    if shown:
        lines += [f"## Metrics (validation, best iteration {training.get('best_iteration')})", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in shown.items()]
    else:
        lines += ["## Metrics", "", "None recorded in the run."]
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from imcap import Captioner",
        "",
        f'captioner = Captioner.load("{folder_name}")',
        'print(captioner.caption("photo.jpg"))',
        "```",
        "",
        f"or `imcap caption --model {folder_name} photo.jpg`, or `imcap serve --model {folder_name}`.",
    ]
    if "onnx" in config:
        lines += [
            "",
            "ONNX graphs (encoder.onnx, decoder_step.onnx) decode with onnxruntime alone:",
            "",
            "```python",
            "from imcap.export.onnx_captioner import OnnxCaptioner",
            "",
            f'print(OnnxCaptioner.load("{folder_name}").caption("photo.jpg"))',
            "```",
        ]
    return "\n".join(lines) + "\n"
