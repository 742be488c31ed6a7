"""Evaluations as workflows and what-if re-runs (issue 13)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keel eval`` and ``keel whatif`` to the CLI's subcommands."""
