"""Idempotent writes, in pure terms: what identifies a request (its fingerprint) and what a
write answered (Posted: the JSON body as it was first sent, and whether this is a replay).

Shared by the ledger (whose posting functions store them under the client's Idempotency-Key),
the registry's writes, the imports and the HTTP lanes, which send the answer as it came.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec


def fingerprint(operation: str, payload: object) -> bytes:
    """What identifies a request for idempotency: the operation and its canonical payload."""
    return hashlib.sha256(operation.encode() + b"\0" + msgspec.json.encode(payload)).digest()


@dataclass(frozen=True, slots=True)
class Posted:
    """What a posting function answered: its JSON body, and whether it was a replay."""

    replayed: bool
    body: bytes
