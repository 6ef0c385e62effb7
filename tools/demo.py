"""`make demo`: the whole bridge on a local 2-of-3 cluster, from provisioning to payouts.

Three wire-mpcd processes on loopback, each with its own SoftHSM2 token, database, CURVE
keys, configuration and control API (gunicorn on a Unix socket), each following a bitcoind
of its own (Bitcoin Core on regtest, peered over P2P with a miner that funds and mines), and
a simulated Wire system (burn feed, burn authority, paid reports). Each organisation enrols
an admin and an operator, and everything after is done with `mpc_operator` on each node's
socket: the DKG of both keys, key-info, test signing with both keys, a deposit mined to six
confirmations and its mint attestation, a burn paid by a withdrawal transaction confirmed
six times, and a fee consolidation. Every signature is checked by verifiers that share no
code with the nodes: OpenSSL's Ed25519 (through `cryptography`) and libsecp256k1's BIP340;
the transactions by bitcoind itself, and the summary carries what anyone needs to check
them again. Nothing is left running.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coincurve import PublicKeyXOnly
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.wire.attestation import verify as verify_attestation
from tests.wire.simulator import WireSimulator
from tools.authenticator import Authenticator
from tools.bitcoind import BitcoinNetwork
from tools.devcluster import REPO, DevCluster, DevNode, wait_until

MESSAGE = "wire-mpc demo: the cluster is ready"


def tagged(tag: str, data: bytes) -> bytes:
    prefix = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(prefix + prefix + data).digest()


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def verify(keys: dict[str, Any], message: bytes, signatures: list[str]) -> dict[str, bool]:
    attestation = Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys["attestation"]))
    try:
        attestation.verify(bytes.fromhex(signatures[0]), b"wire-mpc test-signing v1\0" + message)
        attestation_ok = True
    except InvalidSignature:
        attestation_ok = False
    internal = bytes.fromhex(keys["custody"])[1:]
    output = PublicKeyXOnly(internal)
    output.tweak_add(tagged("TapTweak", internal))
    custody_ok = output.verify(
        bytes.fromhex(signatures[1]), tagged("wire-mpc/test-signing", message)
    )
    return {
        "attestation_openssl_ed25519": attestation_ok,
        "custody_libsecp256k1_bip340": custody_ok,
    }


class Console:
    """One operator organisation at its node: `mpc_operator` on that node's API socket, with
    its own session file. Passwords come from files; TOTP codes from the enrolment's secret
    (in real life, the operators' authenticator apps)."""

    def __init__(self, node: DevNode, root: Path, line: str | None = None) -> None:
        self.node = node
        # The node's API socket, or a serial line to the node (an operator at the machine).
        self.endpoint = ["--line", line] if line else ["--socket", str(node.api_socket)]
        self.home = root / f"{node.node_id}-operators"
        self.home.mkdir(mode=0o700)
        self.authenticator = Authenticator()  # the TOTP app of this organisation's users

    def run(self, *args: str, user: str = "operator", failed_ok: bool = False) -> Any:
        """`mpc_operator --json ARGS` as `user`; its answer. With `failed_ok`, a ceremony
        that ran and failed (exit 1, its answer printed) is an answer too."""
        command = [sys.executable, "-m", "api.mpc_operator", "--json", *self.endpoint,
                   "--session-file", str(self.home / f"{user}.session"), *args]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              check=False, cwd=REPO)  # fmt: skip
        if done.returncode != 0 and not (failed_ok and done.returncode == 1 and done.stdout):
            raise RuntimeError(f"mpc_operator {' '.join(args)} on {self.node.node_id}: "
                               f"exit {done.returncode}: {done.stderr.strip()}")  # fmt: skip
        return json.loads(done.stdout)

    def password_file(self, user: str) -> str:
        path = self.home / f"{user}.password"
        if not path.exists():
            path.write_text(f"{self.node.node_id} {user} demo passphrase\n")
            path.chmod(0o600)
        return str(path)

    def enrol(self, user: str, role: str, by: str | None) -> None:
        """The first admin (`by` None) needs no session; every later user is enrolled by
        `by`, with a fresh code of theirs."""
        args = ["user", "create", "--username", user, "--role", role,
                "--password-file", self.password_file(user)]  # fmt: skip
        if by is not None:
            args = ["--totp", self.code(by), *args]
        answer = self.run(*args, user=by or user)
        self.authenticator.add(user, answer["otpauth_uri"])

    def code(self, user: str) -> str:
        return self.authenticator.code(user)

    def login(self, user: str) -> None:
        self.run("login", "--username", user, "--password-file", self.password_file(user),
                 "--code", self.code(user), user=user)  # fmt: skip


def wait_for_view(consoles: list[Console], height: int, within: float = 30.0) -> dict[str, Any]:
    """Every node's view of bitcoind (`mpc_operator status`) once all have reached `height`
    (bounded wait)."""
    deadline = time.monotonic() + within
    while True:
        views = {c.node.node_id: c.run("status")["bitcoin"] for c in consoles}
        if all(v["view_height"] == height for v in views.values()):
            return views
        if time.monotonic() > deadline:
            return views
        time.sleep(0.2)


def mine(bitcoind: BitcoinNetwork, blocks: int) -> int:
    bitcoind.mine(blocks)
    return int(bitcoind.call("getblockcount"))


def spent_outputs(bitcoind: BitcoinNetwork, raw: str) -> list[dict[str, Any]]:
    """What each input of a transaction spends (script and amount), for checking it again."""
    spent = []
    for vin in bitcoind.call("decoderawtransaction", raw)["vin"]:
        previous = bitcoind.call("getrawtransaction", vin["txid"], 1)["vout"][vin["vout"]]
        spent.append({"script": previous["scriptPubKey"]["hex"],
                      "amount_sats": round(float(previous["value"]) * 100_000_000)})  # fmt: skip
    return spent


def confirmed_everywhere(consoles: list[Console], withdrawal: str) -> bool:
    for console in consoles:
        listing = console.run("payouts")["withdrawals"]
        if not any(w["withdrawal"] == withdrawal and w["state"] == "confirmed" for w in listing):
            return False
    return True


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="wire-demo-"))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    step("starting Bitcoin Core on regtest: a miner and one bitcoind per node, peered over P2P")
    bitcoind = BitcoinNetwork(root / "bitcoin", nodes=3)
    bitcoind.start()
    version = bitcoind.miner.call("getnetworkinfo")["subversion"]
    print(f"   {version} from {bitcoind.binary}, height 101")
    for i, node in enumerate(bitcoind.nodes, 1):
        print(f"   node-{i}'s bitcoind: RPC {node.rpc_url}, ZMQ {node.zmq_endpoint}")
    section = bitcoind.sections(3, poll_seconds=1)
    wire = WireSimulator().start()
    print(f"   the simulated Wire system: burn feed and reports at {wire.url}")
    cluster = DevCluster(
        root, parties=3, threshold=2, bitcoind=section, api=True,
        wire={"burn_feed_url": wire.url, "burn_authority_key": wire.authority_key.hex(),
              "paid_report_url": f"{wire.url}/paid", "feed_poll_seconds": 1},
    )  # fmt: skip
    try:
        step("provisioning three nodes: SoftHSM2 tokens, identity keys, CURVE keys, configs")
        cluster.create()
        timings["provision_s"] = round(time.perf_counter() - started, 2)
        for node in cluster.nodes.values():
            print(f"   {node.node_id}: identity {node.identity_public[:16]}…  port {node.port}")

        step("starting wire-mpcd and wire-api (gunicorn on a Unix socket) on every node")
        mark = time.perf_counter()
        cluster.start()
        timings["start_s"] = round(time.perf_counter() - mark, 2)
        consoles = [Console(node, root) for node in cluster.nodes.values()]

        step("each organisation creates its first admin, who enrols an operator (mpc_operator)")
        for console in consoles:
            console.enrol("admin", "admin", None)  # the first user: no session needed
            console.login("admin")
            console.enrol("operator", "operator", "admin")
            console.login("operator")
            print(f"   {console.node.node_id}: admin and operator enrolled (password + TOTP), "
                  "operator logged in")  # fmt: skip
        report = consoles[0].run("test-communication")
        for peer, state in report["peers"].items():
            print(f"   node-1 -> {peer}: authenticated {state['authenticated']}, "
                  f"round trip {state['round_trip_ms']} ms")  # fmt: skip

        step("distributed key generation: `mpc_operator dkg --ceremony-id demo-dkg` on each node")
        mark = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda c: c.run("dkg", "--ceremony-id", "demo-dkg"), consoles))
        timings["dkg_s"] = round(time.perf_counter() - mark, 3)
        if any(r["state"] != "completed" for r in results):
            print(json.dumps(results, indent=2))
            return 1
        infos = [console.run("key-info") for console in consoles]
        keys = {name: infos[0]["keys"][name][0]["group_key"] for name in ("attestation", "custody")}
        same = all({n: i["keys"][n][0]["group_key"] for n in keys} == keys for i in infos)
        for name in keys:
            fingerprint = infos[0]["keys"][name][0]["fingerprint"]
            print(f"   {name:11} key {keys[name]}  fingerprint {fingerprint}")
        print(f"   every node reports the same keys: {same}")

        step(f"test signing with both keys by nodes 1 and 2: {MESSAGE!r}")
        consoles[1].run("test-signing", "--message", MESSAGE, "--approve-only")
        mark = time.perf_counter()
        signed = consoles[0].run("test-signing", "--message", MESSAGE)
        timings["signing_ms"] = round((time.perf_counter() - mark) * 1e3, 2)
        if signed["state"] != "completed":
            print(json.dumps(signed, indent=2))
            return 1
        checks = verify(keys, MESSAGE.encode(), signed["signatures"])
        print(f"   attestation signature {signed['signatures'][0][:32]}…")
        print(f"   custody signature     {signed['signatures'][1][:32]}…")
        print(f"   independent verification: {checks}")

        step("a deposit to the address of Wire recipient 'wire:alice', mined to 6 blocks")
        answers = [c.run("deposit-address", "--recipient", "wire:alice") for c in consoles]
        address = answers[0]["address"]
        print(f"   deposit address {address} (the same on every node: "
              f"{len({a['address'] for a in answers}) == 1})")  # fmt: skip
        deposit_txid = bitcoind.call("sendtoaddress", address, "0.5")
        chain = consoles[0].run("payouts")["payout_chain"]
        genesis_txid = bitcoind.call("sendtoaddress", chain["custody_address"], "0.0001")
        print(f"   and 10000 sat to the custody address {chain['custody_address']}:")
        print("   its first output is the genesis of the payout chain every withdrawal extends")
        tip = mine(bitcoind, 6)
        seen = wait_for_view(consoles, tip)
        for node_id, view in seen.items():
            print(f"   {node_id}: bitcoind {view['sync']} at {view['view_height']}, "
                  f"custody outputs {view['custody_utxos']} ({view['custody_sats']} sat), "
                  f"deposits need {view['required_confirmations']} confirmations")  # fmt: skip
        deposit = {
            "recipient": "wire:alice",
            "address": address,
            "txid": deposit_txid,
            "confirmations": 6,
            "seen_by_every_node": all(v["custody_sats"] == 50_010_000 for v in seen.values()),
            "payout_chain_genesis": consoles[0].run("payouts")["payout_chain"]["genesis"],
        }
        if not str(deposit["payout_chain_genesis"]).startswith(genesis_txid):
            print(f"   the payout chain did not start at {genesis_txid}: {deposit}")
            return 1

        step("the mint attestation: `mpc_operator test-attestation` (node 1 coordinates)")
        mark = time.perf_counter()
        attested = consoles[0].run("test-attestation")
        timings["attestation_ms"] = round((time.perf_counter() - mark) * 1e3, 2)
        (attestation,) = attested["attestations"]
        decoded = verify_attestation(bytes.fromhex(attestation["message"]),
                                     bytes.fromhex(attestation["signature"]),
                                     bytes.fromhex(keys["attestation"]))  # fmt: skip
        print(f"   attestation {attestation['sequence']}: {decoded.amount_sats} sat to "
              f"{decoded.recipient} for {decoded.txid}:{decoded.vout}, signed by "
              f"{attested['signers']}")  # fmt: skip
        print(f"   message   {attestation['message'][:48]}…")
        print(f"   signature {attestation['signature'][:48]}…")

        step("a burn on the simulated Wire system, paid by a withdrawal from the custody key")
        destination = bitcoind.call("getnewaddress")
        burn = wire.burn(destination, 20_000_000, burn_id="demo-burn-1")
        print(f"   burn {burn['record']['burn_id']}: 20000000 sat to {destination}, signed by "
              "the burn authority")  # fmt: skip
        wait_until(lambda: all(any(b["burn_id"] == "demo-burn-1" for b in c.run("payouts")["burns"])
                          for c in consoles))  # fmt: skip
        print("   every node read it from the feed and verified it itself")
        mark = time.perf_counter()
        paid = consoles[0].run("test-burn")
        timings["withdrawal_ms"] = round((time.perf_counter() - mark) * 1e3, 2)
        (withdrawal,) = paid["withdrawals"]
        print(f"   withdrawal {withdrawal['withdrawal']}: transaction {withdrawal['txid']} "
              f"({withdrawal['payouts']} payout, fee {withdrawal['fee']} sat) signed by "
              f"{withdrawal['signers']} and {withdrawal['state']}")  # fmt: skip
        tip = mine(bitcoind, 6)
        wait_for_view(consoles, tip)
        wait_until(lambda: confirmed_everywhere(consoles, withdrawal["withdrawal"]))
        wait_until(lambda: wire.paid_reports)
        print(f"   confirmed six times on every node; the Wire system was told: "
              f"{wire.paid_reports[0]}")  # fmt: skip
        withdrawal_summary = {
            "burn": burn,
            "burn_authority_key": wire.authority_key.hex(),
            "txid": withdrawal["txid"],
            "transaction": withdrawal["transaction"],
            "spent": spent_outputs(bitcoind, withdrawal["transaction"]),
            "confirmations": int(bitcoind.call("getrawtransaction", withdrawal["txid"], 1)
                                 ["confirmations"]),
            "paid_report": wire.paid_reports[0],
        }  # fmt: skip

        step("fee consolidation: three fee outputs at the reservoir swept to one address")
        reservoir = consoles[0].run("fee-reservoir")["address"]
        for amount in ("0.0001", "0.0002", "0.0003"):
            bitcoind.call("sendtoaddress", reservoir, amount)
        tip = mine(bitcoind, 6)
        wait_for_view(consoles, tip)
        sweep_to = bitcoind.call("getnewaddress")
        consoles[1].run(
            "--totp",
            consoles[1].code("operator"),
            "test-consolidate-fees",
            "--address",
            sweep_to,
            "--approve-only",
        )
        swept = consoles[0].run(
            "--totp", consoles[0].code("operator"), "test-consolidate-fees", "--address", sweep_to
        )
        print(f"   reservoir {reservoir}: 60000 sat in 3 outputs -> {sweep_to} in "
              f"{swept['txid']} (fee {swept['fee']} sat), {swept['state']}; node 2's operator "
              "approved the address")  # fmt: skip
        tip = mine(bitcoind, 6)
        wait_for_view(consoles, tip)
        wait_until(lambda: confirmed_everywhere(consoles[:2], swept["withdrawal"]))
        print(
            "   confirmed six times on nodes 1 and 2 (node 3's operator approved no address, "
            "so node 3 declined it)"
        )
        consolidation_summary = {
            "reservoir": reservoir,
            "destination": sweep_to,
            "txid": swept["txid"],
            "transaction": swept["transaction"],
            "spent": spent_outputs(bitcoind, swept["transaction"]),
        }
    finally:
        cluster.close()
        bitcoind.stop()
        wire.stop()
    print("\nall nodes stopped")
    summary = {
        "demo": "local 2-of-3 cluster: DKG, test signing, deposit and mint attestation, burn "
        "and withdrawal, fee consolidation",
        "group_keys": keys,
        "same_keys_on_every_node": same,
        "test_message": MESSAGE,
        "signers": signed["signers"],
        "signatures": {"attestation": signed["signatures"][0], "custody": signed["signatures"][1]},
        "verified": checks,
        "deposit": deposit,
        "attestation": {"message": attestation["message"], "signature": attestation["signature"]},
        "withdrawal": withdrawal_summary,
        "consolidation": consolidation_summary,
        "timings": timings,
    }
    print("\nSummary (JSON):")
    print(json.dumps(summary, indent=2))
    return 0 if same and all(checks.values()) and deposit["seen_by_every_node"] else 1


if __name__ == "__main__":
    sys.exit(main())
