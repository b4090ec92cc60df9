"""``shelfsight ui``: the Streamlit storefront (registered by the UI stage)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    del sub  # the storefront command lands with the UI
