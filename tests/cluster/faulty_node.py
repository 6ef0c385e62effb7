"""A wire-mpcd that misbehaves on purpose, for the fault and attack tests.

It is the real daemon with one ceremony class swapped for a faulty subclass; the honest
nodes of a test run the unmodified daemon. `--fault` picks the misbehaviour:

    equivocate           DKG: sends different round-1 packages to different peers
    bad-dkg-share        DKG: deals its lowest-numbered peer a share off by one
    bad-signature-share  signing: releases signature shares off by one
    die-on-package       signing: kill -9 itself on receiving the package (after committing)
    die-after-round1     DKG: kill -9 itself just after its round-1 broadcast
    colluder             signing: signs whatever it is asked, checking nothing
    double-payer         payouts: a coordinator trying to get burns paid twice (it also
                         signs anything and lies about the burn ids of payout transactions);
                         driven by the test through extra control methods,
                         `attack-outputs`, `attack` and `attack-attest`
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from typing import Any

import appliance.ceremony.signing as signing_module
import appliance.engine as engine_module
from appliance import daemon
from appliance.ceremony.base import BRIDGE_KEYS
from appliance.ceremony.dkg import DkgCeremony
from appliance.ceremony.signing import SigningParticipant
from appliance.chain.withdrawal import Payout, Spendable, build_withdrawal, spend_exactly
from appliance.control import ControlServer
from appliance.frost import SignatureShare, dkg_round1
from appliance.wire.attestation import MintAttestation
from appliance.workflows.mint import attestation_request
from appliance.workflows.payouts import RECORD_ROUND, Payouts
from appliance.workflows.withdrawal import WITHDRAWAL, first_proposal, payout_request


def kill_self(after: float = 0.0) -> None:
    if after:
        asyncio.get_running_loop().call_later(after, os.kill, os.getpid(), signal.SIGKILL)
    else:
        os.kill(os.getpid(), signal.SIGKILL)


class EquivocatingDkg(DkgCeremony):
    def send_round1(self, payload: dict[str, Any]) -> None:
        first, rest = self.others[0], self.others[1:]
        self.send(first, self.round("round1"), payload)
        other = dict(payload)
        other["keys"] = {}
        for name, suite in BRIDGE_KEYS.items():
            _, package = dkg_round1(suite, self.me, self.threshold, len(self.parties))
            other["keys"][name] = {
                "commitment": [c.hex() for c in package.commitment],
                "proof": package.proof_of_knowledge.hex(),
            }
        for peer in rest:
            self.send(peer, self.round("round1"), other)


class BadShareDkg(DkgCeremony):
    def value_for(self, name: str, recipient: int, value: int) -> int:
        if recipient == self.others[0]:
            return (value + 1) % BRIDGE_KEYS[name].group.order
        return value


class DyingDkg(DkgCeremony):
    def send_round1(self, payload: dict[str, Any]) -> None:
        super().send_round1(payload)
        kill_self(after=0.3)  # let ZeroMQ put the broadcast on the wire first


class BadShareSigner(SigningParticipant):
    def sign_all(self, packages: Any, nonces: Any) -> list[SignatureShare]:
        shares = super().sign_all(packages, nonces)
        order = {p.key: BRIDGE_KEYS[p.key].group.order for p in self.request.payloads}
        return [
            SignatureShare(s.identifier, (s.share + 1) % order[p.key])
            for s, p in zip(shares, self.request.payloads, strict=True)
        ]


class DyingSigner(SigningParticipant):
    def sign_all(self, packages: Any, nonces: Any) -> list[SignatureShare]:
        kill_self()
        raise AssertionError("unreachable")


def sign_anything(_node: Any, _request: Any) -> None:
    """A colluder's signing policy."""


class DoublePayingPayouts(Payouts):
    """Tries to get burns paid twice: builds the withdrawals the test describes from its own
    view, each with its own signer set, and hands back whatever was signed."""

    def outputs(self) -> dict[str, Any]:
        chain = self.payout_chain()
        main = chain.main
        return {
            "main": None if main is None else f"{main.txid}:{main.vout}",
            "available": [
                {"outpoint": f"{s.txid}:{s.vout}", "amount": s.amount}
                for s in self._available(("custody", "deposit"))
                if main is None or (s.txid, s.vout) != (main.txid, main.vout)
            ],
        }

    def _output(self, outpoint: str) -> Spendable:
        """Any output of the custody key this node ever saw, spent or not."""
        txid, vout = outpoint.split(":")
        view = self._bitcoin().view
        row = view.records.custody_output(txid, int(vout))
        deposit = view.records.deposit_output(txid, int(vout))
        if row is None and deposit is not None:
            row = deposit[0]
        assert row is not None, f"no output {outpoint} in this node's view"
        return view.spendable(row)

    async def attack(self, proposals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await self.poll_feed()
        results = []
        for described in proposals:
            entries = [self.records.burn(b) for b in described["burns"]]
            assert all(e is not None for e in entries), f"unknown burns in {described}"
            payouts = [Payout(e.burn_id, e.script, e.amount) for e in entries if e]
            if described["first"] == "main":
                first = self.payout_chain().main
                assert first is not None, "no main output"
            elif isinstance(described["first"], dict):  # a custody output it made, unconfirmed
                txid, vout = described["first"]["outpoint"].split(":")
                custody = self._custody().custody
                amount = described["first"]["amount"]
                first = Spendable(txid, int(vout), amount, custody.script, custody.tweaks)
            else:
                first = self._output(described["first"])
            msat = int(described.get("msat_vb", 2000))
            extras = described.get("extras", "auto")
            if extras == "auto":
                others = [
                    s
                    for s in self._available(("custody", "deposit"))
                    if (s.txid, s.vout) != (first.txid, first.vout)
                ]
                plan = build_withdrawal(payouts, first, others, self.change_script(), msat / 1000)
            else:
                chosen = [self._output(o) for o in extras]
                plan = spend_exactly(payouts, first, chosen, self.change_script(), msat / 1000)
            proposal = first_proposal(WITHDRAWAL, plan, msat, [e.entry for e in entries if e])
            request = payout_request(proposal, plan)
            request = dataclasses.replace(request, signers=tuple(described["signers"]))
            result = await self.engine.sign_request(request)
            summary = {
                "withdrawal": proposal.withdrawal_id,
                "signers": described["signers"],
                "state": result.get("state"),
                "reason": result.get("reason"),
                "txid": plan.transaction.txid_hex,
                "change": plan.change,
            }
            if result.get("state") == "completed":
                signatures = [bytes.fromhex(s) for s in result["signatures"]]
                summary["transaction"] = plan.signed(signatures).serialize().hex()
                # What it signed is a payout transaction: tell the truth to nobody.
                self.records.record_paid_burns(plan.transaction.txid_hex, [], "a lie")
            results.append(summary)
        return results

    def receive_records_wanted(self, sender: int, payload: bytes) -> tuple[str, str] | None:
        """Answers every request for burn ids with an empty list (a lie)."""
        for txid in json.loads(payload)["txids"]:
            answer = json.dumps({"txid": txid, "burns": []}).encode()
            self.engine.send(sender, self.engine.envelope(f"lie-{txid[:32]}", RECORD_ROUND, answer))
        return None


class AttackControl(ControlServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        payouts: Any = self.engine.payouts

        async def attack_outputs(params: dict[str, Any], actor: str) -> Any:
            return payouts.outputs()

        async def attack(params: dict[str, Any], actor: str) -> Any:
            return await payouts.attack(params["proposals"])

        async def attack_attest(params: dict[str, Any], actor: str) -> Any:
            return await attest(self.engine, params)

        self.methods["attack-outputs"] = attack_outputs
        self.methods["attack"] = attack
        self.methods["attack-attest"] = attack_attest


async def attest(engine: Any, params: dict[str, Any]) -> dict[str, Any]:
    """An attestation of a deposit this node sees, under the sequence number and by the
    signers the test names (an honest coordinator picks the next number and any t)."""
    own = engine.own_deposit(params["txid"], params["vout"])
    if own is None:  # made up: a deposit nobody's chain shows
        attestation = MintAttestation(
            engine.network,
            params["txid"],
            params["vout"],
            50_000_000,
            "wire:mallory",
            "00" * 32,
            params["sequence"],
        )
    else:
        d = own[0]
        attestation = MintAttestation(
            engine.network, d.txid, d.vout, d.amount, d.recipient, d.block_hash, params["sequence"]
        )
    request = dataclasses.replace(
        attestation_request([attestation]), signers=tuple(params["signers"])
    )
    result = await engine.sign_request(request)
    return {
        "state": result.get("state"),
        "reason": result.get("reason"),
        "message": attestation.encode().hex(),
        "signature": (result.get("signatures") or [None])[0],
    }


FAULTS = {
    "equivocate": ("DkgCeremony", EquivocatingDkg),
    "bad-dkg-share": ("DkgCeremony", BadShareDkg),
    "die-after-round1": ("DkgCeremony", DyingDkg),
    "bad-signature-share": ("SigningParticipant", BadShareSigner),
    "die-on-package": ("SigningParticipant", DyingSigner),
}


def main() -> int:
    arguments = sys.argv[1:]
    index = arguments.index("--fault")
    fault = arguments[index + 1]
    del arguments[index : index + 2]
    if fault in ("colluder", "double-payer"):
        signing_module.check_policy = sign_anything
    if fault == "double-payer":
        engine_module.Payouts = DoublePayingPayouts  # type: ignore[misc]
        daemon.ControlServer = AttackControl  # type: ignore[misc]
    if fault in FAULTS:
        name, faulty = FAULTS[fault]
        setattr(engine_module, name, faulty)
    return daemon.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
