"""What a signing ceremony is asked to sign, and the checks a node runs before it signs.

A `SigningRequest` names its kind, the public facts its kind's policy checks (`detail`),
and the payloads: for each, the key, the exact bytes signed and the public tweaks. Every
node re-derives the payloads from the facts with its own policy before it releases a share;
the coordinator's word is never enough.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.frost import Tweak, tagged_hash, taproot_tweak
from appliance.strictjson import StrictObject, as_bool, as_hex, as_integer, as_list, as_string

from .base import BRIDGE_KEYS, MalformedPayload, canonical

__all__ = [
    "POLICIES",
    "TEST_SIGNING",
    "SigningPayload",
    "SigningPolicy",
    "SigningRefused",
    "SigningRequest",
    "test_signing_request",
]

TEST_SIGNING = "test-signing"
MAX_PAYLOADS = 1000


class SigningRefused(Exception):
    """This node will not sign the request; the message says why."""


@dataclass(frozen=True)
class SigningPayload:
    key: str
    message: bytes
    tweaks: tuple[Tweak, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "message": self.message.hex(),
            "tweaks": [[t.value.to_bytes(32, "big").hex(), t.xonly] for t in self.tweaks],
        }

    @classmethod
    def from_json(cls, value: Any, path: str) -> SigningPayload:
        fields = StrictObject(value, path, MalformedPayload)
        key = fields.take("key", as_string)
        if key not in BRIDGE_KEYS:
            raise MalformedPayload(f"{path}.key: unknown key {key!r}")
        message = fields.take("message", lambda v, p: as_hex(v, p, max_size=4096))

        def tweak(item: Any, where: str) -> Tweak:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError("must be [value, xonly]")
            return Tweak(int.from_bytes(as_hex(item[0], where, 32), "big"), as_bool(item[1], where))

        tweaks = fields.take("tweaks", as_list(tweak, 8))
        fields.done()
        return cls(key, message, tuple(tweaks))


@dataclass(frozen=True)
class SigningRequest:
    request_id: str
    kind: str
    detail: dict[str, Any]
    payloads: tuple[SigningPayload, ...]
    signers: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "kind": self.kind,
            "detail": self.detail,
            "payloads": [p.to_json() for p in self.payloads],
            "signers": list(self.signers) if self.signers is not None else None,
        }

    @classmethod
    def from_json(cls, value: Any, path: str = "request") -> SigningRequest:
        fields = StrictObject(value, path, MalformedPayload)
        request_id = fields.take("request_id", lambda v, p: as_string(v, p, 128))
        kind = fields.take("kind", lambda v, p: as_string(v, p, 64))
        detail = fields.take("detail", lambda v, p: v)
        if not isinstance(detail, dict):
            raise MalformedPayload(f"{path}.detail: must be an object")
        payloads = fields.take("payloads", as_list(SigningPayload.from_json, MAX_PAYLOADS))
        signers_value = fields.take("signers", lambda v, p: v)
        fields.done()
        if not payloads:
            raise MalformedPayload(f"{path}.payloads: empty")
        signers = None
        if signers_value is not None:
            signers = tuple(
                as_list(lambda v, p: as_integer(v, p, 1, 65535), 256)(signers_value, path)
            )
        return cls(request_id, kind, detail, tuple(payloads), signers)

    @property
    def keys(self) -> list[str]:
        return sorted({p.key for p in self.payloads})

    @property
    def content_hash(self) -> bytes:
        """What this node commits to signing under `request_id` (kind, facts, payloads)."""
        body = {"kind": self.kind, "detail": self.detail, "payloads": self.to_json()["payloads"]}
        return hashlib.sha256(canonical(body)).digest()


class PolicyNode(Protocol):
    def group_key(self, key_name: str) -> bytes: ...

    def approved(self, kind: str, content_hash: bytes, now: float) -> bool: ...

    def signing_blocked(self) -> str | None:
        """Why this node signs nothing at the moment (its bitcoind is not synced), if so."""


SigningPolicy = Callable[[PolicyNode, SigningRequest], None]
"""Raises `SigningRefused` unless this node, from its own view, may sign the request."""


def _test_signing_payloads(
    node: PolicyNode, messages: list[bytes], keys: list[str]
) -> tuple[SigningPayload, ...]:
    """Test messages are signed under domain separation, so test signing can never produce
    an attestation or a Bitcoin signature hash."""
    payloads = []
    tweaks = (taproot_tweak(node.group_key("custody")),) if "custody" in keys else ()
    for message in messages:
        if "attestation" in keys:
            payloads.append(SigningPayload("attestation", b"wire-mpc test-signing v1\0" + message))
        if "custody" in keys:
            digest = tagged_hash("wire-mpc/test-signing", message)
            payloads.append(SigningPayload("custody", digest, tweaks))
    return tuple(payloads)


def test_signing_request(
    node: PolicyNode, messages: list[bytes], keys: list[str]
) -> SigningRequest:
    """Sign `messages` with `keys` as a test; the id names the content, so asking again for
    the same test is the same request."""
    detail = {"messages": [m.hex() for m in messages], "keys": sorted(keys)}
    request_id = "test-signing-" + hashlib.sha256(canonical(detail)).hexdigest()[:32]
    return SigningRequest(
        request_id, TEST_SIGNING, detail, _test_signing_payloads(node, messages, sorted(keys))
    )


def message_digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def check_test_signing(node: PolicyNode, request: SigningRequest) -> None:
    if set(request.detail) != {"messages", "keys"}:
        raise SigningRefused("test-signing request carries unexpected facts")
    messages = [bytes.fromhex(str(m)) for m in request.detail["messages"]]
    keys = list(request.detail["keys"])
    if not messages or not keys or not set(keys) <= set(BRIDGE_KEYS) or keys != sorted(set(keys)):
        raise SigningRefused("test-signing request names no message or an unknown key")
    now = time.time()
    for message in messages:
        if not node.approved(TEST_SIGNING, message_digest(message), now):
            raise SigningRefused("the local operator has not asked to sign this test message")
    if request.payloads != _test_signing_payloads(node, messages, keys):
        raise SigningRefused("test-signing payloads differ from the ones this node derives")


POLICIES: dict[str, SigningPolicy] = {TEST_SIGNING: check_test_signing}
"""The signing policy of each request kind; a kind without one is never signed."""
