"""Burn records read from a simulated Wire system over real HTTP: what verifies, what is
refused and with which reason, the external proof verifier, and the feed's paging, restart
and refusal of garbage."""

from __future__ import annotations

import copy
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.chain.address import address_of_script
from appliance.wire.burns import (
    BurnPolicy,
    BurnRecord,
    BurnRefused,
    VerifiedBurn,
    verify_burn,
)
from appliance.wire.feed import MAX_RESPONSE, BurnFeed, FeedError
from tests.wire.simulator import WireSimulator

P2TR = b"\x51\x20" + bytes(range(32))
P2WPKH = b"\x00\x14" + bytes(range(100, 120))
ADDRESS = address_of_script(P2TR, "regtest")
ADDRESS_P2WPKH = address_of_script(P2WPKH, "regtest")


@pytest.fixture
def wire() -> Iterator[WireSimulator]:
    with WireSimulator() as simulator:
        yield simulator


@pytest.fixture
def policy(wire: WireSimulator) -> BurnPolicy:
    return BurnPolicy(network="regtest", authority_key=wire.authority_key)


def never_seen(burn_id: str) -> bool:
    return False


def fetch_one(wire: WireSimulator) -> Any:
    """The last entry of the simulator, as a node reads it over HTTP."""
    items, _ = BurnFeed(wire.url).fetch(str(len(wire.entries) - 1))
    assert len(items) == 1
    return items[0]


def refusal(item: Any, policy: BurnPolicy, seen: Any = never_seen) -> BurnRefused:
    with pytest.raises(BurnRefused) as caught:
        verify_burn(item, policy, seen)
    return caught.value


def test_good_burns_verify_with_their_scripts(wire, policy) -> None:
    wire.burn(ADDRESS, 50_000, burn_id="wire:tx.1-a_b")
    wire.burn(ADDRESS_P2WPKH, 10_000)
    items, cursor = BurnFeed(wire.url).fetch(None)
    assert cursor == "2"
    taproot, segwit = (verify_burn(item, policy, never_seen) for item in items)
    assert taproot == VerifiedBurn(BurnRecord.from_json(wire.entries[0]["record"]), P2TR, "p2tr")
    assert taproot.record.burn_id == "wire:tx.1-a_b"
    assert taproot.record.amount_sats == 50_000
    assert (segwit.script, segwit.script_type) == (P2WPKH, "p2wpkh")
    assert segwit.record.destination == ADDRESS_P2WPKH


def test_canonical_bytes_are_prefixed_sorted_compact_json(wire) -> None:
    record = BurnRecord.from_json(wire.burn(ADDRESS, 12_345, burn_id="b1")["record"])
    canonical = record.canonical()
    prefix, body = canonical.split(b"\0", 1)
    assert prefix == b"wire-mpc burn v1"
    assert b" " not in body
    assert list(json.loads(body)) == sorted(json.loads(body))
    assert json.loads(body) == record.to_json()
    # Field order in the feed does not matter: the signature is over the parsed record.
    shuffled = dict(reversed(list(wire.entries[0]["record"].items())))
    assert BurnRecord.from_json(shuffled).canonical() == canonical


def test_signature_flipped_bit_is_refused(wire, policy) -> None:
    entry = wire.burn(ADDRESS, 50_000)
    signature = bytearray(bytes.fromhex(entry["signature"]))
    signature[10] ^= 0x01
    wire.add_raw({"record": entry["record"], "signature": signature.hex()})
    assert refusal(fetch_one(wire), policy).reason == "bad-signature"


def test_tampered_record_is_refused(wire, policy) -> None:
    entry = copy.deepcopy(wire.burn(ADDRESS, 50_000))
    entry["record"]["amount_sats"] = 5_000_000
    wire.add_raw(entry)
    assert refusal(fetch_one(wire), policy).reason == "bad-signature"


def test_signature_by_another_key_is_refused(wire, policy) -> None:
    record = wire.burn(ADDRESS, 50_000)["record"]
    wire.add_raw({"record": record, "signature": wire.sign(record, Ed25519PrivateKey.generate())})
    refused = refusal(fetch_one(wire), policy)
    assert (refused.reason, refused.burn_id) == ("bad-signature", record["burn_id"])


@pytest.mark.parametrize(
    "signature", ["", "00" * 63, "00" * 65, "zz" * 64, " " + "00" * 63 + " 0", "00" * 32]
)
def test_signature_of_wrong_size_or_not_hex_is_refused(wire, policy, signature) -> None:
    wire.add_raw({"record": wire.burn(ADDRESS, 50_000)["record"], "signature": signature})
    assert refusal(fetch_one(wire), policy).reason == "bad-signature"


def test_wrong_network_is_refused(wire, policy) -> None:
    wire.burn(address_of_script(P2TR, "mainnet"), 50_000, network="mainnet")
    refused = refusal(fetch_one(wire), policy)
    assert refused.reason == "wrong-network"
    assert "mainnet" in refused.message


@pytest.mark.parametrize(
    "destination",
    [
        address_of_script(P2TR, "mainnet"),  # mainnet address in a regtest burn
        address_of_script(P2TR, "testnet"),
        ADDRESS[:-1] + ("q" if ADDRESS[-1] != "q" else "p"),  # broken checksum
        "not an address",
        "bcrt1" + "q" * 40,
        "x",
    ],
)
def test_bad_destination_is_refused(wire, policy, destination) -> None:
    wire.burn(destination, 50_000)
    refused = refusal(fetch_one(wire), policy)
    assert refused.reason == "bad-destination"
    assert refused.message.startswith("destination: ")


@pytest.mark.parametrize(
    ("version", "program"), [(2, bytes(range(32))), (1, bytes(20)), (16, bytes(2))]
)
def test_other_witness_versions_are_not_paid_as_known_types(wire, policy, version, program) -> None:
    """Valid BIP350 addresses of versions and sizes the bridge does not pay to must not be
    taken for P2TR or P2WPKH outputs that merely share the program."""
    from bitcoinlib.encoding import pubkeyhash_to_addr_bech32

    wire.burn(pubkeyhash_to_addr_bech32(program, prefix="bcrt", witver=version), 50_000)
    assert refusal(fetch_one(wire), policy).reason == "bad-destination"


def test_upper_case_bech32_pays_the_same_script(wire, policy) -> None:
    """Upper-case bech32 is valid (BIP173): it names the same output as lower case."""
    wire.burn(ADDRESS.upper(), 50_000)
    upper = verify_burn(fetch_one(wire), policy, never_seen)
    wire.burn(ADDRESS, 50_000)
    assert upper.script == verify_burn(fetch_one(wire), policy, never_seen).script


def test_an_address_the_parser_chokes_on_is_refused_not_raised(wire, policy) -> None:
    """A base58 string the parser fails on with an error of its own comes out as a
    refusal, not as an exception the caller does not expect."""
    wire.burn("1" * 34, 50_000)
    assert refusal(fetch_one(wire), policy).reason == "bad-destination"


@pytest.mark.parametrize(("address", "dust"), [(ADDRESS, 330), (ADDRESS_P2WPKH, 294)])
def test_below_dust_is_refused_at_the_type_s_limit(wire, address, dust) -> None:
    lenient = BurnPolicy(network="regtest", authority_key=wire.authority_key, min_amount_sats=0)
    wire.burn(address, dust - 1)
    assert refusal(fetch_one(wire), lenient).reason == "below-dust"
    wire.burn(address, dust)
    assert verify_burn(fetch_one(wire), lenient, never_seen).record.amount_sats == dust
    wire.burn(address, 0)
    assert refusal(fetch_one(wire), lenient).reason == "below-dust"


def test_amounts_outside_the_bounds_are_refused(wire, policy) -> None:
    for amount in (policy.max_amount_sats + 1, policy.min_amount_sats - 1, 2**63 - 1):
        wire.burn(ADDRESS, amount)
        refused = refusal(fetch_one(wire), policy)
        assert (refused.reason, str(amount) in refused.message) == ("amount-out-of-bounds", True)
    for amount in (policy.max_amount_sats, policy.min_amount_sats):
        wire.burn(ADDRESS, amount)
        assert verify_burn(fetch_one(wire), policy, never_seen).record.amount_sats == amount


def _with(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = {**record, **changes}
    return {key: value for key, value in changed.items() if value is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"amount_sats": _DROP}, "missing amount_sats"),
        ({"burned_at": _DROP}, "missing burned_at"),
        ({"memo": "hello"}, "unknown field 'memo'"),
        ({"amount_sats": "50000"}, "amount_sats"),
        ({"amount_sats": 50_000.0}, "amount_sats"),
        ({"amount_sats": True}, "amount_sats"),
        ({"amount_sats": -1}, "amount_sats"),
        ({"amount_sats": 2**64}, "amount_sats"),
        ({"wire_height": None}, "wire_height"),
        ({"wire_height": -5}, "wire_height"),
        ({"burned_at": [1]}, "burned_at"),
        ({"destination": 42}, "destination"),
        ({"destination": ""}, "destination"),
        ({"network": "bitcoin"}, "network"),
        ({"network": None}, "network"),
        ({"burn_id": "burn 1"}, "burn_id"),
        ({"burn_id": "burn/1"}, "burn_id"),
        ({"burn_id": "burn-1\n"}, "burn_id"),
        ({"burn_id": "bürn"}, "burn_id"),
        ({"burn_id": ""}, "burn_id"),
        ({"burn_id": "b" * 129}, "burn_id"),
        ({"burn_id": 7}, "burn_id"),
    ],
)
def test_malformed_records_are_refused(wire, policy, change, where) -> None:
    entry = wire.burn(ADDRESS, 50_000, burn_id="good-id")
    wire.add_raw({"record": _with(entry["record"], **change), "signature": entry["signature"]})
    refused = refusal(fetch_one(wire), policy)
    assert refused.reason == "malformed"
    assert where in refused.message
    # The id is quoted only when it is one: a hostile id never reaches the audit log.
    assert refused.burn_id == ("good-id" if "burn_id" not in change else "?")


@pytest.mark.parametrize(
    "item",
    [
        None,
        [],
        "entry",
        {},
        {"record": None, "signature": "00" * 64},
        {"record": [], "signature": "00" * 64},
        {"signature": "00" * 64},
        {"record": {"burn_id": "x"}},
        {"record": {"burn_id": "x"}, "signature": 5},
        {"record": {"burn_id": "x"}, "signature": "00" * 64, "extra": 1},
    ],
)
def test_malformed_entries_are_refused(wire, policy, item) -> None:
    wire.add_raw(item)
    assert refusal(fetch_one(wire), policy).reason == "malformed"


def test_malformed_comes_before_signature(wire, policy) -> None:
    record = wire.burn(ADDRESS, 50_000)["record"]
    wire.add_raw({"record": {**record, "extra": 1}, "signature": "zz"})
    assert refusal(fetch_one(wire), policy).reason == "malformed"


def test_duplicate_is_refused_last(wire, policy) -> None:
    taken: set[str] = set()
    entry = wire.burn(ADDRESS, 50_000, burn_id="once")
    first = verify_burn(fetch_one(wire), policy, taken.__contains__)
    taken.add(first.record.burn_id)
    wire.add_raw(entry)  # replayed by the feed
    refused = refusal(fetch_one(wire), policy, taken.__contains__)
    assert (refused.reason, refused.burn_id) == ("duplicate", "once")
    # A forged entry reusing a taken id is refused for its forgery, not as a duplicate.
    forged = {"record": entry["record"], "signature": "11" * 64}
    assert refusal(forged, policy, taken.__contains__).reason == "bad-signature"


def test_checks_run_in_order(wire, policy) -> None:
    """A record that is wrong in every later way is refused for the first of them."""
    mainnet = address_of_script(P2TR, "mainnet")
    wire.burn(mainnet, 1, network="mainnet", burn_id="all-bad")
    always_seen = lambda burn_id: True  # noqa: E731
    assert refusal(fetch_one(wire), policy, always_seen).reason == "wrong-network"
    wire.burn(mainnet, 1, burn_id="all-bad")
    assert refusal(fetch_one(wire), policy, always_seen).reason == "bad-destination"
    wire.burn(ADDRESS, 1, burn_id="all-bad")
    assert refusal(fetch_one(wire), policy, always_seen).reason == "below-dust"
    wire.burn(ADDRESS, 1000, burn_id="all-bad")
    assert refusal(fetch_one(wire), policy, always_seen).reason == "amount-out-of-bounds"


VERIFIER = """\
import json, sys, time
document = json.load(sys.stdin)
assert set(document) == {"record", "signature"}, document
mode = sys.argv[1]
if mode == "accept":
    sys.exit(0 if document["record"]["burn_id"].startswith("ok") else 3)
if mode == "reject":
    sys.stderr.write("no such burn on the Wire chain: " + document["record"]["burn_id"] + "x" * 500)
    sys.exit(1)
if mode == "sleep":
    time.sleep(30)
"""


@pytest.fixture
def verifier(tmp_path: Path) -> Path:
    script = tmp_path / "verify_proof.py"
    script.write_text(VERIFIER)
    return script


def _with_verifier(policy: BurnPolicy, *argv: str, timeout: float = 10.0) -> BurnPolicy:
    return BurnPolicy(
        network=policy.network,
        authority_key=policy.authority_key,
        proof_verifier=argv,
        verifier_timeout=timeout,
    )


def test_external_proof_accepts(wire, policy, verifier) -> None:
    accepting = _with_verifier(policy, sys.executable, str(verifier), "accept")
    wire.burn(ADDRESS, 50_000, burn_id="ok-1")
    assert verify_burn(fetch_one(wire), accepting, never_seen).record.burn_id == "ok-1"
    wire.burn(ADDRESS, 50_000, burn_id="nope-1")
    refused = refusal(fetch_one(wire), accepting)
    assert refused.reason == "external-proof-refused"
    assert "status 3" in refused.message


def test_external_proof_refusal_quotes_its_stderr(wire, policy, verifier) -> None:
    rejecting = _with_verifier(policy, sys.executable, str(verifier), "reject")
    wire.burn(ADDRESS, 50_000, burn_id="ghost")
    refused = refusal(fetch_one(wire), rejecting)
    assert refused.reason == "external-proof-refused"
    assert "no such burn on the Wire chain: ghost" in refused.message
    assert "x" * 200 not in refused.message  # only the first 200 characters


def test_external_proof_timeout_is_refused(wire, policy, verifier) -> None:
    sleeping = _with_verifier(policy, sys.executable, str(verifier), "sleep", timeout=0.5)
    wire.burn(ADDRESS, 50_000)
    refused = refusal(fetch_one(wire), sleeping)
    assert refused.reason == "external-proof-refused"
    assert "within 0.5 s" in refused.message


def test_external_proof_that_cannot_start_is_refused(wire, policy, tmp_path) -> None:
    missing = _with_verifier(policy, str(tmp_path / "no-such-verifier"))
    wire.burn(ADDRESS, 50_000)
    refused = refusal(fetch_one(wire), missing)
    assert refused.reason == "external-proof-refused"
    assert "could not be started" in refused.message


def test_external_proof_runs_only_for_signed_records(wire, policy, verifier, tmp_path) -> None:
    marker = tmp_path / "ran"
    touching = _with_verifier(policy, sys.executable, "-c", f"open({str(marker)!r}, 'w').close()")
    entry = wire.burn(ADDRESS, 50_000)
    assert refusal({**entry, "signature": "00" * 64}, touching).reason == "bad-signature"
    assert not marker.exists()
    verify_burn(entry, touching, never_seen)
    assert marker.exists()


def test_feed_pages_with_a_cursor(wire, policy) -> None:
    burned = [wire.burn(ADDRESS, 10_000 + i)["record"]["burn_id"] for i in range(7)]
    feed = BurnFeed(wire.url, max_page=3)
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        items, next_cursor = feed.fetch(cursor)
        if not items:
            assert next_cursor == cursor  # an empty page leaves the cursor where it was
            break
        pages.append(items)
        cursor = next_cursor
    assert [len(page) for page in pages] == [3, 3, 1]
    ids = [verify_burn(i, policy, never_seen).record.burn_id for p in pages for i in p]
    assert ids == burned
    assert wire.feed_requests[0] == "/burns?limit=3"
    assert wire.feed_requests[1] == "/burns?after=3&limit=3"


def test_restart_from_persisted_cursor_loses_and_repeats_nothing(wire, tmp_path) -> None:
    state = tmp_path / "cursor"
    taken: list[str] = []

    def poll_once(feed: BurnFeed) -> int:
        """One poll as a node does it: take the page on, then persist the cursor."""
        cursor = state.read_text() if state.exists() else None
        items, next_cursor = feed.fetch(cursor)
        taken.extend(item["record"]["burn_id"] for item in items)
        if next_cursor is not None:
            state.write_text(next_cursor)
        return len(items)

    burned = [wire.burn(ADDRESS, 20_000)["record"]["burn_id"] for _ in range(5)]
    assert poll_once(BurnFeed(wire.url, max_page=2)) == 2
    assert poll_once(BurnFeed(wire.url, max_page=2)) == 2
    # The node restarts: a new feed object, only the persisted cursor survives.
    burned += [wire.burn(ADDRESS, 20_000)["record"]["burn_id"] for _ in range(3)]
    restarted = BurnFeed(wire.url, max_page=2)
    while poll_once(restarted):
        pass
    assert taken == burned
    assert len(set(taken)) == 8
    assert state.read_text() == "8"


def test_a_bad_item_does_not_hold_back_the_others(wire, policy) -> None:
    wire.burn(ADDRESS, 50_000, burn_id="before")
    wire.add_raw({"record": "garbage", "signature": 1})
    wire.burn(ADDRESS_P2WPKH, 50_000, burn_id="after")
    items, cursor = BurnFeed(wire.url).fetch(None)
    assert len(items) == 3
    assert cursor == "3"
    outcomes: list[str] = []
    for item in items:
        try:
            outcomes.append(verify_burn(item, policy, never_seen).record.burn_id)
        except BurnRefused as refused:
            outcomes.append(refused.reason)
    assert outcomes == ["before", "malformed", "after"]


@pytest.mark.parametrize(
    ("status", "body", "complaint"),
    [
        (500, b'{"burns": [], "cursor": "0"}', "HTTP 500"),
        (404, b"not found", "HTTP 404"),
        (204, b"", "HTTP 204"),
        (200, b"<html>hello</html>", "not JSON"),
        (200, b"\xff\xfe", "not JSON"),
        (200, b'{"burns": [], "cursor": NaN}', "not JSON"),
        (200, b"[" * 100_000, "not JSON"),
        (200, b"[]", "exactly burns and cursor"),
        (200, b'{"burns": []}', "exactly burns and cursor"),
        (200, b'{"burns": [], "cursor": "1", "more": true}', "exactly burns and cursor"),
        (200, b'{"burns": {}, "cursor": "1"}', "burns must be a list"),
        (200, b'{"burns": [], "cursor": 1}', "cursor must be a string"),
        (200, b'{"burns": [], "cursor": ""}', "cursor must be a string"),
        (200, b'{"burns": [{}], "cursor": null}', "no cursor"),
        (200, b'{"burns": [1, 2, 3, 4], "cursor": "4"}', "4 items"),
    ],
)
def test_feed_garbage_is_refused(wire, status, body, complaint) -> None:
    wire.feed_override = (status, body)
    with pytest.raises(FeedError, match=complaint):
        BurnFeed(wire.url, max_page=3).fetch(None)


def test_feed_answer_over_8_mib_is_refused(wire) -> None:
    padding = b" " * MAX_RESPONSE
    wire.feed_override = (200, b'{"burns": [], "cursor": "0"}' + padding)
    with pytest.raises(FeedError, match="exceeds"):
        BurnFeed(wire.url).fetch(None)
    wire.feed_override = (200, b'{"burns": [], "cursor": "0"}' + padding[:-100])
    assert BurnFeed(wire.url).fetch("0") == ([], "0")


def test_feed_that_is_down_or_silent_is_refused(wire) -> None:
    url = wire.url
    wire.stop()
    with pytest.raises(FeedError, match="could not be read"):
        BurnFeed(url, timeout=2).fetch(None)

    class Silent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(10)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    release = threading.Event()
    server = HTTPServer(("127.0.0.1", 0), Silent)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        silent = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(FeedError, match="could not be read"):
            BurnFeed(silent, timeout=0.5).fetch(None)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_feed_refuses_urls_it_should_not_open() -> None:
    for url in ("file:///etc/passwd", "ftp://wire.example/", "wire.example/burns", "http://"):
        with pytest.raises(ValueError, match="must be http"):
            BurnFeed(url)


def test_simulator_takes_attestation_and_paid_reports(wire) -> None:
    import urllib.request

    for path, body in (("/attestations", {"mint": 1}), ("/paid", {"burn_id": "b", "txid": "t"})):
        request = urllib.request.Request(  # noqa: S310
            wire.url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            assert (response.status, json.load(response)) == (200, {"ack": True})
    assert wire.received_attestations == [{"mint": 1}]
    assert wire.paid_reports == [{"burn_id": "b", "txid": "t"}]


def test_policy_refuses_bad_configuration(wire) -> None:
    key = wire.authority_key
    for bad, complaint in (
        ({"network": "bitcoin", "authority_key": key}, "network"),
        ({"network": "regtest", "authority_key": key[:31]}, "32-byte"),
        (
            {
                "network": "regtest",
                "authority_key": key,
                "min_amount_sats": 10,
                "max_amount_sats": 9,
            },
            "bounds",
        ),
        ({"network": "regtest", "authority_key": key, "proof_verifier": ()}, "argv"),
        ({"network": "regtest", "authority_key": key, "verifier_timeout": 0}, "timeout"),
    ):
        with pytest.raises(ValueError, match=complaint):
            BurnPolicy(**bad)
