"""API keys for the transformer (`--api_key_file`): loading, reloading and checking them.

The file holds one key per line (blank lines and `#` comments ignored). It is re-read when it
changes (checked at most once a second, on the next request), so a key is rotated by editing
the file or updating the Kubernetes Secret it is mounted from: add the new key, move clients
over, remove the old one. Keys are kept only as SHA-256 digests, compared in constant time, and
never logged; messages name the file and the number of keys, never a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path

# Under kserve's logger, which kserve configures, so that reloads show in the server log.
logger = logging.getLogger("kserve").getChild("auth")

MIN_KEY_LENGTH = 16
RECHECK_INTERVAL_S = 1.0
# The header an incoming request carries its key in; kserve would forward it to the predictor.
CREDENTIAL_HEADERS = frozenset({"authorization"})


class ApiKeyFileError(ValueError):
    """The key file cannot be read or holds no usable key."""


def read_keys(path: Path) -> frozenset[bytes]:
    """SHA-256 digests of the keys in `path`; raises ApiKeyFileError (without the key)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyFileError(f"cannot read the API key file {path}: {exc}") from None
    digests = set()
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ApiKeyFileError(
                f"{path}, line {number}: a key of {len(key)} characters; expected at least "
                f"{MIN_KEY_LENGTH} characters without spaces (e.g. `openssl rand -hex 32`)"
            )
        digests.add(_digest(key))
    if not digests:
        raise ApiKeyFileError(f"the API key file {path} holds no key (one key per line)")
    return frozenset(digests)


class ApiKeys:
    """The current keys from one file, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests = read_keys(path)  # a bad file at start-up stops the server
        self._signature = _signature(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        logger.info("API keys: %d loaded from %s", len(self._digests), path)

    def valid(self, presented: str) -> bool:
        """Whether `presented` is one of the current keys (constant time in the key's value)."""
        self._maybe_reload()
        digest = _digest(presented)
        matched = False
        for known in self._digests:  # every key is compared: no early exit on a match
            matched |= hmac.compare_digest(digest, known)
        return matched

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_INTERVAL_S or not self._lock.acquire(blocking=False):
            return
        try:
            self._checked = now
            signature = _signature(self.path)
            if signature == self._signature:
                return
            try:
                digests = read_keys(self.path)
            except ApiKeyFileError as exc:
                # Keep serving with the previous keys: a half-written or vanished file must not
                # lock every client out, nor let anyone in.
                logger.error("API keys: keeping the %d previous keys: %s", len(self), exc)
                return
            self._digests, self._signature = digests, signature
            logger.info("API keys: %d reloaded from %s", len(digests), self.path)
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({self.path}, {len(self)} keys)"


def without_credentials(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The request headers minus the client's credentials, for forwarding to the predictor."""
    if headers is None:
        return None
    return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten or a Secret volume swaps its symlink."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
