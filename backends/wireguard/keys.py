"""WireGuard keys: X25519 through ``cryptography``, and the private key file Go flannel keeps.

The file (``/run/flannel/wgkey``, ``WIREGUARD_KEY_FILE`` overrides) holds the private key in
base64 without a newline, mode 0400 in a 0755 directory, as Go flannel writes it; it is
generated when missing and reused on every start, so the public key in the lease stays the
same across restarts.  Deleting it and restarting rotates the key.

A private key or a preshared key is never logged, exported or shown in a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from flanneld.errors import ConfigError

KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"
KEY_LEN = 32


class BadKeyError(ConfigError):
    """A key that is not 32 bytes of base64 (the message never includes the key)."""


class Key:
    """A 32-byte WireGuard key (public, private or preshared)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise BadKeyError(f"a WireGuard key is {KEY_LEN} bytes, got {len(raw)}")
        self.raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str, what: str = "key") -> Key:
        """Parse the base64 form (44 characters, as ``wg`` and Go flannel write it)."""
        if not isinstance(text, str):
            raise BadKeyError(f"{what}: must be a base64 string, got {type(text).__name__}")
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise BadKeyError(
                f"{what}: not base64 (a WireGuard key is 44 base64 characters)") from None
        if len(raw) != KEY_LEN:
            raise BadKeyError(f"{what}: decodes to {len(raw)} bytes, a WireGuard key is {KEY_LEN}")
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> Key:
        """Parse the hex form the UAPI protocol uses."""
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise BadKeyError("not a hex WireGuard key") from None
        return cls(raw)

    @classmethod
    def generate(cls) -> Key:
        """A fresh private key."""
        raw = X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(raw)

    def public(self) -> Key:
        """The public key of this private key."""
        public = X25519PrivateKey.from_private_bytes(self.raw).public_key()
        return Key(public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def base64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def hex(self) -> str:
        return self.raw.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        # A Key does not know whether it is private: show a fingerprint that reveals nothing
        # of it (logs that name a public key print ``base64()`` on purpose).
        return f"Key(#{hashlib.sha256(self.raw).hexdigest()[:8]})"


def key_file_path() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or KEY_FILE)


def load_or_create(path: Path | None = None) -> tuple[Key, bool]:
    """The node's private key from ``path`` (default: ``key_file_path()``), generated and
    written when the file is missing; (key, created)."""
    path = path if path is not None else key_file_path()
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        key = Key.generate()
        if _write(path, key):
            return key, True
        return load_or_create(path)  # another process wrote it first: use theirs
    except (OSError, UnicodeDecodeError) as exc:
        raise BadKeyError(f"cannot read the WireGuard private key file {path}: "
                        f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}") from None
    try:
        return Key.from_base64(text, what=f"WireGuard private key file {path}"), False
    except BadKeyError as exc:
        raise BadKeyError(f"{exc}; delete the file to generate a new key (peers learn the new "
                        "public key from this node's lease)") from None


def _write(path: Path, key: Key) -> bool:
    """Create the file 0400 (in a 0755 directory) with the key, no newline, atomically: a
    crash leaves either no file or a whole key (and at worst a stray ``.wgkey.*`` temporary
    file, never reused).  False: the file appeared meanwhile."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o400)
            os.write(fd, key.base64().encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process wrote the file meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)
