"""Downloads of a dataset URL into ``dataset.cache_dir`` under a name derived from the URL, via a temporary file
in the same folder and ``os.replace``: an interrupted download never looks cached, and a cached one is never
fetched again (the 5-core files are large and the host is slow)."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from finetune.errors import UserError

# Bytes read per call: large enough that a progress bar update per chunk costs nothing.
CHUNK_BYTES = 1 << 20


def cached_path(url: str, cache_dir: Path | str) -> Path:
    """Where ``url`` is cached: its file name prefixed by a hash of the whole URL, so two URLs ending in the
    same name never collide and the extension (which picks the reader) is kept."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{digest}-{url_file_name(url)}"


def url_file_name(url: str) -> str:
    return Path(unquote(urlsplit(url).path)).name or "download"


def download(url: str, cache_dir: Path | str, setting: Optional[str] = None) -> Path:
    """The cached copy of ``url`` in ``cache_dir``, fetched once with a progress bar; ``setting`` names the
    config key the URL came from in the error message."""
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    setting = setting or f"dataset.url={url}"
    target = cached_path(url, cache_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        with urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            received = _copy_with_progress(response, handle, expected, url_file_name(url))
        if expected is not None and received != expected:
            raise OSError(f"connection closed after {received} of {expected} bytes")
        os.replace(partial, target)
    except (OSError, HTTPException, ValueError) as error:
        reason = error.reason if isinstance(error, URLError) and not isinstance(error, HTTPError) else error
        raise UserError(
            f"{setting}: download of {url} failed ({reason}); if offline, fetch the file elsewhere and "
            "set dataset.path=<local copy>"
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _copy_with_progress(response, handle, total: Optional[int], name: str) -> int:
    from tqdm import tqdm

    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}") as bar:
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            handle.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received
