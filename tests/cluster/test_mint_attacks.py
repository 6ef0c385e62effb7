"""A malicious coordinator and attestations: it cannot get a deposit attested that the
honest signers' own chains do not show, but it can have two disjoint sets of honest nodes
each sign an attestation of one deposit under its own sequence number. The Wire system's
rule (`MintLedger`: mint once per network, txid and vout) makes them one mint."""

from __future__ import annotations

from appliance.wire.attestation import MintLedger
from tests.cluster.test_bitcoin import bitcoin_states, bitcoind

from .conftest import run_dkg
from .test_mint import views_at

__all__ = ["bitcoind"]  # the fixture


def test_two_attestations_of_one_deposit_mint_once(make_cluster, bitcoind) -> None:
    cluster = make_cluster(bitcoind=bitcoind, round_timeout=2.0, faults={1: "double-payer"})
    assert all(r["state"] == "completed" for r in run_dkg(cluster))
    bitcoin_states(cluster, "synced")
    for member in cluster.nodes.values():
        address = member.call("deposit-address", recipient="wire:alice")["address"]
    txid = bitcoind.call("sendtoaddress", address, "0.3")
    bitcoind.call("generatetoaddress", 6, bitcoind.call("getnewaddress"))
    views_at(cluster, int(bitcoind.call("getblockcount")), [1, 2, 3])
    vout = next(
        o["n"]
        for o in bitcoind.call("getrawtransaction", txid, 1)["vout"]
        if o["scriptPubKey"].get("address") == address
    )
    coordinator = cluster[1]

    def attest(sequence: int, signers: list[int]) -> dict:
        params = {"txid": txid, "vout": vout, "sequence": sequence, "signers": signers}
        result: dict = coordinator.call("attack-attest", **params)
        return result

    first, second = attest(7, [1, 2]), attest(8, [1, 3])
    assert first["state"] == second["state"] == "completed", (first, second)
    # Each honest node signed once: asked again under another number, it refuses.
    third = attest(9, [1, 2])
    assert third["state"] == "failed"
    assert f"deposit {txid}:{vout} is bound to attestation 7" in third["reason"], third
    # A deposit the honest nodes' chains do not show is refused whatever the number.
    made_up = coordinator.call("attack-attest", txid="ab" * 32, vout=0, sequence=10, signers=[1, 2])
    assert made_up["state"] == "failed"
    assert "shows no such confirmed deposit" in made_up["reason"], made_up

    group_key = bytes.fromhex(cluster[2].call("key-info")["keys"]["attestation"][0]["group_key"])
    ledger = MintLedger(group_key, "regtest")
    minted = [
        ledger.mint(bytes.fromhex(a["message"]), bytes.fromhex(a["signature"]))
        for a in (first, second)
    ]
    assert minted[0] is not None
    assert (minted[0].txid, minted[0].vout, minted[0].amount_sats) == (txid, vout, 30_000_000)
    assert minted[1] is None, "the second attestation of the output must not mint again"
