"""The rounds that DKG and refresh share: both deal secret values of both bridge keys to all
n parties, and differ only in what is dealt, how it is checked and what becomes of it.

    P.round1      broadcast: per key the dealer's public commitment (plus what the scheme
                  needs), and an ephemeral point for the private channels
    P.echo        broadcast: the hash of every party's round-1 envelope as received; any
                  disagreement stops the ceremony before a secret is sent, and the signed
                  envelopes are exchanged (P.evidence) to name who equivocated or lied
    P.round2      point-to-point: the recipient's values of both keys, sealed for it alone
    P.complaints  broadcast: every value that did not open or did not match its dealer's
                  commitment, with proof; the accused or a false accuser is named
    P.verify-*    every party signs a test message with both resulting keys; all verify

P is "dkg" or "refresh". Subclasses say what is dealt and what happens to the shares.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from appliance.frost import (
    FaultyParticipantError,
    InvalidSignatureSharesError,
    KeyShare,
    SignatureShare,
    SigningCommitments,
    SigningPackage,
    aggregate,
    commit,
    sign,
    signing_key,
    taproot_tweak,
)
from appliance.mesh.envelope import Envelope, EnvelopeError, open_envelope
from appliance.strictjson import StrictObject, as_hex, as_integer, as_list, hex_of

from .base import (
    BRIDGE_KEYS,
    ENVELOPE_OVERHEAD,
    HEX_ITEM,
    KIB,
    Blame,
    Ceremony,
    CeremonyFailed,
    MalformedPayload,
    NodeServices,
)
from .channel import (
    ChannelError,
    ephemeral_key,
    open_share,
    prove_shared_point,
    seal_share,
    shared_point,
    verify_shared_point,
)

__all__ = ["KEY_NAMES", "Dealing", "KeyCeremony", "key_round_limits", "verification_message"]

KEY_NAMES = list(BRIDGE_KEYS)


def verification_message(
    prefix: str, cluster_id: str, ceremony_id: str, group_keys: dict[str, bytes]
) -> bytes:
    """What every party signs with both keys before they are trusted."""
    keys = b"".join(group_keys[name] for name in KEY_NAMES)
    return hashlib.sha256(
        f"wire-mpc {prefix} verification v1\0{cluster_id}\0{ceremony_id}\0".encode() + keys
    ).digest()


class Dealing:
    """One party's round-1 broadcast: its ephemeral point and, per key, what it published."""

    def __init__(self, sender: int, ephemeral: bytes, keys: dict[str, Any]) -> None:
        self.sender = sender
        self.ephemeral = ephemeral
        self.keys = keys


def key_round_limits(parties: int, threshold: int) -> dict[str, int]:
    """The largest payload of each round both key ceremonies run, for n parties and
    threshold t: sizes are counted in hex items (`HEX_ITEM`), with room to spare."""
    n, t = parties, threshold
    # Per key t commitments and a proof (two items); the parties; and in 8 KiB the rest:
    # the ephemeral point, a rotation's epochs, digests and reason (500 characters, escaped).
    round1 = 8 * KIB + 2 * (t + 2) * HEX_ITEM + 8 * n
    round2_envelope = KIB + ENVELOPE_OVERHEAD  # one ciphertext of both keys' values
    return {
        "round1": round1,
        "echo": KIB + n * HEX_ITEM,  # a digest per party
        "evidence": KIB + n * (2 * (round1 + ENVELOPE_OVERHEAD) + HEX_ITEM),  # round-1 envelopes
        "round2": KIB,
        "complaints": KIB + n * (2 * round2_envelope + 4 * HEX_ITEM),  # envelope, point, proof
        "verify-commit": KIB + 4 * HEX_ITEM,
        "verify-share": KIB + 2 * HEX_ITEM,
    }


class KeyCeremony(Ceremony):
    """A dealing of both keys among all parties; subclasses fill in the scheme."""

    prefix = "keygen"

    def __init__(self, node: NodeServices, ceremony_id: str) -> None:
        super().__init__(node, ceremony_id, "peer")
        self.others = [p for p in self.parties if p != self.me]
        self.threshold = self.config.threshold
        self.channel_context = f"{self.config.cluster_id}\0{ceremony_id}\0{self.prefix}".encode()
        self.limits = {
            self.round(name): limit
            for name, limit in {
                **key_round_limits(len(self.parties), self.threshold),
                **self.more_rounds(),
            }.items()
        }

    def round(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def more_rounds(self) -> dict[str, int]:
        """The rounds of the scheme beyond the shared ones, with their largest payloads."""
        return {}

    def round_limit(self, round_name: str, sender: int) -> int | None:
        return self.limits.get(round_name) if sender in self.others else None

    # -- the scheme (subclasses) -----------------------------------------------------------
    def publish(self) -> dict[str, Any]:
        """Round-1 fields of this party, per key, and the scheme's common fields."""
        raise NotImplementedError

    def read_key(self, name: str, fields: StrictObject, sender: int) -> Any:
        """Decode one key's round-1 fields of `sender` (its public dealing)."""
        raise NotImplementedError

    def read_common(self, fields: StrictObject) -> None:
        """Decode and check the scheme's common round-1 fields."""

    def check_dealings(self, dealings: dict[int, Dealing]) -> None:
        """Checks on every peer's public dealing before anything is dealt to it."""

    def deal(self, name: str, recipient: int) -> int:
        """The secret value of key `name` this party deals to `recipient`."""
        raise NotImplementedError

    def value_matches(self, name: str, dealing: Dealing, recipient: int, value: int) -> bool:
        """Whether `value` is what `dealing` committed to for `recipient`."""
        raise NotImplementedError

    def finish_keys(
        self, dealings: dict[int, Dealing], values: dict[str, dict[int, int]]
    ) -> dict[str, KeyShare]:
        """This party's new shares, from every dealing and the values dealt to it."""
        raise NotImplementedError

    # -- a faulty participant would change these (tests subclass them) --------------------
    def send_round1(self, payload: dict[str, Any]) -> None:
        self.broadcast(self.others, self.round("round1"), payload)

    def value_for(self, name: str, recipient: int, value: int) -> int:
        return value

    def signature_share(self, name: str, share: SignatureShare) -> SignatureShare:
        return share

    # -- the rounds ------------------------------------------------------------------------------
    async def deal_keys(self) -> dict[str, KeyShare]:
        """Round 1 to complaints; returns this party's verified-consistent new shares."""
        ephemeral_secret, ephemeral_point = ephemeral_key()
        payload = self.publish()
        payload["ephemeral"] = ephemeral_point.hex()
        self.send_round1(payload)
        dealings, bad = await self.gather(self.round("round1"), self.others, self._read_dealing)
        missing = self.missing(self.others, dealings)
        if missing or bad:
            raise CeremonyFailed("round 1 is incomplete", missing=missing, blamed=bad)
        mine = self._read_dealing(json.loads(self.own_envelope("round1").payload), None)
        await self._echo_check()
        try:
            self.check_dealings(dealings)
        except FaultyParticipantError as exc:
            raise CeremonyFailed(
                "a round-1 dealing is invalid", blamed=[Blame(exc.participant, exc.reason)]
            ) from exc

        for j in self.others:
            plaintext = b"".join(
                BRIDGE_KEYS[n].group.encode_scalar(self.value_for(n, j, self.deal(n, j)))
                for n in KEY_NAMES
            )
            point = shared_point(ephemeral_secret, dealings[j].ephemeral)
            ciphertext = seal_share(point, self.channel_context, self.me, j, plaintext)
            self.send(j, self.round("round2"), {"recipient": j, "ciphertext": ciphertext.hex()})

        def decode_round2(document: Any, envelope: Envelope) -> bytes:
            fields = StrictObject(document, "round2", MalformedPayload)
            if fields.take("recipient", as_integer) != self.me:
                raise MalformedPayload("addressed to another participant")
            ciphertext = fields.take("ciphertext", hex_of(64 + 16))
            fields.done()
            return ciphertext

        round2, bad = await self.gather(self.round("round2"), self.others, decode_round2)
        missing = self.missing(self.others, round2)
        if missing or bad:
            raise CeremonyFailed("round 2 is incomplete", missing=missing, blamed=bad)

        values: dict[str, dict[int, int]] = {n: {} for n in KEY_NAMES}
        complaints: list[dict[str, Any]] = []
        envelopes = self.inbox.get(self.round("round2"))
        for i, ciphertext in round2.items():
            point = shared_point(ephemeral_secret, dealings[i].ephemeral)
            opened = self._open_values(point, i, self.me, ciphertext, dealings[i])
            if opened is None:
                proof = prove_shared_point(
                    ephemeral_secret, ephemeral_point, dealings[i].ephemeral, point
                )
                complaints.append(
                    {"accused": i, "envelope": envelopes[i].raw, "point": point, "proof": proof}
                )
                continue
            for name, value in opened.items():
                values[name][i] = value
        self.broadcast(
            self.others,
            self.round("complaints"),
            {
                "complaints": [
                    {k: (v.hex() if isinstance(v, bytes) else v) for k, v in c.items()}
                    for c in complaints
                ]
            },
        )
        everyone = dealings | {self.me: mine}
        blamed = self._judge(self.me, complaints, everyone)
        filed, bad = await self.gather(self.round("complaints"), self.others, _decode_complaints)
        missing = self.missing(self.others, filed)
        for complainer, theirs in filed.items():
            blamed += self._judge(complainer, theirs, everyone)
        if missing or bad or blamed:
            raise CeremonyFailed("dealt values were disputed", missing=missing, blamed=bad + blamed)
        return self.finish_keys(dealings, values)

    def _read_dealing(self, document: Any, envelope: Envelope | None) -> Dealing:
        sender = envelope.sender if envelope is not None else self.me
        fields = StrictObject(document, "round1", MalformedPayload)
        ephemeral = fields.take("ephemeral", hex_of(32))
        self.read_common(fields)
        keys = fields.section("keys")
        published = {}
        for name in KEY_NAMES:
            entry = keys.section(name)
            published[name] = self.read_key(name, entry, sender)
            entry.done()
        keys.done()
        fields.done()
        return Dealing(sender, ephemeral, published)

    def own_envelope(self, name: str) -> Envelope:
        """The envelope this node itself sent for a broadcast round (from its transcript)."""
        round_name = self.round(name)
        for row in self.node.store.transcript(self.id):
            if row.direction == "out" and row.round == round_name:
                return open_envelope(row.envelope)
        raise CeremonyFailed(f"own {round_name} envelope is missing from the transcript")

    def _open_values(
        self, point: bytes, sender: int, recipient: int, ciphertext: bytes, dealing: Dealing
    ) -> dict[str, int] | None:
        """The values in a ciphertext if it opens and each matches its dealer's commitment."""
        try:
            plaintext = open_share(point, self.channel_context, sender, recipient, ciphertext)
        except ChannelError:
            return None
        values = {}
        offset = 0
        for name, suite in BRIDGE_KEYS.items():
            size = suite.group.scalar_size
            try:
                value = suite.group.decode_scalar(plaintext[offset : offset + size])
                matches = self.value_matches(name, dealing, recipient, value)
            except ValueError:
                matches = False
            if not matches:
                return None
            values[name] = value
            offset += size
        return values

    def _judge(
        self, complainer: int, complaints: list[dict[str, Any]], dealings: dict[int, Dealing]
    ) -> list[Blame]:
        """Decide each complaint: the accused dealt a bad value, or the complainer lied."""
        blamed = []
        for complaint in complaints:
            accused = complaint["accused"]
            if accused not in dealings or accused == complainer:
                blamed.append(Blame(complainer, "complaint names no other participant"))
                continue
            try:
                envelope: Envelope | None = open_envelope(complaint["envelope"])
            except EnvelopeError:
                envelope = None
            identity = self.config.party(accused).identity_public_key
            if (
                envelope is None
                or envelope.ceremony_id != self.id
                or envelope.round != self.round("round2")
                or envelope.sender != accused
                or not envelope.signed_by(identity)
                or json.loads(envelope.payload).get("recipient") != complainer
            ):
                blamed.append(Blame(complainer, f"complaint against {accused} lacks its envelope"))
                continue
            point = complaint["point"]
            if not verify_shared_point(
                dealings[complainer].ephemeral,
                dealings[accused].ephemeral,
                point,
                complaint["proof"],
            ):
                blamed.append(Blame(complainer, f"complaint against {accused} has a bad proof"))
                continue
            ciphertext = bytes.fromhex(json.loads(envelope.payload)["ciphertext"])
            opened = self._open_values(point, accused, complainer, ciphertext, dealings[accused])
            if opened is None:
                reason = (
                    f"dealt participant {complainer} a value that does not match its commitment"
                )
                blamed.append(Blame(accused, reason, {"envelope": envelope.raw.hex()}))
            else:
                blamed.append(Blame(complainer, f"false complaint against participant {accused}"))
        return blamed

    async def _echo_check(self) -> None:
        """Everyone must have received the same round-1 envelopes, or no secret is sent."""
        envelopes = self.inbox.get(self.round("round1"))
        envelopes[self.me] = self.own_envelope("round1")
        digests = {str(i): hashlib.sha256(e.raw).hexdigest() for i, e in envelopes.items()}
        self.broadcast(self.others, self.round("echo"), {"digests": digests})

        def decode(document: Any, envelope: Envelope) -> dict[str, str]:
            fields = StrictObject(document, "echo", MalformedPayload)
            value = fields.take("digests", lambda v, p: v)
            fields.done()
            if not isinstance(value, dict) or sorted(value) != sorted(digests):
                raise MalformedPayload("echo must hold one digest per participant")
            return {k: as_hex(v, k, 32).hex() for k, v in value.items()}

        echoes, bad = await self.gather(self.round("echo"), self.others, decode)
        missing = self.missing(self.others, echoes)
        if missing or bad:
            raise CeremonyFailed("the echo round is incomplete", missing=missing, blamed=bad)
        disputed = sorted(
            int(x) for x in digests if any(echo[x] != digests[x] for echo in echoes.values())
        )
        if not disputed:
            return
        # Someone saw other envelopes than we did: exchange the signed ones and decide.
        self.broadcast(
            self.others,
            self.round("evidence"),
            {"envelopes": {str(x): envelopes[x].raw.hex() for x in disputed}},
        )

        def decode_evidence(document: Any, envelope: Envelope) -> dict[int, bytes]:
            fields = StrictObject(document, "evidence", MalformedPayload)
            value = fields.take("envelopes", lambda v, p: v)
            fields.done()
            if not isinstance(value, dict):
                raise MalformedPayload("envelopes must be an object")
            return {int(k): as_hex(v, k) for k, v in value.items()}

        evidence, _ = await self.gather(self.round("evidence"), self.others, decode_evidence)
        blamed: list[Blame] = []
        for x in disputed:
            versions = {envelopes[x].raw}
            for shown in evidence.values():
                raw = shown.get(x)
                if raw is not None and self._is_round1_of(x, raw):
                    versions.add(raw)
            if len(versions) > 1:
                blamed.append(
                    Blame(
                        x,
                        "sent different round-1 packages to different participants",
                        {"envelopes": sorted(v.hex() for v in versions)},
                    )
                )
                continue
            true_digest = hashlib.sha256(next(iter(versions))).hexdigest()
            for echoer, echo in echoes.items():
                if echo[str(x)] != true_digest:
                    blamed.append(
                        Blame(echoer, f"echoed a round-1 package of {x} that {x} never signed")
                    )
        raise CeremonyFailed("round-1 packages differ between participants", blamed=blamed)

    def _is_round1_of(self, sender: int, raw: bytes) -> bool:
        try:
            envelope = open_envelope(raw)
        except EnvelopeError:
            return False
        return (
            envelope.cluster_id == self.config.cluster_id
            and envelope.ceremony_id == self.id
            and envelope.round == self.round("round1")
            and envelope.sender == sender
            and envelope.signed_by(self.config.party(sender).identity_public_key)
        )

    async def verification_round(self, shares: dict[str, KeyShare]) -> dict[str, bytes]:
        """All n sign a test message with both keys; every party checks the signatures."""
        group_keys = {name: share.group_key for name, share in shares.items()}
        message = verification_message(self.prefix, self.config.cluster_id, self.id, group_keys)
        tweaks = {"attestation": (), "custody": (taproot_tweak(group_keys["custody"]),)}
        nonces = {name: commit(share) for name, share in shares.items()}
        pairs = {
            n: [c.commitments.hiding.hex(), c.commitments.binding.hex()] for n, c in nonces.items()
        }
        self.broadcast(self.others, self.round("verify-commit"), {"commitments": pairs})

        def decode_commit(document: Any, envelope: Envelope) -> dict[str, tuple[bytes, bytes]]:
            fields = StrictObject(document, "verify-commit", MalformedPayload)
            value = fields.section("commitments")
            result = {}
            for name, suite in BRIDGE_KEYS.items():
                pair = value.take(name, as_list(hex_of(suite.group.element_size), 2))
                if len(pair) != 2:
                    raise MalformedPayload("a commitment pair is two elements")
                result[name] = (pair[0], pair[1])
            value.done()
            fields.done()
            return result

        commits, bad = await self.gather(self.round("verify-commit"), self.others, decode_commit)
        missing = self.missing(self.others, commits)
        if missing or bad:
            raise CeremonyFailed(
                "the verification round is incomplete", missing=missing, blamed=bad
            )
        packages = {}
        for name, share in shares.items():
            entries = [nonces[name].commitments] + [
                SigningCommitments(i, *commits[i][name]) for i in self.others
            ]
            packages[name] = SigningPackage.create(share.suite, message, entries, tweaks[name])
        try:
            mine = {
                name: self.signature_share(name, sign(packages[name], nonces[name], share))
                for name, share in shares.items()
            }
        except FaultyParticipantError as exc:
            raise CeremonyFailed(
                "a verification commitment is invalid", blamed=[Blame(exc.participant, exc.reason)]
            ) from exc
        self.broadcast(
            self.others,
            self.round("verify-share"),
            {"shares": {n: s.share.to_bytes(32, "big").hex() for n, s in mine.items()}},
        )

        def decode_share(document: Any, envelope: Envelope) -> dict[str, int]:
            fields = StrictObject(document, "verify-share", MalformedPayload)
            value = fields.section("shares")
            result = {n: int.from_bytes(value.take(n, hex_of(32)), "big") for n in KEY_NAMES}
            value.done()
            fields.done()
            return result

        replies, bad = await self.gather(self.round("verify-share"), self.others, decode_share)
        missing = self.missing(self.others, replies)
        if missing or bad:
            raise CeremonyFailed(
                "the verification round is incomplete", missing=missing, blamed=bad
            )
        signatures = {}
        blamed: list[Blame] = []
        for name, share in shares.items():
            sig_shares = [mine[name]] + [SignatureShare(i, replies[i][name]) for i in self.others]
            try:
                signatures[name] = aggregate(packages[name], sig_shares, share.public)
            except InvalidSignatureSharesError as exc:
                blamed += [Blame(p, f"invalid {name} verification share") for p in exc.participants]
        if blamed:
            raise CeremonyFailed("the keys failed their verification round", blamed=blamed)
        for name, share in shares.items():
            key = signing_key(share.public, tweaks[name]).key
            if not share.suite.verify(key, message, signatures[name]):
                raise CeremonyFailed(f"the {name} verification signature does not verify")
        return signatures


def _decode_complaints(document: Any, envelope: Envelope) -> list[dict[str, Any]]:
    fields = StrictObject(document, "complaints", MalformedPayload)
    items = fields.take("complaints", lambda v, p: v)
    fields.done()
    if not isinstance(items, list) or len(items) > 256:
        raise MalformedPayload("complaints must be a list")
    out = []
    for index, item in enumerate(items):
        entry = StrictObject(item, f"complaints[{index}]", MalformedPayload)
        out.append(
            {
                "accused": entry.take("accused", lambda v, p: as_integer(v, p, 1, 65535)),
                "envelope": entry.take("envelope", hex_of(max_size=4096)),
                "point": entry.take("point", hex_of(32)),
                "proof": entry.take("proof", hex_of(64)),
            }
        )
        entry.done()
    return out
