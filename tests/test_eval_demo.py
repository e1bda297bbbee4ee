"""`imcap eval` outputs and a tiny end-to-end `imcap demo`."""
import json

import pytest

from imcap.cli import main
from imcap.config import EvalOptions
from imcap.evaluate import run_eval

METRIC_KEYS = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "CIDEr_blind"}


def test_eval_writes_coco_results_metrics_and_html(tiny_run, tmp_path):
    metrics = run_eval(EvalOptions(model=str(tiny_run), split="test", out=str(tmp_path / "ev"), beam_size=2, progress=False))
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert preds and all(set(p) == {"image_id", "caption"} for p in preds)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved) and saved["images"] == len(preds) == 6
    assert all(0.0 <= saved[k] <= 1.0 for k in ("Bleu_1", "Bleu_4", "ROUGE_L"))
    html = (tmp_path / "ev" / "report.html").read_text()
    assert html.count("<div class='card'>") == 6 and "CIDEr" in html and "data:image/png;base64," in html
    assert metrics["CIDEr"] == saved["CIDEr"]


def test_eval_cli_prints_table(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(tiny_run), "--split", "val", "--out", str(tmp_path / "e"), "--no-progress"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "CIDEr" in out and "Bleu_4" in out


def test_tiny_demo_end_to_end(tmp_path):
    from imcap.demo import run_demo

    metrics = run_demo(tmp_path / "demo", images=60, max_iters=4, progress=False)
    for name in ("metrics.json", "report.html", "run/best.pt", "run/curves.png", "predictions.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert METRIC_KEYS <= set(metrics)
    assert len(metrics["examples"]) == 4
