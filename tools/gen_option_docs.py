"""Write docs/options.md, the option tables of every imcap command, from the options dataclasses.

    python tools/gen_option_docs.py          # rewrite docs/options.md
    python tools/gen_option_docs.py --check  # exit 1 when docs/options.md is stale (a test runs this)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imcap.config import CaptionOptions, DemoOptions, EvalOptions, ExplainOptions, FeatureOptions, ScoreOptions, SynthOptions, TrainOptions
from imcap.data.prepro import PreproOptions
from imcap.export.options import ExportOptions
from imcap.options import options_table
from imcap.reference.options import ReferenceTrainOptions
from imcap.search.options import SearchEvalOptions, SearchIndexOptions, SearchQueryOptions, SearchTrainOptions
from imcap.serve.settings import ServeOptions, ServeSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"
COMMANDS = [
    ("imcap train", TrainOptions), ("imcap eval", EvalOptions), ("imcap caption", CaptionOptions), ("imcap features", FeatureOptions),
    ("imcap explain", ExplainOptions), ("imcap synth", SynthOptions), ("imcap prepro", PreproOptions), ("imcap demo", DemoOptions),
    ("imcap score", ScoreOptions), ("imcap export", ExportOptions), ("imcap search train", SearchTrainOptions), ("imcap search eval", SearchEvalOptions),
    ("imcap search index", SearchIndexOptions), ("imcap search query", SearchQueryOptions),
    ("imcap serve", ServeOptions), ("imcap serve: batching and limits", ServeSettings), ("imcap reference train", ReferenceTrainOptions),
]


def render() -> str:
    """The whole page."""
    parts = ["# Options of every command\n",
             "Generated from the options dataclasses (`src/imcap/config.py`, `src/imcap/search/options.py`, `src/imcap/serve/settings.py`, ...) by "
             "`python tools/gen_option_docs.py`; do not edit by hand. `imcap COMMAND --help` prints the same. A value outside "
             "`allowed` stops the command before any work with `imcap: error: --flag must be ... (got ...)` and exit code 2.\n"]
    for title, cls in COMMANDS:
        parts.append(f"## `{title}`\n\n{(cls.__doc__ or '').strip()}\n\n{options_table(cls)}")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that docs/options.md is up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is stale: run python tools/gen_option_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
