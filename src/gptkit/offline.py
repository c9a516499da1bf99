"""Whether gptkit may reach a network, the one place that reads the switches.

GPTKIT_OFFLINE=1 turns gptkit's downloads off (data sets, tokenizer files, the Hugging Face
hub); Hugging Face's own switches (HF_HUB_OFFLINE, and HF_DATASETS_OFFLINE for `datasets`)
turn off what they name, as they do in Hugging Face's libraries.
"""

from __future__ import annotations

import os


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """GPTKIT_OFFLINE: no downloads at all."""
    return _on("GPTKIT_OFFLINE")


def hub_offline(*switches: str) -> bool:
    """No hub downloads: GPTKIT_OFFLINE, HF_HUB_OFFLINE, or any of `switches` (e.g.
    HF_DATASETS_OFFLINE for data sets) is on."""
    return offline() or any(_on(name) for name in ("HF_HUB_OFFLINE", *switches))
