"""WireGuard keys and the private key file (``flanneld.backends.wireguard.keys``).

The X25519 vector is RFC 7748 section 6.1; the file layout is Go flannel's (base64, no
newline, 0400 in a 0755 directory).  No key text ever shows in an error message.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from flanneld.backends.wireguard import keys
from flanneld.backends.wireguard.keys import BadKeyError, Key
from flanneld.errors import ConfigError

pytestmark = pytest.mark.unit

ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- Key --------------------------------------------------------------------------------------

def test_round_trips() -> None:
    raw = bytes.fromhex(ALICE_PRIVATE)
    key = Key(raw)
    assert key.raw == raw and key.hex() == ALICE_PRIVATE
    assert key.base64() == base64.b64encode(raw).decode() and len(key.base64()) == 44
    assert Key.from_base64(key.base64()) == key == Key.from_hex(key.hex())
    assert Key.from_hex(ALICE_PRIVATE.upper()) == key
    copied = Key(bytearray(raw))  # type: ignore[arg-type]  # a bytes-like copy is taken
    assert copied.raw == raw and type(copied.raw) is bytes


def test_rfc7748_public_keys() -> None:
    assert Key.from_hex(ALICE_PRIVATE).public() == Key.from_hex(ALICE_PUBLIC)
    assert Key.from_hex(BOB_PRIVATE).public() == Key.from_hex(BOB_PUBLIC)
    assert Key.from_hex(ALICE_PRIVATE).public().hex() == ALICE_PUBLIC


def test_public_key_clamps_like_wireguard() -> None:
    """WireGuard clamps a private key where it uses it: the bits clamping sets or clears do
    not change the public key (the RFC vector itself is unclamped)."""
    raw = bytearray.fromhex(ALICE_PRIVATE)
    clamped = bytearray(raw)
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    assert clamped != raw
    other = bytearray(raw)
    other[0] |= 7
    other[31] |= 128
    for variant in (clamped, other):
        assert Key(bytes(variant)).public().hex() == ALICE_PUBLIC
    changed = bytearray(clamped)
    changed[1] ^= 1  # a bit that counts
    assert Key(bytes(changed)).public().hex() != ALICE_PUBLIC


def test_generate() -> None:
    first, second = Key.generate(), Key.generate()
    assert len(first.raw) == 32 and first != second
    assert first.public() != first and first.public() == Key(first.raw).public()


def test_equality_and_hash() -> None:
    a, b = Key.from_hex(ALICE_PRIVATE), Key.from_hex(ALICE_PRIVATE)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Key.from_hex(BOB_PRIVATE) and a != a.raw and a != a.hex()


def test_repr_reveals_nothing_of_the_key() -> None:
    for key in (Key.from_hex(ALICE_PRIVATE), Key.from_hex(BOB_PUBLIC)):
        shown = repr(key)
        assert shown.startswith("Key(")
        for text in (key.hex(), key.base64()):
            for start in range(0, len(text) - 6):
                assert text[start: start + 6] not in shown  # not even a part
    assert repr(Key.from_hex(ALICE_PRIVATE)) != repr(Key.from_hex(BOB_PRIVATE))


SECRET = base64.b64encode(bytes.fromhex(ALICE_PRIVATE)).decode()


@pytest.mark.parametrize(("text", "expected"), [
    ("not base64 at all!", "not base64"),
    (SECRET[:-1], "not base64"),  # padding missing
    (SECRET[:20] + "*" + SECRET[21:], "not base64"),
    (SECRET[:20] + " " + SECRET[20:], "not base64"),
    (base64.b64encode(bytes.fromhex(ALICE_PRIVATE)[:31]).decode(), "decodes to 31 bytes"),
    (base64.b64encode(bytes.fromhex(ALICE_PRIVATE) + b"\0").decode(), "decodes to 33 bytes"),
    ("", "decodes to 0 bytes"),
], ids=["garbage", "no-padding", "bad-char", "inner-space", "31-bytes", "33-bytes", "empty"])
def test_bad_base64(text: str, expected: str) -> None:
    with pytest.raises(BadKeyError) as info:
        Key.from_base64(text, what="peer key of node-3")
    message = str(info.value)
    assert expected in message and message.startswith("peer key of node-3: ")
    if text:
        assert text not in message and text[:12] not in message
    assert isinstance(info.value, ConfigError)


def test_from_base64_needs_text() -> None:
    with pytest.raises(BadKeyError, match="must be a base64 string, got bytes"):
        Key.from_base64(SECRET.encode())  # type: ignore[arg-type]


def test_from_base64_strips_surrounding_whitespace() -> None:
    assert Key.from_base64(f"  {SECRET}\n") == Key.from_hex(ALICE_PRIVATE)


@pytest.mark.parametrize("text", [
    "zz" * 32, ALICE_PRIVATE[:-2], ALICE_PRIVATE + "00", ALICE_PRIVATE[:-1], "",
], ids=["not-hex", "31-bytes", "33-bytes", "odd", "empty"])
def test_bad_hex(text: str) -> None:
    with pytest.raises(BadKeyError) as info:
        Key.from_hex(text)
    if text:
        assert text[:16] not in str(info.value)


def test_wrong_raw_length() -> None:
    for raw in (b"", bytes(31), bytes(33)):
        with pytest.raises(BadKeyError, match=f"32 bytes, got {len(raw)}"):
            Key(raw)


# --- the key file -----------------------------------------------------------------------------

def test_load_or_create_makes_the_file(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "run" / "flannel" / "wgkey"
    key, created = keys.load_or_create(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    content = path.read_bytes()
    assert content == key.base64().encode() and len(content) == 44 and b"\n" not in content
    assert sorted(p.name for p in path.parent.iterdir()) == ["wgkey"]  # no temporary left


def test_load_or_create_reuses_the_key(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    key, created = keys.load_or_create(path)
    again, created_again = keys.load_or_create(path)
    assert (created, created_again) == (True, False)
    assert again == key and again.public() == key.public()


@pytest.mark.parametrize("content", [SECRET, SECRET + "\n", SECRET + "\r\n"],
                         ids=["go-no-newline", "newline", "crlf"])
def test_go_written_file_is_accepted(tmp_path: Path, content: str) -> None:
    path = tmp_path / "wgkey"
    path.write_bytes(content.encode())
    path.chmod(0o400)
    assert keys.load_or_create(path) == (Key.from_hex(ALICE_PRIVATE), False)
    assert path.read_bytes() == content.encode()  # left as it is


@pytest.mark.parametrize("content", [
    "CORRUPTED-CONTENT-0123456789",
    SECRET[:30],
    base64.b64encode(bytes(range(16))).decode(),
    "",
], ids=["garbage", "cut-short", "16-bytes", "empty"])
def test_corrupt_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "wgkey"
    path.write_text(content)
    with pytest.raises(BadKeyError) as info:
        keys.load_or_create(path)
    message = str(info.value)
    assert str(path) in message and "delete the file" in message
    if content:
        assert content not in message and content[:10] not in message
    assert path.read_text() == content  # not overwritten


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    path.mkdir()
    with pytest.raises(BadKeyError, match=f"cannot read the WireGuard private key file {path}: "
                       "Is a directory"):
        keys.load_or_create(path)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff" * 44)
    with pytest.raises(BadKeyError, match="UnicodeDecodeError") as info:
        keys.load_or_create(binary)
    assert "\\xff" not in str(info.value)


def test_key_file_path_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WIREGUARD_KEY_FILE", raising=False)
    assert keys.key_file_path() == Path("/run/flannel/wgkey")
    monkeypatch.setenv("WIREGUARD_KEY_FILE", "")
    assert keys.key_file_path() == Path("/run/flannel/wgkey")
    path = tmp_path / "elsewhere" / "key"
    monkeypatch.setenv("WIREGUARD_KEY_FILE", str(path))
    assert keys.key_file_path() == path
    key, created = keys.load_or_create()
    assert created and path.read_text() == key.base64()


def test_another_writer_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file appears between our read and our write: we use the other process's key."""
    path = tmp_path / "wgkey"
    theirs = Key.from_hex(BOB_PRIVATE)
    real_write = keys._write

    def racing_write(p: Path, key: Key) -> bool:
        assert real_write(p, theirs)  # the other process
        return real_write(p, key)  # ours, second: must lose

    monkeypatch.setattr(keys, "_write", racing_write)
    assert keys.load_or_create(path) == (theirs, False)
    assert path.read_text() == theirs.base64()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wgkey"]


def test_stale_temporary_of_the_same_pid(tmp_path: Path) -> None:
    """A temporary left by a crashed run with the same pid (a container's PID 1, /run/flannel
    on the host) does not stop a start (it once did: the name was only the pid)."""
    path = tmp_path / "wgkey"
    (tmp_path / f".wgkey.{os.getpid()}.tmp").write_text("half")
    key, created = keys.load_or_create(path)
    assert created and path.read_text() == key.base64()
