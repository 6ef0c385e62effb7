"""Burns to withdrawals, and the fee reservoir's consolidation, as one node runs them.

Every node takes burns from the Wire system's feed and verifies each itself; follows the
payout chain and its withdrawals on its own chain view to their confirmations (asking its
peers for the burn ids of links it did not sign, and believing them only if they match the
link's commitment); and applies the payout policy (`appliance.workflows.withdrawal`) to
every proposal it is asked to sign. The lead node also coordinates: it proposes a batch of
queued burns spending the main custody output, has it signed, broadcasts it, replaces it
when it is stuck, and reports paid burns to the Wire system. One withdrawal is open at a
time: the next spends the main output the last one made, once that has confirmed.

Progress is written to SQLite before each external effect — bound before the ceremony,
signed transaction recorded before broadcast, confirmation recorded before the report — and
each step is safe to repeat: after a crash the lead proposes the same withdrawal again (same
inputs, same transaction id), never a second one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from appliance.ceremony.requests import SigningRefused
from appliance.chain.address import AddressError, address_of_script, script_of_address
from appliance.chain.broadcast import BroadcastRefused, broadcast
from appliance.chain.commitment import burns_digest
from appliance.chain.custody import CustodyKey
from appliance.chain.fees import bumped_fee_rate, estimate_fee_rate, is_stuck, relay_fees
from appliance.chain.payout_chain import PayoutChain
from appliance.chain.rpc import BitcoindError, RpcProtocolError
from appliance.chain.service import ChainService
from appliance.chain.transaction import parse_transaction
from appliance.chain.withdrawal import (
    Payout,
    Spendable,
    WithdrawalError,
    build_sweep,
    build_withdrawal,
    spend_exactly,
)
from appliance.config import FeeReservoirConfig, Policy, parse_policy
from appliance.crashpoint import crash_point
from appliance.errors import CommandError
from appliance.store.payout import OPEN, BurnRow, PayoutRecords, WithdrawalRow
from appliance.strictjson import StrictObject
from appliance.wire.burns import BurnPolicy, BurnRecord, BurnRefused, VerifiedBurn, verify_burn
from appliance.wire.feed import BurnFeed, FeedError
from appliance.wire.push import post_json

from .withdrawal import (
    CONSOLIDATION,
    DAY,
    WITHDRAWAL,
    Proposal,
    approval_message,
    check_payout,
    first_proposal,
    payout_request,
    rebuild,
    valid_approvers,
)

if TYPE_CHECKING:
    from appliance.engine import Engine

__all__ = ["Payouts"]

log = logging.getLogger(__name__)

FEED_CURSOR = "burn-feed-cursor"
POLICY = "policy"
APPROVAL_ROUND = "burn.approval"
APPROVAL_SECONDS = 3600
RECORDS_WANTED_ROUND = "payout.records-wanted"
RECORD_ROUND = "payout.record"
RECORDS_PER_REQUEST = 64
ASK_AGAIN_SECONDS = 5.0
UNKNOWN_APPROVALS_PER_PEER = 256  # approvals that may arrive before the burn's feed entry


class Payouts:
    """One node's side of the payout flows; it is also the `PayoutNode` its policy asks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config
        self.records = PayoutRecords(engine.store)
        self.fee_reservoir: FeeReservoirConfig = engine.config.fee_reservoir
        wire = engine.config.wire
        self.feed = BurnFeed(wire.burn_feed_url) if wire.burn_feed_url is not None else None
        self.identity_keys = {p.identifier: p.identity_public_key for p in engine.config.parties}
        self._round = asyncio.Lock()
        self._asked: dict[str, float] = {}  # txid -> when its burn ids were last asked for
        self._answered: dict[tuple[int, str], float] = {}  # (peer, txid) -> when answered

    # -- policy ------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        stored = self.engine.store.flag(POLICY)
        if stored is None:
            return self.config.policy
        return parse_policy(
            StrictObject(json.loads(stored[0]), "policy", ValueError), self.config.policy
        )

    def set_policy(self, changes: dict[str, Any], actor: str) -> dict[str, Any]:
        """An admin's change of this node's policy: validated whole, audited, then stored."""
        before = self.policy
        try:
            after = parse_policy(StrictObject(changes, "policy", ValueError), before)
        except ValueError as exc:
            raise CommandError("bad-request", str(exc)) from exc
        if after.approvals_required > len(self.config.parties):
            raise CommandError(
                "bad-request", f"approvals_required exceeds the {len(self.config.parties)} parties"
            )
        changed = {
            k: [getattr(before, k), v]
            for k, v in after.to_json().items()
            if getattr(before, k) != v
        }
        self.engine.audit(
            "policy.changed",
            "success",
            f"policy changed by {actor}: "
            + (", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "-"),
            actor=actor,
            changes=json.dumps(changed, sort_keys=True),
        )
        self.engine.store.set_flag(POLICY, json.dumps(after.to_json(), sort_keys=True), actor)
        return after.to_json()

    @property
    def fee_bounds(self) -> tuple[float, float]:
        bitcoin = self._bitcoin()
        return bitcoin.config.fee_floor_sat_vb, bitcoin.config.fee_ceiling_sat_vb

    def _bitcoin(self) -> ChainService:
        if self.engine.chain is None:
            raise CommandError("no-bitcoind", "this node has no bitcoind configured")
        return self.engine.chain

    # -- burns in ----------------------------------------------------------------------------
    def burn_policy(self) -> BurnPolicy:
        wire = self.config.wire
        if wire.burn_authority_key is None:
            raise CommandError("no-burn-authority", "wire.burn_authority_key is not configured")
        policy = self.policy
        return BurnPolicy(
            network=self._bitcoin().config.network,
            authority_key=wire.burn_authority_key,
            min_amount_sats=policy.min_burn_sats,
            max_amount_sats=policy.max_withdrawal_sats,
            proof_verifier=wire.proof_verifier,
        )

    def _refused(self, refusal: BurnRefused, source: str) -> None:
        self.engine.audit(
            "burn.refused",
            "refused",
            f"burn {refusal.burn_id} from {source} refused: {refusal.message}",
            burn=refusal.burn_id,
            reason=refusal.reason,
        )

    def _accept(self, burn: VerifiedBurn, entry: dict[str, Any], source: str) -> bool:
        record = burn.record
        if not self.records.queue(record.burn_id, entry, burn.script, record.amount_sats):
            return False
        self.engine.audit(
            "burn.accepted",
            "success",
            f"burn {record.burn_id} of {record.amount_sats} sat to {record.destination} "
            f"verified ({source}) and queued",
            burn=record.burn_id,
            amount=record.amount_sats,
            destination=record.destination,
        )
        return True

    def take_burns(self, entries: Sequence[dict[str, Any]]) -> list[VerifiedBurn]:
        """PayoutNode: each entry verified by this node (a coordinator is not trusted to
        have done it); new ones are queued as if read from the feed."""
        policy = self.burn_policy()
        verified = []
        for entry in entries:
            try:
                burn = verify_burn(entry, policy, lambda _: False)
            except BurnRefused as refusal:
                self._refused(refusal, "a proposal")
                raise SigningRefused(str(refusal)) from refusal
            known = self.records.burn(burn.record.burn_id)
            if known is not None and BurnRecord.from_json(known.entry["record"]) != burn.record:
                raise SigningRefused(
                    f"burn {burn.record.burn_id} differs from the record this node verified"
                )
            if known is None:
                with self.engine.store.transaction():
                    self._accept(burn, entry, "carried by a proposal")
            verified.append(burn)
        return verified

    async def poll_feed(self) -> dict[str, Any]:
        """Read the feed to its end: each entry verified, the good ones queued, the others
        refused and audited; the cursor is stored with the page's burns."""
        if self.feed is None:
            return {"polled": False, "queued": 0, "refused": 0}
        feed = self.feed
        policy = self.burn_policy()
        loop = asyncio.get_running_loop()
        queued = refused = 0
        while True:
            stored = self.engine.store.flag(FEED_CURSOR)
            cursor = stored[0] if stored is not None else None
            try:
                items, after = await loop.run_in_executor(None, feed.fetch, cursor)
            except FeedError as exc:
                log.warning("burn feed: %s", exc)
                return {"polled": False, "error": str(exc), "queued": queued, "refused": refused}
            if not items:
                return {"polled": True, "queued": queued, "refused": refused}
            checked: list[tuple[VerifiedBurn, dict[str, Any]] | BurnRefused] = []
            for item in items:
                if self._held(item):
                    continue  # taken on already, from a proposal that carried it
                try:
                    checked.append((verify_burn(item, policy, self.records.seen), item))
                except BurnRefused as refusal:
                    checked.append(refusal)
            with self.engine.store.transaction():
                for outcome in checked:
                    if isinstance(outcome, BurnRefused):
                        refused += 1
                        self._refused(outcome, "the feed")
                    elif self._accept(outcome[0], outcome[1], "from the feed"):
                        queued += 1
                self.engine.store.set_flag(FEED_CURSOR, str(after), "the next page of burns")

    def _held(self, item: Any) -> bool:
        """Whether this node holds exactly this entry already (a replay of a different
        record under a known id is refused as a duplicate instead)."""
        record = item.get("record") if isinstance(item, dict) else None
        burn_id = record.get("burn_id") if isinstance(record, dict) else None
        row = self.records.burn(burn_id) if isinstance(burn_id, str) else None
        return row is not None and row.entry == item

    # -- what the policy asks (PayoutNode) ----------------------------------------------------
    def _unspent(self, kinds: Sequence[str]) -> dict[tuple[str, int], tuple[Spendable, int]]:
        """The custody key's unspent outputs of `kinds` in this node's view, each with its
        confirmations."""
        view = self._bitcoin().view
        heights = {(o.txid, o.vout): o.height for o in view.unspent(kinds)}
        return {
            (s.txid, s.vout): (s, view.confirmations(heights[(s.txid, s.vout)]))
            for s in view.spendables(kinds)
        }

    def own_spendables(
        self, inputs: Sequence[tuple[str, int]], kinds: Sequence[str]
    ) -> list[Spendable]:
        required = self._bitcoin().view.required_confirmations()
        mine = self._unspent(kinds)
        spendables = []
        for outpoint in inputs:
            if outpoint not in mine:
                raise SigningRefused(
                    f"input {outpoint[0]}:{outpoint[1]} is not an unspent "
                    f"{'/'.join(kinds)} output in this node's view"
                )
            spendable, confirmations = mine[outpoint]
            if confirmations < required:
                raise SigningRefused(
                    f"input {outpoint[0]}:{outpoint[1]} has {confirmations} of "
                    f"{required} confirmations"
                )
            spendables.append(spendable)
        return spendables

    def payout_chain(self) -> PayoutChain:
        """The payout chain on this node's view, with the burn ids its ledger holds."""
        return self._bitcoin().view.follow_payouts(self.records.paid_burns)

    def _custody(self) -> CustodyKey:
        return self._bitcoin().custody_key(self.engine.group_key("custody"))

    def change_script(self) -> bytes:
        return self._custody().custody.script

    def destination_script(self, destination: str, forced: bool) -> bytes:
        network = self._bitcoin().config.network
        try:
            script = script_of_address(destination, network)
        except (AddressError, ValueError) as exc:
            raise SigningRefused(f"destination {destination!r}: {exc}") from exc
        if destination == self.fee_reservoir.consolidation_address:
            return script
        if self.engine.approved(CONSOLIDATION, hashlib.sha256(script).digest(), time.time()):
            return script
        raise SigningRefused(
            f"destination {destination} is neither the configured "
            "consolidation address nor approved by this node's operator"
        )

    def approvers(self, record: BurnRecord, carried: Sequence[tuple[int, bytes]]) -> set[int]:
        good = valid_approvers(self.identity_keys, self.config.cluster_id, record, carried)
        for approver, signature in carried:
            if approver in good:
                self.records.add_approval(record.burn_id, approver, signature)
        held = list(self.records.approvals(record.burn_id).items())
        return valid_approvers(self.identity_keys, self.config.cluster_id, record, held)

    # -- approvals ---------------------------------------------------------------------------
    async def approve_burn(self, burn_id: str, actor: str) -> dict[str, Any]:
        """This node's operator approves paying a burn above the approval amount: signed with
        the node's identity key, kept, and sent to every peer."""
        if self.records.burn(burn_id) is None:
            await self.poll_feed()
        row = self.records.burn(burn_id)
        if row is None:
            raise CommandError("not-found", f"this node holds no verified burn {burn_id!r}")
        if row.state == "paid":
            raise CommandError("bad-request", f"burn {burn_id} is paid already")
        record = BurnRecord.from_json(row.entry["record"])
        signature = self.engine.keystore.sign(approval_message(self.config.cluster_id, record))
        me = self.config.me.identifier
        self.engine.audit(
            "burn.approved",
            "success",
            f"burn {burn_id} of {row.amount} sat approved by {actor}",
            actor=actor,
            burn=burn_id,
            amount=row.amount,
        )
        self.records.add_approval(burn_id, me, signature)
        payload = json.dumps(
            {"burn_id": burn_id, "approver": me, "signature": signature.hex()}
        ).encode()
        data = self.engine.envelope(
            f"approval-{hashlib.sha256(burn_id.encode()).hexdigest()[:32]}", APPROVAL_ROUND, payload
        )
        for peer in self.config.peers:
            self.engine.send(peer.identifier, data)
        approvers = sorted(self.approvers(record, []))
        return {
            "burn_id": burn_id,
            "approved_by": approvers,
            "required": self.policy.approvals_required,
        }

    def receive_approval(self, sender: int, payload: bytes) -> tuple[str, str] | None:
        """A peer's approval; kept if it is that peer's (verified again at each use)."""
        try:
            body = json.loads(payload)
            burn_id, approver = str(body["burn_id"]), int(body["approver"])
            signature = bytes.fromhex(body["signature"])
        except (ValueError, KeyError, TypeError) as exc:
            return "malformed", f"malformed approval: {exc}"
        if approver != sender or len(signature) != 64 or len(burn_id) > 128:
            return "malformed", "an approval must be the sender's own"
        known = self.records.burn(burn_id)
        if known is not None:
            record = BurnRecord.from_json(known.entry["record"])
            if not valid_approvers(
                self.identity_keys, self.config.cluster_id, record, [(approver, signature)]
            ):
                return "bad-approval", f"approval of burn {burn_id} does not verify"
        elif self.records.approvals_of_unknown_burns(sender) >= UNKNOWN_APPROVALS_PER_PEER:
            return "over-budget", (
                f"{UNKNOWN_APPROVALS_PER_PEER} approvals of burns this node does not hold "
                "wait already"
            )
        self.records.add_approval(burn_id, approver, signature)
        return None

    # -- coordinating -----------------------------------------------------------------------
    async def run(self, actor: str) -> dict[str, Any]:
        """One round: read the feed, follow and finish open withdrawals, and pay queued burns
        in a batch when no withdrawal is open."""
        async with self._round:
            intake = await self.poll_feed()
            results = await self._follow()
            results += [await self._drive(w, actor) for w in self._unfinished()]
            proposal, waiting = await self._propose_withdrawal()
            if proposal is not None:
                results.append(await self._sign_and_send(proposal, actor))
            summary = {
                "intake": intake,
                "withdrawals": results,
                "queued": len(self.records.burns("queued")),
            }
            return summary if waiting is None else {**summary, "waiting": waiting}

    async def on_chain_change(self) -> None:
        """Every node reads the feed and follows its withdrawals; the lead, when it pays by
        itself, also runs a round and sweeps the reservoir once it reaches the threshold."""
        if self.engine.is_lead() and self.config.wire.auto_pay and self._can_sign():
            await self.run(self.config.node_id)
            if self.fee_reservoir.consolidation_address is not None:
                await self.consolidate(None, self.config.node_id, coordinate=True, forced=False)
            return
        async with self._round:
            await self.poll_feed()
            await self._follow()

    def _can_sign(self) -> bool:
        return (
            self.engine.signing_blocked() is None
            and self.engine.store.active_key("custody") is not None
        )

    def _unfinished(self) -> list[WithdrawalRow]:
        """Open withdrawals whose latest revision is not signed or not yet on the network
        (after a crash, or a ceremony that failed)."""
        return [
            w
            for w in self.records.withdrawals(OPEN)
            if w.state != "broadcast" or self.records.latest(w.id).signed is None
        ]

    def _open_withdrawal(self, chain: PayoutChain) -> WithdrawalRow | None:
        """The withdrawal spending the main output at the end of the chain, not yet in a
        block: the next one waits for it (a withdrawal is not chained to one that is not
        on the chain, so one block is enough)."""
        if chain.main is None:
            return None
        main = (chain.main.txid, chain.main.vout)
        return next(
            (
                w
                for w in self.records.withdrawals(OPEN)
                if w.kind == WITHDRAWAL and w.inputs[0] == main
            ),
            None,
        )

    async def _fee_rate(self) -> int:
        bitcoin = self._bitcoin()
        rate = await estimate_fee_rate(bitcoin.rpc, bitcoin.config)
        return math.ceil(rate * 1000)

    def _available(self, kinds: Sequence[str]) -> list[Spendable]:
        """What a new proposal may spend: confirmed, and bound to no open withdrawal."""
        required = self._bitcoin().view.required_confirmations()
        reserved = self.records.reserved()
        return [
            spendable
            for outpoint, (spendable, confirmations) in self._unspent(kinds).items()
            if outpoint not in reserved and confirmations >= required
        ]

    async def _propose_withdrawal(self) -> tuple[Proposal | None, str | None]:
        """The next withdrawal, or why there is none to propose now."""
        chain = self.payout_chain()
        refusal = chain.refusal()
        if refusal is not None:
            return None, refusal
        assert chain.main is not None
        open_one = self._open_withdrawal(chain)
        if open_one is not None:
            return None, f"withdrawal {open_one.id} spends the main output; the next spends its own"
        policy = self.policy
        since = time.time() - DAY
        budget = min(
            policy.max_withdrawal_sats,
            policy.daily_outflow_sats
            - chain.outflow_since(since)
            - self.records.consolidated_since(since),
        )
        paid = chain.paid
        chosen: list[tuple[BurnRow, VerifiedBurn]] = []
        approvals: list[tuple[str, int, bytes]] = []
        total = 0
        burn_policy = self.burn_policy()
        for row in self.records.burns("queued"):
            if len(chosen) == policy.max_batch:
                break
            if total + row.amount > budget or row.burn_id in paid:
                continue
            try:
                burn = verify_burn(row.entry, burn_policy, lambda _: False)
            except BurnRefused as refusal_of_burn:
                log.warning("queued burn no longer passes this node's policy: %s", refusal_of_burn)
                continue
            if row.amount > policy.approval_above_sats:
                approvers = self.approvers(burn.record, [])
                if len(approvers) < policy.approvals_required:
                    continue  # waits for its approvals
                held = self.records.approvals(row.burn_id)
                approvals += [(row.burn_id, a, held[a]) for a in sorted(approvers)]
            chosen.append((row, burn))
            total += row.amount
        if not chosen:
            return None, None
        msat = await self._fee_rate()
        payouts = [Payout(r.burn_id, b.script, r.amount) for r, b in chosen]
        try:
            plan = build_withdrawal(
                payouts,
                chain.main,
                self._available(("custody", "deposit")),
                self.change_script(),
                msat / 1000,
            )
        except WithdrawalError as exc:
            self.engine.audit(
                "withdrawal.failed", "failure", f"no withdrawal for {len(chosen)} burns: {exc}"
            )
            return None, str(exc)
        entries = [r.entry for r, _ in chosen]
        return first_proposal(WITHDRAWAL, plan, msat, entries, approvals=approvals), None

    async def _sign_and_send(self, proposal: Proposal, actor: str) -> dict[str, Any]:
        """Bind, sign, record, broadcast, record: each step durable before the next."""
        summary: dict[str, Any] = {
            "withdrawal": proposal.withdrawal_id,
            "kind": proposal.kind,
            "revision": proposal.revision,
        }
        try:
            plan = rebuild(self, proposal)
            request = payout_request(proposal, plan)
            check_payout(self, request)  # binds on this node before anything leaves it
        except (SigningRefused, CommandError) as exc:
            self.engine.audit(
                "withdrawal.failed",
                "refused",
                f"{proposal.withdrawal_id}: {exc}",
                withdrawal=proposal.withdrawal_id,
            )
            return {**summary, "state": "refused", "reason": str(exc)}
        crash_point("withdrawal.proposed")
        result = await self.engine.sign_request(request)
        if result.get("state") != "completed":
            return {
                **summary,
                "state": "failed",
                "ceremony": result.get("ceremony"),
                "reason": result.get("reason"),
            }
        crash_point("withdrawal.signed")
        signed = plan.signed([bytes.fromhex(s) for s in result["signatures"]])
        self.records.record_signed(proposal.withdrawal_id, proposal.revision, signed.serialize())
        self.engine.audit(
            "withdrawal.signed",
            "success",
            f"{proposal.kind} {proposal.withdrawal_id} revision {proposal.revision} signed as "
            f"{signed.txid_hex} ({len(plan.spent)} inputs, {len(plan.payouts)} payouts, "
            f"fee {plan.fee} sat)",
            actor=actor,
            withdrawal=proposal.withdrawal_id,
            txid=signed.txid_hex,
            ceremony=result.get("ceremony"),
        )
        return {
            **summary,
            **await self._send(proposal.withdrawal_id),
            "fee": plan.fee,
            "signers": result.get("signers"),
            "payouts": len(plan.payouts),
        }

    async def _send(self, withdrawal: str) -> dict[str, Any]:
        bitcoin = self._bitcoin()
        latest = self.records.latest(withdrawal)
        assert latest.signed is not None
        tx = parse_transaction(latest.signed)
        try:
            await broadcast(bitcoin.rpc, tx, self.engine.audit)
        except BroadcastRefused as exc:
            return {"state": "signed", "txid": tx.txid_hex, "reason": exc.reason}
        except (BitcoindError, RpcProtocolError, OSError) as exc:
            return {"state": "signed", "txid": tx.txid_hex, "reason": str(exc)}
        crash_point("withdrawal.broadcast")
        tip = bitcoin.view.tip
        self.records.record_broadcast(withdrawal, tip[1] if tip is not None else 0)
        return {"state": "broadcast", "txid": tx.txid_hex, "transaction": latest.signed.hex()}

    async def _drive(self, withdrawal: WithdrawalRow, actor: str) -> dict[str, Any]:
        """Carry an open withdrawal on from where it stopped (after a crash, or a ceremony
        that failed): the same proposal again, or the signed transaction again."""
        latest = self.records.latest(withdrawal.id)
        if latest.signed is None:
            return await self._sign_and_send(Proposal.from_json(latest.proposal), actor)
        return {
            "withdrawal": withdrawal.id,
            "kind": withdrawal.kind,
            "revision": latest.revision,
            **await self._send(withdrawal.id),
        }

    async def consolidate(
        self, address: str | None, actor: str, coordinate: bool, forced: bool
    ) -> dict[str, Any]:
        """Sweep the fee reservoir: to `address` if given (approved on this node by asking),
        else to the configured consolidation address; `forced` ignores the threshold."""
        destination = address or self.fee_reservoir.consolidation_address
        if destination is None:
            raise CommandError(
                "bad-request",
                "no address given and no fee_reservoir.consolidation_address configured",
            )
        try:
            script = script_of_address(destination, self._bitcoin().config.network)
        except (AddressError, ValueError) as exc:
            raise CommandError("bad-request", f"address {destination!r}: {exc}") from exc
        if address is not None:
            self.engine.store.approve(
                CONSOLIDATION,
                hashlib.sha256(script).digest(),
                actor,
                time.time() + APPROVAL_SECONDS,
            )
        if not coordinate:
            return {"approved": destination}
        async with self._round:
            for open_one in self._unfinished():
                if open_one.kind == CONSOLIDATION:
                    return await self._drive(open_one, actor)
            eligible = [
                s
                for s in self._available(("reservoir",))
                if s.amount >= self.fee_reservoir.min_fee_amount
            ]
            if not eligible or (
                not forced and len(eligible) < self.fee_reservoir.consolidation_threshold
            ):
                return {
                    "state": "nothing-to-consolidate",
                    "eligible": len(eligible),
                    "threshold": self.fee_reservoir.consolidation_threshold,
                }
            eligible = sorted(eligible, key=lambda s: (-s.amount, s.txid, s.vout))[:500]
            msat = await self._fee_rate()
            try:
                plan = build_sweep(eligible, script, msat / 1000)
            except WithdrawalError as exc:
                raise CommandError("cannot-build", str(exc)) from exc
            proposal = first_proposal(CONSOLIDATION, plan, msat, destination=destination,
                                      forced=forced)  # fmt: skip
            return await self._sign_and_send(proposal, actor)

    # -- following --------------------------------------------------------------------------
    async def _follow(self) -> list[dict[str, Any]]:
        """Every node: confirm or flag its open withdrawals from its own view, settle every
        burn's state from the payout chain, and ask its peers for burn ids it lacks. The
        lead also replaces stuck withdrawals and reports paid burns."""
        bitcoin = self.engine.chain
        if bitcoin is None or self.engine.store.active_key("custody") is None:
            return []
        view = bitcoin.view
        tip = view.tip
        lead = self.engine.is_lead()
        bumped = []
        for withdrawal in self.records.withdrawals(OPEN):
            revisions = self.records.revisions(withdrawal.id)
            spent = view.records.spender(*withdrawal.inputs[0])
            if spent is None:
                if (
                    lead
                    and tip is not None
                    and withdrawal.state == "broadcast"
                    and withdrawal.broadcast_height is not None
                    and revisions[-1].signed is not None
                    and is_stuck(withdrawal.broadcast_height, tip[1], bitcoin.config)
                    and self.engine.signing_blocked() is None
                ):
                    bumped.append(await self._bump(withdrawal))
                continue
            txid, height = spent
            if txid not in {r.txid for r in revisions}:
                self.records.record_conflicted(withdrawal.id, txid)
                self.engine.audit(
                    "withdrawal.conflicted",
                    "failure",
                    f"{withdrawal.id}: input {withdrawal.inputs[0][0]}:{withdrawal.inputs[0][1]} "
                    f"was spent by {txid}, none of its transactions; its burns are paid only "
                    "if that transaction pays them",
                    withdrawal=withdrawal.id,
                    txid=txid,
                )
                continue
            if view.confirmations(height) >= bitcoin.config.normal_confirmations:
                self.records.record_confirmed(withdrawal.id, txid, height)
                self.engine.audit(
                    "withdrawal.confirmed",
                    "success",
                    f"{withdrawal.kind} {withdrawal.id} confirmed as {txid} at height {height}",
                    withdrawal=withdrawal.id,
                    txid=txid,
                    height=height,
                )
                crash_point("withdrawal.confirmed")
        self._settle(self.payout_chain())
        if lead:
            await self.report_paid()
        return bumped

    def _settle(self, chain: PayoutChain) -> None:
        """Every burn's state from the chain: paid by a link with the confirmations payouts
        need, bound while a shallow link or an open withdrawal pays it, queued otherwise."""
        bitcoin = self._bitcoin()
        if chain.broken is not None:
            log.error("payout chain: %s", chain.broken)
        if chain.missing:
            self.ask_for_records(chain.missing)
        paid: dict[str, str] = {}
        pending: dict[str, str | None] = {}
        for link in chain.links:
            deep = bitcoin.view.confirmations(link.height) >= bitcoin.config.normal_confirmations
            for burn_id in link.burns or ():
                if deep:
                    paid[burn_id] = link.txid
                else:
                    pending[burn_id] = None
        for withdrawal in self.records.withdrawals(OPEN):
            if withdrawal.kind == WITHDRAWAL:
                pending.update({burn_id: withdrawal.id for burn_id in withdrawal.burns})
        newly_paid, unpaid = self.records.settle_burns(paid, pending)
        for burn in newly_paid:
            log.info("burn %s paid by %s", burn.burn_id, paid[burn.burn_id])
        for burn in unpaid:
            self.engine.audit(
                "burn.unpaid",
                "failure",
                f"burn {burn.burn_id} was paid by {burn.paid_txid}, which the chain no longer "
                "holds deep enough (a reorg): it is payable again only as the chain says",
                burn=burn.burn_id,
                txid=burn.paid_txid or "",
            )

    # -- the ledger from peers ------------------------------------------------------------
    def ask_for_records(self, txids: Sequence[str]) -> None:
        """Ask every peer for the burn ids of payout transactions this node did not sign (at
        most every few seconds per transaction)."""
        now = time.monotonic()
        wanted = [
            t for t in txids if now - self._asked.get(t, -ASK_AGAIN_SECONDS) >= ASK_AGAIN_SECONDS
        ]
        wanted = wanted[:RECORDS_PER_REQUEST]
        if not wanted:
            return
        for txid in wanted:
            self._asked[txid] = now
        payload = json.dumps({"txids": wanted}).encode()
        digest = hashlib.sha256(payload).hexdigest()[:24]
        data = self.engine.envelope(f"records-{digest}", RECORDS_WANTED_ROUND, payload)
        for peer in self.config.peers:
            self.engine.send(peer.identifier, data)

    def receive_records_wanted(self, sender: int, payload: bytes) -> tuple[str, str] | None:
        """A peer asks for burn ids: answer with those this node holds, one message each."""
        try:
            body = json.loads(payload)
            txids = body["txids"]
            if not isinstance(txids, list) or not 0 < len(txids) <= RECORDS_PER_REQUEST:
                raise ValueError(f"txids must be a list of 1 to {RECORDS_PER_REQUEST}")
            if not all(isinstance(t, str) and len(t) == 64 for t in txids):
                raise ValueError("each txid is 64 hex characters")
        except (ValueError, KeyError, TypeError) as exc:
            return "malformed", f"request for payout records: {exc}"
        now = time.monotonic()
        if len(self._answered) > 4 * RECORDS_PER_REQUEST * len(self.identity_keys):
            self._answered = {
                k: t for k, t in self._answered.items() if now - t < ASK_AGAIN_SECONDS
            }
        for txid in txids:
            # Each peer gets a transaction's ids once per interval: asking in a loop does not
            # make this node send more.
            if now - self._answered.get((sender, txid), -ASK_AGAIN_SECONDS) < ASK_AGAIN_SECONDS:
                continue
            burns = self.records.paid_burns(txid)
            if burns is None:
                continue
            self._answered[(sender, txid)] = now
            answer = json.dumps({"txid": txid, "burns": burns}).encode()
            data = self.engine.envelope(f"record-{txid[:32]}", RECORD_ROUND, answer)
            self.engine.send(sender, data)
        return None

    def receive_record(self, sender: int, payload: bytes) -> tuple[str, str] | None:
        """A peer's word on the burn ids of a payout transaction: kept only if they hash to
        the commitment that transaction carries on this node's own chain."""
        try:
            body = json.loads(payload)
            txid, burns = body["txid"], body["burns"]
            if not isinstance(txid, str) or not isinstance(burns, list):
                raise ValueError("txid must be a string and burns a list")
            if not all(isinstance(b, str) for b in burns):
                raise ValueError("burn ids are strings")
        except (ValueError, KeyError, TypeError) as exc:
            return "malformed", f"payout record: {exc}"
        if self.engine.chain is None or self.engine.store.active_key("custody") is None:
            return None
        link = next((x for x in self.payout_chain().links if x.txid == txid), None)
        if link is None:
            return None  # not a link of this node's chain (yet): nothing to judge it by
        try:
            matches = burns_digest(burns) == link.commitment
        except (ValueError, UnicodeEncodeError):
            matches = False
        if not matches:  # a lie whenever it comes, also after the truth
            return "false-record", (
                f"burn ids for payout transaction {txid} that do not match its commitment"
            )
        if link.burns is not None:
            return None  # known already
        self.engine.audit(
            "payout.record-learned",
            "success",
            f"burn ids of payout transaction {txid} ({len(burns)} burns) learned from "
            f"party {sender}, matching its commitment",
            txid=txid,
            peer=str(sender),
        )
        self.records.record_paid_burns(txid, burns, f"peer {sender}")
        return None

    async def _bump(self, withdrawal: WithdrawalRow) -> dict[str, Any]:
        bitcoin = self._bitcoin()
        latest = self.records.latest(withdrawal.id)
        estimate = await estimate_fee_rate(bitcoin.rpc, bitcoin.config)
        relay = await relay_fees(bitcoin.rpc)
        rate = bumped_fee_rate(latest.fee_rate, estimate, bitcoin.config, relay.incremental)
        if rate is None:
            return {
                "withdrawal": withdrawal.id,
                "state": "stuck",
                "reason": "the fee ceiling is reached",
            }
        msat = max(math.ceil(rate * 1000), math.floor(latest.fee_rate * 1000) + 1)
        proposal = Proposal.from_json(latest.proposal)
        try:
            if proposal.kind == CONSOLIDATION:
                assert proposal.destination is not None
                spendables = self.own_spendables(proposal.inputs, ("reservoir",))
                script = self.destination_script(proposal.destination, proposal.forced)
                plan = build_sweep(spendables, script, msat / 1000)
            else:
                main = self.payout_chain().main
                if main is None or (main.txid, main.vout) != proposal.inputs[0]:
                    raise SigningRefused("its main output is no longer the chain's")
                extras = self.own_spendables(proposal.inputs[1:], ("custody", "deposit"))
                payouts = [
                    Payout(b.record.burn_id, b.script, b.record.amount_sats)
                    for b in self.take_burns(proposal.burns)
                ]
                plan = spend_exactly(payouts, main, extras, self.change_script(), msat / 1000)
        except (WithdrawalError, SigningRefused) as exc:
            return {"withdrawal": withdrawal.id, "state": "stuck", "reason": str(exc)}
        if plan.transaction.txid_hex == latest.txid:
            return {"withdrawal": withdrawal.id, "state": "stuck",
                    "reason": "no change output is left to pay a higher fee from"}  # fmt: skip
        replacement = dataclasses.replace(
            proposal,
            revision=latest.revision + 1,
            fee_rate_msat_vb=msat,
            transaction=plan.transaction.serialize(),
        )
        self.engine.audit(
            "withdrawal.replaced",
            "success",
            f"{withdrawal.id} stuck since height {withdrawal.broadcast_height}: revision "
            f"{replacement.revision} at {msat / 1000} sat/vB",
            withdrawal=withdrawal.id,
        )
        return await self._sign_and_send(replacement, self.config.node_id)

    async def report_paid(self) -> None:
        url = self.config.wire.paid_report_url
        loop = asyncio.get_running_loop()
        for burn in self.records.unreported():
            body = {"burn_id": burn.burn_id, "txid": burn.paid_txid, "withdrawal": burn.withdrawal}
            if url is not None and not await loop.run_in_executor(None, post_json, url, body):
                return  # retried at the next chain change
            self.records.mark_reported(burn.burn_id)
            self.engine.audit(
                "burn.paid",
                "success",
                f"burn {burn.burn_id} paid by {burn.paid_txid}",
                burn=burn.burn_id,
                txid=burn.paid_txid or "",
            )

    # -- reading -----------------------------------------------------------------------------
    def reservoir(self) -> dict[str, Any]:
        """The fee reservoir's address and what waits there."""
        custody = self._custody()
        waiting = self._available(("reservoir",))
        eligible = [s for s in waiting if s.amount >= self.fee_reservoir.min_fee_amount]
        return {
            "address": custody.address(custody.reservoir),
            "outputs": len(waiting),
            "eligible": len(eligible),
            "eligible_sats": sum(s.amount for s in eligible),
            "consolidation_threshold": self.fee_reservoir.consolidation_threshold,
            "min_fee_amount": self.fee_reservoir.min_fee_amount,
            "consolidation_address": self.fee_reservoir.consolidation_address,
        }

    def listing(self, limit: int = 200) -> dict[str, Any]:
        network = self.engine.network
        withdrawals = []
        for w in self.records.withdrawals(limit=limit):
            revisions = self.records.revisions(w.id)
            withdrawals.append(
                {
                    "withdrawal": w.id,
                    "kind": w.kind,
                    "state": w.state,
                    "burns": list(w.burns),
                    "inputs": [f"{t}:{v}" for t, v in w.inputs],
                    "amount_sats": w.amount,
                    "created_at": w.created_at,
                    "broadcast_height": w.broadcast_height,
                    "confirmed_txid": w.confirmed_txid,
                    "confirmed_height": w.confirmed_height,
                    "revisions": [
                        {
                            "revision": r.revision,
                            "txid": r.txid,
                            "fee_rate": r.fee_rate,
                            "transaction": None if r.signed is None else r.signed.hex(),
                        }
                        for r in revisions
                    ],
                }
            )
        burns = [
            {
                "burn_id": b.burn_id,
                "amount_sats": b.amount,
                "state": b.state,
                "destination": address_of_script(b.script, network) if network != "none" else None,
                "withdrawal": b.withdrawal,
                "paid_txid": b.paid_txid,
                "reported": b.reported,
                "approvals": sorted(self.records.approvals(b.burn_id)),
            }
            for b in self.records.burns(limit=limit, newest_first=True)
        ]
        return {
            "burns": burns,
            "withdrawals": withdrawals,
            "payout_chain": self.chain_summary(),
            "policy": self.policy.to_json(),
        }

    def chain_summary(self) -> dict[str, Any] | None:
        """Where the payout chain stands on this node: its genesis, its length, the main
        custody output at its end, and why no withdrawal could be signed now, if so."""
        if self.engine.chain is None or self.engine.store.active_key("custody") is None:
            return None
        custody = self._custody()
        chain = self.payout_chain()
        main = chain.main
        return {
            "custody_address": custody.address(custody.custody),
            "genesis": None if chain.genesis is None else f"{chain.genesis[0]}:{chain.genesis[1]}",
            "links": len(chain.links),
            "main_output": None if main is None else f"{main.txid}:{main.vout}",
            "main_sats": None if main is None else main.amount,
            "burns_paid": len(chain.paid),
            "missing_records": chain.missing,
            "refusal": chain.refusal(),
        }

    def open_count(self) -> int:
        return len(self.records.withdrawals(OPEN))
