"""The parser every `cardinal` command and benchmark builds its options with (a leaf: it
imports nothing of ours, so the benchmarks, below the CLI, use it too)."""

from __future__ import annotations

import argparse
from typing import Any


class ShowDefaults(argparse.HelpFormatter):
    """`--help` says what an option is when it is left out, where that is a value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (
            text
            and "default" not in text
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(default, list | tuple)
            and not (isinstance(default, str) and "@" in default)  # a URL's credentials
        ):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Every `cardinal` parser: its options' defaults are in their help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", ShowDefaults)
        super().__init__(*args, **kwargs)
