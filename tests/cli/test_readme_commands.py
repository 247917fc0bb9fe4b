"""The README's command summary and the real command agree: every verb and every option of
each verb is in the summary, and the summary names no verb or option that does not exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kernelfarm.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def summary() -> str:
    """The ``## Commands`` section's first code block."""
    text = README.read_text().split("\n## Commands\n", 1)[1]
    return text.split("```", 2)[1]


def verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


SHARED = {"-h", "--help", "--control", "--config", "--token-file"}
"""Options every client command takes: the paragraph under the summary says so."""


def flags(parser: argparse.ArgumentParser) -> list[list[str]]:
    """Each option of ``parser`` and of its sub-verbs (``tenant add --volume``), as its
    spellings (``["-H", "--human"]``)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += flags(child)
        elif action.option_strings:
            found.append(list(action.option_strings))
    return found


def test_every_verb_and_option_is_in_the_summary_and_nothing_else() -> None:
    lines: dict[str, str] = {}
    last = ""
    for line in summary().splitlines():
        named = re.findall(r"kernelfarm (\w+)", line) or [last]  # a continued line
        for verb in named:
            lines[verb] = lines.get(verb, "") + line
        last = named[-1]
    lines.pop("", None)
    real = verbs()
    assert set(lines) == set(real), (set(real) - set(lines), set(lines) - set(real))
    for verb, parser in real.items():
        spellings = flags(parser)
        written = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][a-z-]*)", lines[verb]))
        missing = [s for s in spellings if not SHARED & set(s) and not written & set(s)]
        assert not missing, (verb, missing)
        assert written <= {o for s in spellings for o in s}, verb
