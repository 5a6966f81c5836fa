"""Placeholder replaced below."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register the command."""


def run(args: argparse.Namespace) -> int:
    """Run the command."""
    return 0
