"""The signing ceremony: a coordinator and t-1 or more participants sign many payloads in
two rounds, with fresh nonces on every attempt.

    coordinator                          participant
    sign.request.A (request)      ──▶    policy check; nonces for every payload
                                  ◀──    sign.commit.A (commitments) | sign.decline.A
    sign.package.A (signer set)   ──▶    policy check again; guard; shares
                                  ◀──    sign.share.A (signature shares)
    aggregate; on a bad share or a silent signer: blame, exclude, attempt A+1
    sign.result (signatures)      ──▶    verify

The coordinator proceeds with the first t-1 participants that commit. A participant signs a
request id once, one way: the content it signed is recorded before the shares leave.
Nonces live in memory only and are spent by their single use.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from appliance.frost import (
    FaultyParticipantError,
    FrostError,
    InvalidSignatureSharesError,
    KeyShare,
    SignatureShare,
    SigningCommitments,
    SigningNonces,
    SigningPackage,
    aggregate,
    commit,
    sign,
    signing_key,
    verify_signature_share,
)
from appliance.mesh.envelope import open_envelope
from appliance.store import StoreError
from appliance.strictjson import StrictObject, as_hex, as_integer, as_list, hex_of

from .base import HEX_ITEM, KIB, Blame, Ceremony, CeremonyFailed, MalformedPayload, NodeServices
from .requests import MAX_PAYLOADS, POLICIES, SigningRefused, SigningRequest

__all__ = [
    "SIGNING_ROUND",
    "SigningCoordinator",
    "SigningParticipant",
    "check_policy",
    "judge_share_blame",
    "signing_round_limits",
]

SELECTION_GRACE = 0.05  # seconds to wait for slower participants once enough committed
DECLINE_REASON = 500  # characters of a decline's reason that are sent
SIGNING_ROUND = re.compile(r"sign\.(request|commit|decline|package|share)\.([1-9][0-9]{0,4})")


def signing_round_limits(parties: int, message_limit: int) -> dict[str, int]:
    """The largest payload of each signing round, for MAX_PAYLOADS payloads among n parties.
    A request (kind, facts and payloads: a payout's facts alone can approach a few MiB) and
    a package (every signer's commitments) take what the mesh takes (`message_limit`)."""
    pair = 2 * HEX_ITEM
    return {
        "request": message_limit,
        "package": min(message_limit, KIB + parties * (MAX_PAYLOADS * pair + HEX_ITEM)),
        "commit": KIB + MAX_PAYLOADS * pair,  # a hiding and a binding commitment per payload
        "decline": 4 * KIB,  # a reason, at most DECLINE_REASON characters (escaped)
        "share": KIB + MAX_PAYLOADS * HEX_ITEM,
        "result": KIB + MAX_PAYLOADS * 2 * HEX_ITEM,  # a 64-byte signature per payload
    }


def check_policy(node: Any, request: SigningRequest) -> None:
    blocked = node.signing_blocked()
    if blocked is not None:
        raise SigningRefused(blocked)
    policy = getattr(node, "policies", POLICIES).get(request.kind)
    if policy is None:
        raise SigningRefused(f"no signing policy for request kind {request.kind!r}")
    policy(node, request)


class _SigningCeremony(Ceremony):
    kind = "sign"
    # The rounds this role takes from its peers, by name without the attempt.
    takes: tuple[str, ...] = ()

    def __init__(self, node: NodeServices, ceremony_id: str, role: str, request: SigningRequest):
        super().__init__(node, ceremony_id, role, request.request_id)
        self.request = request
        self.shares: dict[str, KeyShare] = {}
        # Every retry leaves out at least one participant: at most n - t + 1 attempts.
        self.max_attempts = len(self.parties)
        self.limits = signing_round_limits(len(self.parties), self.config.max_message_bytes)

    def takes_from(self, sender: int) -> bool:
        """Whether `sender` has a part in this ceremony towards this node."""
        raise NotImplementedError

    def round_limit(self, round_name: str, sender: int) -> int | None:
        if sender == self.me or not self.takes_from(sender):
            return None
        if round_name == "sign.result":
            name = "result"
        else:
            numbered = SIGNING_ROUND.fullmatch(round_name)
            if numbered is None or int(numbered[2]) > self.max_attempts:
                return None
            name = numbered[1]
        return self.limits[name] if name in self.takes else None

    def open_shares(self) -> None:
        for key in self.request.keys:
            self.shares[key] = self.node.open_share(key)

    def close_shares(self) -> None:
        for share in self.shares.values():
            share.wipe()
        self.shares.clear()

    def suite_of(self, key: str) -> Any:
        return self.shares[key].suite

    def nonces(self) -> list[SigningNonces]:
        return [commit(self.shares[p.key]) for p in self.request.payloads]

    def packages(self, commitments: dict[int, list[tuple[bytes, bytes]]]) -> list[SigningPackage]:
        return [
            SigningPackage.create(
                self.suite_of(payload.key),
                payload.message,
                [
                    SigningCommitments(signer, *pairs[index])
                    for signer, pairs in commitments.items()
                ],
                payload.tweaks,
            )
            for index, payload in enumerate(self.request.payloads)
        ]

    def guard(self) -> None:
        """Record what this node signs under the request id, before any share leaves."""
        try:
            self.node.store.guard_signing(
                self.request.request_id, self.request.kind, self.request.content_hash, self.id
            )
        except StoreError as exc:
            raise SigningRefused(str(exc)) from exc

    def sign_all(
        self, packages: list[SigningPackage], nonces: list[SigningNonces]
    ) -> list[SignatureShare]:
        shares = [
            sign(package, nonce, self.shares[payload.key])
            for package, nonce, payload in zip(packages, nonces, self.request.payloads, strict=True)
        ]
        self.node.audit(
            "signing.shares-released", "success",
            f"released {len(shares)} signature share(s) for request {self.request.request_id}",
            ceremony=self.id, request=self.request.request_id, kind=self.request.kind,
        )  # fmt: skip
        return shares

    def verify_signatures(self, signatures: list[bytes]) -> bool:
        if len(signatures) != len(self.request.payloads):
            return False
        for payload, signature in zip(self.request.payloads, signatures, strict=True):
            public = self.shares[payload.key].public
            key = signing_key(public, payload.tweaks).key
            if not public.suite.verify(key, payload.message, signature):
                return False
        return True


def _pairs(value: Any, path: str) -> list[tuple[bytes, bytes]]:
    def pair(item: Any, where: str) -> tuple[bytes, bytes]:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError("must be [hiding, binding]")
        return as_hex(item[0], where, max_size=33), as_hex(item[1], where, max_size=33)

    return as_list(pair, 1000)(value, path)


def _encode_pairs(nonces: list[SigningNonces]) -> list[list[str]]:
    return [[n.commitments.hiding.hex(), n.commitments.binding.hex()] for n in nonces]


class SigningCoordinator(_SigningCeremony):
    """Drives a signing request from this node, which signs as one of the signers."""

    takes = ("commit", "decline", "share")

    def __init__(self, node: NodeServices, ceremony_id: str, request: SigningRequest) -> None:
        super().__init__(node, ceremony_id, "coordinator", request)

    def takes_from(self, sender: int) -> bool:
        pool = self.request.signers or self.parties
        return sender in pool

    def _aggregate(
        self,
        packages: list[SigningPackage],
        signers: list[int],
        shares: dict[int, list[SignatureShare]],
    ) -> list[bytes]:
        return [
            aggregate(
                package,
                [shares[s][index] for s in signers],
                self.shares[payload.key].public,
            )
            for index, (package, payload) in enumerate(
                zip(packages, self.request.payloads, strict=True)
            )
        ]

    async def _commitments(
        self, attempt: int, asked: list[int], needed: int
    ) -> tuple[dict[int, list[tuple[bytes, bytes]]], dict[int, str], list[Blame]]:
        """Commitments of `needed` participants, preferring the lowest identifiers.

        Returns as soon as the `needed` lowest-numbered participants that can still answer
        have committed; waits a short grace for lower-numbered ones once enough have, and
        at most one round. So a live cluster always picks the same signers.
        """
        deadline = self.deadline()
        commits: dict[int, list[tuple[bytes, bytes]]] = {}
        declined: dict[int, str] = {}
        blamed: list[Blame] = []
        seen: set[int] = set()
        while time.monotonic() < deadline:
            round_commit = self.inbox.get(f"sign.commit.{attempt}")
            round_decline = self.inbox.get(f"sign.decline.{attempt}")
            for sender, envelope in round_commit.items():
                if sender in seen or sender not in asked:
                    continue
                seen.add(sender)
                try:
                    fields = StrictObject(_json(envelope.payload), "commit", MalformedPayload)
                    pairs = fields.take("commitments", _pairs)
                    fields.done()
                    if len(pairs) != len(self.request.payloads):
                        raise MalformedPayload("one commitment pair per payload expected")
                    commits[sender] = pairs
                except (MalformedPayload, ValueError) as exc:
                    blamed.append(Blame(sender, f"malformed commitments: {exc}"))
            for sender, envelope in round_decline.items():
                if sender in seen or sender not in asked:
                    continue
                seen.add(sender)
                declined[sender] = str(_json(envelope.payload).get("reason", "declined"))[:200]
            if seen >= set(asked):
                break
            if len(commits) >= needed:
                chosen_top = sorted(commits)[needed - 1]
                if all(p in seen for p in asked if p < chosen_top):
                    break  # nobody who could still answer would be preferred
                deadline = min(deadline, time.monotonic() + SELECTION_GRACE)
            await self.inbox.wait(deadline)
        chosen = dict(sorted(commits.items())[:needed])
        return chosen, declined, blamed

    async def execute(self) -> dict[str, Any]:
        request = self.request
        try:
            check_policy(self.node, request)
        except SigningRefused as exc:
            raise CeremonyFailed(f"refused by this node: {exc}") from exc
        self.open_shares()
        try:
            return await self._attempts()
        finally:
            self.close_shares()

    async def _attempts(self) -> dict[str, Any]:
        request = self.request
        t = max(s.threshold for s in self.shares.values())
        pool = list(request.signers) if request.signers else list(self.parties)
        if self.me not in pool:
            raise CeremonyFailed("the coordinator must be one of the requested signers")
        excluded: dict[int, str] = {}
        blamed: list[Blame] = []
        missing: set[int] = set()
        declined: dict[int, str] = {}
        attempt = 0
        while True:
            attempt += 1
            candidates = [p for p in pool if p not in excluded]
            if len(candidates) < t or attempt > self.max_attempts:
                raise CeremonyFailed(
                    f"cannot reach the threshold {t}"
                    + (f"; declined: {declined}" if declined else ""),
                    missing=missing,
                    blamed=blamed,
                )
            others = [p for p in candidates if p != self.me]
            request_raw = self.broadcast(
                others, f"sign.request.{attempt}", {"request": request.to_json()}
            )
            my_nonces = self.nonces()
            commits, refused, bad = await self._commitments(attempt, others, t - 1)
            blamed += bad
            declined.update(refused)
            for b in bad:
                excluded[b.participant] = b.reason
            for p in refused:
                excluded[p] = "declined"
            if len(commits) < t - 1:
                silent = [p for p in others if p not in commits and p not in excluded]
                missing.update(silent)
                raise CeremonyFailed(
                    f"only {len(commits) + 1} of the {t} signers needed committed"
                    + (f"; declined: {declined}" if declined else ""),
                    missing=missing,
                    blamed=blamed,
                )
            signers = sorted([self.me, *commits])
            pairs = {self.me: [(n.commitments.hiding, n.commitments.binding) for n in my_nonces]}
            pairs.update(commits)
            pairs = dict(sorted(pairs.items()))
            package_payload = {
                "signers": signers,
                "commitments": {str(s): [[h.hex(), b.hex()] for h, b in pairs[s]] for s in signers},
            }
            package_raw = self.broadcast(signers, f"sign.package.{attempt}", package_payload)
            try:
                packages = self.packages(pairs)
            except FrostError as exc:
                culprit = getattr(exc, "participant", None)
                if culprit is None:
                    raise CeremonyFailed(f"signing package rejected: {exc}") from exc
                blamed.append(Blame(culprit, str(exc)))
                excluded[culprit] = str(exc)
                continue
            try:
                self.guard()
            except SigningRefused as exc:
                raise CeremonyFailed(f"refused by this node: {exc}") from exc
            mine = self.sign_all(packages, my_nonces)
            shares_by_signer: dict[int, list[SignatureShare]] = {self.me: mine}
            participants = [s for s in signers if s != self.me]
            replies, bad = await self.gather(
                f"sign.share.{attempt}", participants, _share_decoder(len(packages))
            )
            blamed += bad
            for b in bad:
                excluded[b.participant] = b.reason
            for sender, values in replies.items():
                shares_by_signer[sender] = [SignatureShare(sender, v) for v in values]
            silent = [s for s in participants if s not in replies and s not in excluded]
            if silent:
                missing.update(silent)
                for s in silent:
                    excluded[s] = "no signature share before the deadline"
                continue
            if bad:
                continue
            try:
                signatures = self._aggregate(packages, signers, shares_by_signer)
            except InvalidSignatureSharesError as exc:
                for culprit in exc.participants:
                    share_raw = self.inbox.get(f"sign.share.{attempt}")[culprit].raw
                    evidence = {
                        "request": request_raw.hex(),
                        "package": package_raw.hex(),
                        "share": share_raw.hex(),
                    }
                    blame = Blame(culprit, "invalid signature share", evidence)
                    blamed.append(blame)
                    self.name_culprit(blame)
                    excluded[culprit] = "invalid signature share"
                    # Every party checks the evidence itself and names the culprit too.
                    self.broadcast(self.parties, "sign.blame", evidence)
                continue
            self.broadcast(
                participants,
                "sign.result",
                {"signatures": [s.hex() for s in signatures]},
                durable=False,  # informational; written with the ceremony's outcome
            )
            return {
                "request_id": request.request_id,
                "kind": request.kind,
                "signers": signers,
                "attempts": attempt,
                "signatures": [s.hex() for s in signatures],
                "missing": sorted(missing),
                "blamed": [{"participant": b.participant, "reason": b.reason} for b in blamed],
            }


def _json(payload: bytes) -> Any:
    return json.loads(payload)


def _share_decoder(count: int) -> Any:
    def decode(document: Any, envelope: Any) -> list[int]:
        fields = StrictObject(document, "shares", MalformedPayload)
        values = fields.take("shares", as_list(lambda v, p: as_hex(v, p, 32), 1000))
        fields.done()
        if len(values) != count:
            raise MalformedPayload("one share per payload expected")
        return [int.from_bytes(v, "big") for v in values]

    return decode


class SigningParticipant(_SigningCeremony):
    """Answers a coordinator's request: commits, checks, signs once, verifies the result."""

    takes = ("request", "package", "result")

    def __init__(
        self, node: NodeServices, ceremony_id: str, coordinator: int, request: SigningRequest
    ) -> None:
        super().__init__(node, ceremony_id, "participant", request)
        self.coordinator = coordinator

    def takes_from(self, sender: int) -> bool:
        return sender == self.coordinator

    def _decline(self, attempt: int, reason: str) -> None:
        payload = {"reason": reason[:DECLINE_REASON]}
        self.send(self.coordinator, f"sign.decline.{attempt}", payload)
        self.node.audit(
            "signing.refused", "refused", f"refused request {self.request.request_id}: {reason}",
            ceremony=self.id, request=self.request.request_id, kind=self.request.kind,
        )  # fmt: skip

    async def execute(self) -> dict[str, Any]:
        try:
            check_policy(self.node, self.request)
        except SigningRefused as exc:
            self._decline(1, str(exc))
            raise CeremonyFailed(f"declined: {exc}") from exc
        self.open_shares()
        try:
            return await self._serve()
        finally:
            self.close_shares()

    async def _serve(self) -> dict[str, Any]:
        attempt = 0
        released = False
        while True:
            attempt = self._latest_attempt(attempt)
            if attempt == 0:
                raise CeremonyFailed("the coordinator sent no request")
            nonces = self.nonces()
            self.send(
                self.coordinator, f"sign.commit.{attempt}", {"commitments": _encode_pairs(nonces)}
            )
            outcome = await self._next(attempt)
            if outcome is None:
                raise CeremonyFailed("the coordinator went silent", missing=[self.coordinator])
            kind, envelope = outcome
            if kind == "request":
                continue  # a new attempt: these nonces are dropped unused
            if kind == "result":
                return self._result(envelope, released)
            # kind == "package"
            try:
                signers, commitments = _decode_package(envelope.payload, self.me, self.parties)
                if commitments[self.me] != [
                    (n.commitments.hiding, n.commitments.binding) for n in nonces
                ]:
                    raise MalformedPayload("the package carries other commitments for this node")
                t = max(s.threshold for s in self.shares.values())
                if len(signers) < t:
                    raise MalformedPayload(f"{len(signers)} signers cannot reach {t}")
                packages = self.packages(commitments)
                check_policy(self.node, self.request)
                self.guard()
                shares = self.sign_all(packages, nonces)
            except SigningRefused as exc:
                self._decline(attempt, str(exc))
                raise CeremonyFailed(f"declined: {exc}") from exc
            except (MalformedPayload, FrostError, ValueError) as exc:
                raise CeremonyFailed(
                    f"bad signing package from the coordinator: {exc}",
                    blamed=[Blame(self.coordinator, f"bad signing package: {exc}")],
                ) from exc
            released = True
            self.send(
                self.coordinator,
                f"sign.share.{attempt}",
                {"shares": [s.share.to_bytes(32, "big").hex() for s in shares]},
            )
            outcome = await self._next(attempt, after_shares=True)
            if outcome is None:
                return {
                    "request_id": self.request.request_id,
                    "released_shares": True,
                    "result": "unknown",
                }
            kind, envelope = outcome
            if kind == "result":
                return self._result(envelope, released)

    def _latest_attempt(self, current: int) -> int:
        attempt = current
        while self.inbox.get(f"sign.request.{attempt + 1}").get(self.coordinator):
            attempt += 1
            envelope = self.inbox.get(f"sign.request.{attempt}")[self.coordinator]
            try:
                again = SigningRequest.from_json(_json(envelope.payload)["request"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CeremonyFailed(
                    f"attempt {attempt}'s request is malformed: {exc}",
                    blamed=[Blame(self.coordinator, f"sent a malformed request: {exc}")],
                ) from exc
            if again != self.request:
                raise CeremonyFailed(
                    "the coordinator changed the request between attempts",
                    blamed=[Blame(self.coordinator, "changed the request between attempts")],
                )
        return attempt

    async def _next(self, attempt: int, after_shares: bool = False) -> tuple[str, Any] | None:
        """Wait for the package of this attempt, a later attempt, or the result."""
        deadline = self.deadline(3.0)
        while time.monotonic() < deadline:
            result = self.inbox.get("sign.result").get(self.coordinator)
            if result is not None:
                return "result", result
            if self.inbox.get(f"sign.request.{attempt + 1}").get(self.coordinator):
                return "request", None
            if not after_shares:
                package = self.inbox.get(f"sign.package.{attempt}").get(self.coordinator)
                if package is not None:
                    return "package", package
            await self.inbox.wait(deadline)
        return None

    def _result(self, envelope: Any, released: bool) -> dict[str, Any]:
        fields = StrictObject(_json(envelope.payload), "result", MalformedPayload)
        signatures = fields.take(
            "signatures", as_list(lambda v, p: as_hex(v, p, max_size=65), 1000)
        )
        fields.done()
        if not self.verify_signatures(signatures):
            raise CeremonyFailed(
                "the coordinator announced signatures that do not verify",
                blamed=[Blame(self.coordinator, "announced invalid signatures")],
            )
        return {
            "request_id": self.request.request_id,
            "released_shares": released,
            "signatures": [s.hex() for s in signatures],
        }


def _decode_package(
    payload: bytes, me: int, parties: list[int]
) -> tuple[list[int], dict[int, list[tuple[bytes, bytes]]]]:
    fields = StrictObject(_json(payload), "package", MalformedPayload)
    signers = fields.take("signers", as_list(lambda v, p: as_integer(v, p, 1, 65535), 256))
    commitments_value = fields.take("commitments", lambda v, p: v)
    fields.done()
    if sorted(set(signers)) != signers or me not in signers or not set(signers) <= set(parties):
        raise MalformedPayload("signer set is not a sorted set of parties including this node")
    if not isinstance(commitments_value, dict) or sorted(commitments_value) != sorted(
        map(str, signers)
    ):
        raise MalformedPayload("commitments must be given for exactly the signers")
    commitments = {int(k): _pairs(v, f"commitments.{k}") for k, v in commitments_value.items()}
    return signers, dict(sorted(commitments.items()))


def judge_share_blame(node: NodeServices, coordinator: int, evidence: Any) -> Blame:
    """Check a coordinator's claim that a signer sent a bad share, from the signed envelopes
    alone: the request and package signed by the coordinator, the share by the signer.
    Names the signer if its share is invalid, the coordinator if the claim is false."""
    fields = StrictObject(evidence, "blame", MalformedPayload)
    raws = {k: fields.take(k, hex_of(max_size=1 << 20)) for k in ("request", "package", "share")}
    fields.done()
    request_env = open_envelope(raws["request"])
    package_env = open_envelope(raws["package"])
    share_env = open_envelope(raws["share"])
    ceremony = request_env.ceremony_id
    attempt = request_env.round.rsplit(".", 1)[-1]
    config = node.config
    if not (
        request_env.sender == package_env.sender == coordinator
        and package_env.ceremony_id == share_env.ceremony_id == ceremony
        and request_env.round == f"sign.request.{attempt}"
        and package_env.round == f"sign.package.{attempt}"
        and share_env.round == f"sign.share.{attempt}"
        and request_env.signed_by(config.party(coordinator).identity_public_key)
        and package_env.signed_by(config.party(coordinator).identity_public_key)
        and share_env.signed_by(config.party(share_env.sender).identity_public_key)
    ):
        return Blame(coordinator, "blamed a signer without valid signed evidence")
    request = SigningRequest.from_json(_json(request_env.payload)["request"])
    signers, commitments = _decode_package(
        package_env.payload, share_env.sender, [p.identifier for p in config.parties]
    )
    values = _share_decoder(len(request.payloads))(_json(share_env.payload), share_env)
    culprit = share_env.sender
    for index, payload in enumerate(request.payloads):
        public = node.public_package(payload.key)
        package = SigningPackage.create(
            public.suite,
            payload.message,
            [SigningCommitments(s, *commitments[s][index]) for s in signers],
            payload.tweaks,
        )
        try:
            verify_signature_share(package, SignatureShare(culprit, values[index]), public)
        except FaultyParticipantError:
            return Blame(culprit, "invalid signature share", {"ceremony": ceremony})
    return Blame(coordinator, f"falsely blamed participant {culprit} for its signature share")
