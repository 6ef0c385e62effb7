"""The payout chain: every withdrawal spends the main custody output the previous one made,
so two withdrawals the cluster signs either follow one another or conflict on Bitcoin.

A node follows the chain on its own view: from the genesis (the first output ever paid to
the custody key's own address, once it has the confirmations deposits need), through the
transaction that spends each main output, to the one main output left unspent. Each link
commits on chain to the burn ids it pays (`appliance.chain.commitment`); the ids themselves
come from the node's records or a peer, and count only if they hash to that commitment. A
burn in any link is paid, whoever signed the link; so a burn is never paid by two
transactions that can both confirm, whatever different coordinators proposed to whom.

`follow` is a function of the facts a `PayoutFacts` gives; the node's store is one source
of facts, a test's model of the chain another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .commitment import burns_digest
from .withdrawal import Spendable

__all__ = ["PayoutChain", "PayoutFacts", "PayoutLink", "SpendFacts", "follow"]

Outpoint = tuple[str, int]


@dataclass(frozen=True)
class SpendFacts:
    """What a node's chain view shows of the transaction spending an output."""

    txid: str
    height: int
    seen_at: float  # when this node first saw its block (its clock)
    commitment: bytes | None  # the digest of its output 1, if that is a commitment
    paid_out: int  # satoshis of every output but output 0


@dataclass(frozen=True)
class PayoutLink:
    txid: str
    height: int
    seen_at: float
    commitment: bytes
    paid_out: int
    burns: tuple[str, ...] | None  # None while this node lacks a list matching the commitment


class PayoutFacts(Protocol):
    """The facts `follow` reads, all from one node's canonical chain and its records."""

    def genesis(self) -> Outpoint | None:
        """The first output to the custody address with the confirmations deposits need."""

    def spender(self, outpoint: Outpoint) -> SpendFacts | None:
        """The transaction spending `outpoint` in a canonical block, if any."""

    def custody_output(self, outpoint: Outpoint) -> Spendable | None:
        """`outpoint` if it is an output to the custody address in a canonical block."""

    def burns_of(self, txid: str) -> Sequence[str] | None:
        """The burn ids this node holds for a transaction (its own or a peer's word)."""


@dataclass(frozen=True)
class PayoutChain:
    genesis: Outpoint | None
    links: tuple[PayoutLink, ...]
    main: Spendable | None  # the unspent main custody output at the end of the chain
    broken: str | None = None

    @property
    def missing(self) -> list[str]:
        """Links whose burn ids this node still has to learn."""
        return [link.txid for link in self.links if link.burns is None]

    @property
    def paid(self) -> dict[str, str]:
        """Every burn the chain pays, with the transaction paying it."""
        return {burn: link.txid for link in self.links for burn in link.burns or ()}

    def outflow_since(self, since: float) -> int:
        """Satoshis the chain's links paid out in blocks this node saw from `since` on."""
        return sum(link.paid_out for link in self.links if link.seen_at >= since)

    def refusal(self) -> str | None:
        """Why no withdrawal can be signed on this chain now, or None."""
        if self.broken is not None:
            return f"the payout chain cannot be followed: {self.broken}"
        if self.main is None:
            return (
                "there is no main custody output yet: the payout chain starts at the first "
                "output to the custody address once it has the confirmations deposits need"
            )
        if self.missing:
            return (
                "this node lacks the burn ids of payout transaction(s) "
                f"{', '.join(self.missing)}; it asks its peers for them"
            )
        return None


def follow(facts: PayoutFacts) -> PayoutChain:
    """The payout chain as `facts` show it, from the genesis to the unspent main output."""
    genesis = facts.genesis()
    if genesis is None:
        return PayoutChain(None, (), None)
    links: list[PayoutLink] = []
    current = genesis
    while (spend := facts.spender(current)) is not None:
        where = f"{spend.txid} spends the main custody output {current[0]}:{current[1]}"
        if spend.commitment is None:
            return PayoutChain(genesis, tuple(links), None, f"{where} without a commitment")
        if facts.custody_output((spend.txid, 0)) is None:
            return PayoutChain(
                genesis, tuple(links), None, f"{where} but pays its output 0 elsewhere"
            )
        burns = _matching(facts.burns_of(spend.txid), spend.commitment)
        links.append(
            PayoutLink(
                spend.txid, spend.height, spend.seen_at, spend.commitment, spend.paid_out, burns
            )
        )
        current = (spend.txid, 0)
    return PayoutChain(genesis, tuple(links), facts.custody_output(current))


def _matching(held: Sequence[str] | None, commitment: bytes) -> tuple[str, ...] | None:
    """`held` if it is exactly the set of burn ids `commitment` names."""
    if held is None:
        return None
    try:
        digest = burns_digest(held)
    except (ValueError, UnicodeEncodeError):
        return None
    return tuple(sorted(held)) if digest == commitment else None
