"""A wire-mpcd that misbehaves on purpose, for the fault and attack tests.

It is the real daemon with one ceremony class swapped for a faulty subclass; the honest
nodes of a test run the unmodified daemon. `--fault` picks the misbehaviour:

    equivocate           DKG: sends different round-1 packages to different peers
    bad-dkg-share        DKG: deals its lowest-numbered peer a share off by one
    bad-signature-share  signing: releases signature shares off by one
    die-on-package       signing: kill -9 itself on receiving the package (after committing)
    die-after-round1     DKG: kill -9 itself just after its round-1 broadcast
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import appliance.engine as engine_module
from appliance import daemon
from appliance.ceremony.base import BRIDGE_KEYS
from appliance.ceremony.dkg import DkgCeremony
from appliance.ceremony.signing import SigningParticipant
from appliance.frost import SignatureShare, dkg_round1


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
    name, faulty = FAULTS[fault]
    setattr(engine_module, name, faulty)
    return daemon.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
