"""A GGUF file's HF config and tokenizer, converted once and kept in Octavo's cache.

transformers rebuilds both from the GGUF metadata on every load: about 11 s for the config
and 8 s for the tokenizer of the demo SmolLM2 on the CI machine. Saved as ordinary HF files
they load in well under a second. The cache key covers the file's path, size and mtime and
the transformers version; ``OCTAVO_CACHE_DIR`` moves the cache (default ``~/.cache/octavo``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("OCTAVO_CACHE_DIR") or Path.home() / ".cache" / "octavo")


def converted_folder(gguf_path: Path, part: str) -> Path:
    """Where the converted ``part`` ("config" or "tokenizer") of this GGUF file is kept."""
    import transformers

    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return cache_root() / "gguf" / hashlib.sha256(key.encode()).hexdigest()[:24] / part


def load_converted(gguf_path: Path, part: str, convert: Callable[[], Any],
                   load_saved: Callable[[str], Any]) -> Any:
    """``load_saved(folder)`` from the cache, else ``convert()`` and save it for next time."""
    folder = converted_folder(gguf_path, part)
    if folder.is_dir():
        try:
            return load_saved(str(folder))
        except Exception as exc:  # a stale or damaged entry: convert again
            logger.warning("ignoring cached %s at %s: %s", part, folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    obj = convert()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{part}-"))
        obj.save_pretrained(str(staging))
        staging.rename(folder)  # atomic: readers see a whole entry or none
    except Exception as exc:  # a read-only home or an object without save_pretrained
        logger.debug("not caching %s of %s: %s", part, gguf_path, exc)
        shutil.rmtree(locals().get("staging", folder.parent / ".none"), ignore_errors=True)
    return obj
