"""The options contract: every validated option rejects a bad value with one line and exit 2, before any work."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from imcap.cli import main
from imcap.config import CaptionOptions, DemoOptions, EvalOptions, ExplainOptions, FeatureOptions, SynthOptions, TrainOptions
from imcap.options import field_error, flag_of
from imcap.data.prepro import PreproOptions
from imcap.export.options import ExportOptions
from imcap.reference.options import ReferenceTrainOptions
from imcap.search.options import SearchEvalOptions, SearchIndexOptions, SearchQueryOptions, SearchTrainOptions
from imcap.serve.settings import ServeOptions, ServeSettings

# command words and the arguments it needs besides the bad one (nothing is read before validation)
COMMANDS: dict[str, tuple[list[str], type]] = {
    "train": (["train", "--data", "nowhere"], TrainOptions),
    "eval": (["eval", "--model", "nowhere"], EvalOptions),
    "caption": (["caption", "--model", "nowhere", "x.jpg"], CaptionOptions),
    "explain": (["explain", "--model", "nowhere", "x.jpg"], ExplainOptions),
    "features": (["features", "--data", "nowhere", "--out", "nowhere"], FeatureOptions),
    "synth": (["synth", "--out", "nowhere"], SynthOptions),
    "demo": (["demo", "--out", "nowhere"], DemoOptions),
    "search train": (["search", "train", "--data", "nowhere"], SearchTrainOptions),
    "search eval": (["search", "eval", "--model", "nowhere"], SearchEvalOptions),
    "search index": (["search", "index", "--out", "nowhere"], SearchIndexOptions),
    "search query": (["search", "query", "--index", "nowhere", "hello"], SearchQueryOptions),
    "export": (["export", "--model", "nowhere", "--out", "nowhere"], ExportOptions),
    "prepro": (["prepro", "--input", "nowhere", "--output-dir", "nowhere"], PreproOptions),
    "reference train": (["reference", "train"], ReferenceTrainOptions),
    "serve": (["serve", "--model", "nowhere"], ServeOptions),
    "serve limits": (["serve", "--model", "nowhere"], ServeSettings),
}


def bad_value(f: dataclasses.Field, kind: type) -> str | None:
    """A value that breaks the field's rules, as typed on the command line (None: the field has no rule)."""
    meta = f.metadata
    if meta.get("choices"):
        return "bogus"
    if meta.get("check"):
        if kind is not str:
            return "99999999"  # counts with a machine-dependent limit (workers, processes)
        return next(c for c in ("banana", "") if field_error(f, c) is not None)
    allow = meta.get("allow", ())
    step = 1 if kind is int else 0.5
    for key, value in (("gt", lambda b: b), ("min", lambda b: b - step), ("lt", lambda b: b), ("max", lambda b: b + step)):
        if meta.get(key) is not None:
            candidate = value(meta[key])
            while candidate in allow:
                candidate -= step
            return str(kind(candidate))
    return None


def cases() -> list:
    out = []
    for name, (argv, cls) in COMMANDS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = bad_value(f, hints[f.name])
            if value is not None and not f.metadata.get("positional"):
                out.append(pytest.param(argv, flag_of(f), value, id=f"{name} {flag_of(f)}={value}"))
    return out


@pytest.mark.parametrize(("argv", "flag", "value"), cases())
def test_bad_value_is_one_line_and_exit_2(argv, flag, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*argv, flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"imcap: error: {flag}"), err
    assert "Traceback" not in err[0]
    assert not any(tmp_path.iterdir()), "a rejected command wrote files"


def test_every_rule_has_a_bad_value_case():
    assert len(cases()) > 60


def test_type_errors_name_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--batch-size", "abc"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "imcap: error: --batch-size: 'abc' is not a whole number"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_beam_size_below_one_is_refused_not_greedy(value, capsys):
    with pytest.raises(SystemExit):
        main(["caption", "--model", "nowhere", "x.jpg", "--beam-size", value])
    assert capsys.readouterr().err.startswith(f"imcap: error: --beam-size must be >= 1 and <= 1000 (got {value})")


def test_allowed_special_values_pass():
    f = next(f for f in dataclasses.fields(TrainOptions) if f.name == "max_iters")
    assert field_error(f, -1) is None
    assert field_error(f, 0) == "--max-iters must be >= 1 or -1 (got 0)"


def test_help_is_instant_and_lists_ranges():
    out = subprocess.run([sys.executable, "-m", "imcap", "train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--batch-size" in out and "--resume" in out
