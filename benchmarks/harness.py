"""The command line every benchmark script shares.

A benchmark module defines ``run(args) -> dict`` (the figures, also returned to tests) and
``report(results) -> str`` (the Markdown printed for RESULTS.md); :func:`main` ties them to a parser
whose help shows the module docstring.
"""

from __future__ import annotations

import argparse
from typing import Callable


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first line and whose epilog is the rest."""
    lines = doc.strip().splitlines()
    return argparse.ArgumentParser(description=lines[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(lines[2:]))


def int_list(text: str) -> list[int]:
    """``"64,128"`` -> ``[64, 128]`` (argparse type for comma-separated sizes)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(parse_args: Callable, run: Callable[..., dict], report: Callable[[dict], str], argv=None) -> dict:
    results = run(parse_args(argv))
    print(report(results))
    return results
