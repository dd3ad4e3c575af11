"""Progress bars for the public entry points: ``progress=None`` follows the log level."""
from __future__ import annotations

import logging

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int | None, desc: str, progress: bool | None, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr; with ``progress=None`` it shows when activeindex logs at INFO or below."""
    if progress is None:
        progress = logging.getLogger("activeindex").isEnabledFor(logging.INFO)
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False)
