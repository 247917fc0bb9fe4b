"""key_slot must number slots exactly as Redis Cluster does (CRC16-XMODEM % 16384)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelfarm.partition import NSLOTS, key_slot


def crc16_xmodem(data: bytes) -> int:
    """A bit-by-bit CRC16-XMODEM (poly 0x1021, init 0), independent of binascii."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc_check_value() -> None:
    # "123456789" is the standard CRC check input; XMODEM's check value is 0x31C3.
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert key_slot("123456789") == 0x31C3 % NSLOTS == 12739


@pytest.mark.parametrize(
    ("key", "slot"),
    [("foo", 12182), ("bar", 5061), ("hello", 866), ("somekey", 11058), ("", 0)],
)
def test_known_redis_cluster_slots(key: str, slot: int) -> None:
    assert key_slot(key) == slot
    assert key_slot(key.encode()) == slot


def test_str_is_hashed_as_utf8() -> None:
    assert key_slot("volumé") == key_slot("volumé".encode())
    assert key_slot("volumé") != key_slot("volumé".encode("latin-1"))


def test_lone_surrogates_hash_instead_of_raising() -> None:
    # Names decoded with surrogateescape carry lone surrogates; they must still route.
    key = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert key_slot(key) == crc16_xmodem(key.encode("utf-8", "surrogatepass")) % NSLOTS


def test_non_key_types_are_rejected() -> None:
    with pytest.raises(TypeError):
        key_slot(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        key_slot(None)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_matches_reference_crc_for_any_bytes(key: bytes) -> None:
    slot = key_slot(key)
    assert slot == crc16_xmodem(key) % NSLOTS
    assert 0 <= slot < NSLOTS


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=32))
def test_str_and_its_utf8_bytes_share_a_slot(key: str) -> None:
    assert key_slot(key) == key_slot(key.encode("utf-8", "surrogatepass"))
