"""Identifiers: UUIDv7 strings (RFC 9562), time-sortable, made here and nowhere else.

Lexicographic order of the string form follows creation time (millisecond precision; a per-process counter
keeps ids made within the same millisecond increasing), so `ORDER BY id` is a cheap stand-in for age.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def _uuid7_int() -> int:
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _seq += 1
            if _seq >= 1 << 12:  # counter overflow: borrow the next millisecond
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = secrets.randbits(8)  # leave head-room below 4096 for same-ms ids
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (_seq & 0xFFF) << 64  # rand_a used as a monotonic counter
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand_b
    return value


def new_id() -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    return str(uuid.UUID(int=_uuid7_int()))


def id_time_ms(id_: str) -> int:
    """The Unix millisecond timestamp encoded in a UUIDv7 string."""
    return uuid.UUID(id_).int >> 80


def new_message_id() -> str:
    """A webhook message id (`msg_` + 26 sortable base32 characters), stable across delivery retries."""
    return "msg_" + _crockford(_uuid7_int())


_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _crockford(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
