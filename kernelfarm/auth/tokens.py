"""Tokens: made, hashed and found here; the clients import this module, servers too.

A token is ``secrets.token_urlsafe(32)`` (256 random bits, URL-safe text).  Servers keep
only its SHA-256: a token has far more entropy than a password, so a slow hash would add
cost without adding safety, and the hash is compared with ``hmac.compare_digest``.
A token is never logged, never put in an error message, never shown by ``status``.
A leaf: it imports nothing of kernelfarm, so client code may use it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

DEFAULT_DATA_DIR = "~/.local/state/kernelfarm"
"""``farm.data_dir``'s default: where a client looks for the admin token by itself."""

ADMIN_TOKEN_FILE = "admin.token"
"""``<data_dir>/admin.token``: the admin's token alone on one line, mode 0600."""

TOKEN_ENV = "KERNELFARM_TOKEN"

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


TOKEN_FILE_MAX_BYTES = 4096
"""More than this is not a token file (``--token-file /dev/zero`` read forever)."""


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding white space stripped); ``ValueError`` if empty
    or larger than any token file."""
    with open(path, "rb") as fh:
        data = fh.read(TOKEN_FILE_MAX_BYTES + 1)
    if len(data) > TOKEN_FILE_MAX_BYTES:
        raise ValueError(f"{path} holds more than {TOKEN_FILE_MAX_BYTES} bytes: not a token")
    token = data.decode("utf-8").strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


def admin_token_of(data_dir: str | os.PathLike[str]) -> str:
    """The admin token of a farm's data dir (its first ``serve`` made it)."""
    return read_token_file(Path(data_dir).expanduser() / ADMIN_TOKEN_FILE)


def find_token(token_file: str | os.PathLike[str] | None = None,
               data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The token a client sends: ``token_file``, else ``$KERNELFARM_TOKEN``, else the admin
    token of ``data_dir`` if this user can read it, else ``None`` (calls then get NOAUTH)."""
    if token_file is not None:
        return read_token_file(token_file)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if data_dir is not None:
        try:
            return admin_token_of(data_dir)
        except (OSError, ValueError):
            return None
    return None
