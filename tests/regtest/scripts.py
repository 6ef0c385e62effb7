"""Output scripts as bitcoind names and shows them: type, asm, descriptor, regtest address,
and the policy facts that depend on the script alone (standardness, dust threshold).
"""

from __future__ import annotations

from collections.abc import Iterator

from coincurve.keys import PublicKeyXOnly
from embit import base58, bech32

__all__ = [
    "ScriptError",
    "address_to_script",
    "descriptor",
    "dust_threshold",
    "is_push_only",
    "is_unspendable",
    "iter_ops",
    "script_address",
    "script_asm",
    "script_type",
    "witness_program",
]

HRP = "bcrt"
_P2PKH_PREFIX = 0x6F
_P2SH_PREFIX = 0xC4
OP_0, OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4 = 0x00, 0x4C, 0x4D, 0x4E
OP_1NEGATE, OP_1, OP_16, OP_RETURN = 0x4F, 0x51, 0x60, 0x6A
OP_CHECKSIG, OP_CHECKMULTISIG = 0xAC, 0xAE
_MAX_OP_RETURN_RELAY = 83  # bitcoind's -datacarriersize default (whole script)
_DUST_RELAY_FEE = 3000  # sat/kvB, bitcoind's -dustrelayfee default
_PAY_TO_ANCHOR = bytes.fromhex("51024e73")

_OPCODES_FROM_NOP = """
OP_NOP OP_VER OP_IF OP_NOTIF OP_VERIF OP_VERNOTIF OP_ELSE OP_ENDIF OP_VERIFY
OP_RETURN OP_TOALTSTACK OP_FROMALTSTACK OP_2DROP OP_2DUP OP_3DUP OP_2OVER OP_2ROT
OP_2SWAP OP_IFDUP OP_DEPTH OP_DROP OP_DUP OP_NIP OP_OVER OP_PICK OP_ROLL OP_ROT
OP_SWAP OP_TUCK OP_CAT OP_SUBSTR OP_LEFT OP_RIGHT OP_SIZE OP_INVERT OP_AND OP_OR
OP_XOR OP_EQUAL OP_EQUALVERIFY OP_RESERVED1 OP_RESERVED2 OP_1ADD OP_1SUB OP_2MUL
OP_2DIV OP_NEGATE OP_ABS OP_NOT OP_0NOTEQUAL OP_ADD OP_SUB OP_MUL OP_DIV OP_MOD
OP_LSHIFT OP_RSHIFT OP_BOOLAND OP_BOOLOR OP_NUMEQUAL OP_NUMEQUALVERIFY
OP_NUMNOTEQUAL OP_LESSTHAN OP_GREATERTHAN OP_LESSTHANOREQUAL OP_GREATERTHANOREQUAL
OP_MIN OP_MAX OP_WITHIN OP_RIPEMD160 OP_SHA1 OP_SHA256 OP_HASH160 OP_HASH256
OP_CODESEPARATOR OP_CHECKSIG OP_CHECKSIGVERIFY OP_CHECKMULTISIG
OP_CHECKMULTISIGVERIFY OP_NOP1 OP_CHECKLOCKTIMEVERIFY OP_CHECKSEQUENCEVERIFY
OP_NOP4 OP_NOP5 OP_NOP6 OP_NOP7 OP_NOP8 OP_NOP9 OP_NOP10 OP_CHECKSIGADD
"""  # 0x61 onwards, in opcode order

_OPCODE_NAMES = {
    OP_0: "0",
    OP_PUSHDATA1: "OP_PUSHDATA1",
    OP_PUSHDATA2: "OP_PUSHDATA2",
    OP_PUSHDATA4: "OP_PUSHDATA4",
    OP_1NEGATE: "-1",
    0x50: "OP_RESERVED",
    **{code: str(code - 0x50) for code in range(OP_1, OP_16 + 1)},
    **dict(
        enumerate(
            _OPCODES_FROM_NOP.split(),
            start=0x61,
        )
    ),
    0xFF: "OP_INVALIDOPCODE",
}

_SIGHASH_NAMES = {
    0x01: "ALL",
    0x02: "NONE",
    0x03: "SINGLE",
    0x81: "ALL|ANYONECANPAY",
    0x82: "NONE|ANYONECANPAY",
    0x83: "SINGLE|ANYONECANPAY",
}


class ScriptError(ValueError):
    """A script that cannot be read to its end (a push runs past it)."""


def iter_ops(script: bytes) -> Iterator[tuple[int, bytes | None]]:
    """Yields (opcode, pushed data or None) like CScript::GetOp."""
    i, end = 0, len(script)
    while i < end:
        op = script[i]
        i += 1
        if op > OP_PUSHDATA4:
            yield op, None
            continue
        if op < OP_PUSHDATA1:
            size = op
        else:
            width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}[op]
            if i + width > end:
                raise ScriptError("push size runs past the script")
            size = int.from_bytes(script[i : i + width], "little")
            i += width
        if i + size > end:
            raise ScriptError("push runs past the script")
        yield op, script[i : i + size]
        i += size


def is_push_only(script: bytes) -> bool:
    try:
        # bitcoind counts every opcode up to OP_16 as a push, OP_RESERVED included.
        return all(op <= OP_16 for op, _ in iter_ops(script))
    except ScriptError:
        return False


def witness_program(spk: bytes) -> tuple[int, bytes] | None:
    if not 4 <= len(spk) <= 42:
        return None
    if spk[0] != OP_0 and not OP_1 <= spk[0] <= OP_16:
        return None
    if spk[1] + 2 != len(spk):
        return None
    return (0 if spk[0] == OP_0 else spk[0] - 0x50), spk[2:]


def is_unspendable(spk: bytes) -> bool:
    return (len(spk) > 0 and spk[0] == OP_RETURN) or len(spk) > 10_000


def _is_pubkey(data: bytes) -> bool:
    if len(data) == 33:
        return data[0] in (2, 3)
    if len(data) == 65:
        return data[0] in (4, 6, 7)
    return False


def _multisig(spk: bytes) -> tuple[int, list[bytes]] | None:
    try:
        ops = list(iter_ops(spk))
    except ScriptError:
        return None
    if len(ops) < 4 or ops[-1][0] != OP_CHECKMULTISIG:
        return None
    m, n = ops[0][0], ops[-2][0]
    if not (OP_1 <= m <= OP_16 and OP_1 <= n <= OP_16):
        return None
    keys = [data for _, data in ops[1:-2]]
    if len(keys) != n - 0x50 or not all(d is not None and _is_pubkey(d) for d in keys):
        return None
    if m > n:
        return None
    return m - 0x50, [k for k in keys if k is not None]


def script_type(spk: bytes) -> str:
    """The output type by bitcoind's Solver, with its RPC names."""
    if len(spk) == 23 and spk[0] == 0xA9 and spk[1] == 0x14 and spk[22] == 0x87:
        return "scripthash"
    program = witness_program(spk)
    if program is not None:
        version, data = program
        if spk == _PAY_TO_ANCHOR:
            return "anchor"
        if version == 0 and len(data) == 20:
            return "witness_v0_keyhash"
        if version == 0 and len(data) == 32:
            return "witness_v0_scripthash"
        if version == 1 and len(data) == 32:
            return "witness_v1_taproot"
        return "witness_unknown" if version != 0 else "nonstandard"
    if spk and spk[0] == OP_RETURN and is_push_only(spk[1:]):
        return "nulldata"
    pushes_key = len(spk) in (35, 67) and spk[0] == len(spk) - 2
    if pushes_key and spk[-1] == OP_CHECKSIG and _is_pubkey(spk[1:-1]):
        return "pubkey"
    if (
        len(spk) == 25
        and spk[:3] == b"\x76\xa9\x14"
        and spk[23:] == b"\x88\xac"  # OP_EQUALVERIFY OP_CHECKSIG
    ):
        return "pubkeyhash"
    if _multisig(spk) is not None:
        return "multisig"
    return "nonstandard"


def is_standard_output(spk: bytes) -> bool:
    kind = script_type(spk)
    if kind == "nonstandard":
        return False
    if kind == "nulldata":
        return len(spk) <= _MAX_OP_RETURN_RELAY
    if kind == "multisig":
        shape = _multisig(spk)
        return shape is not None and 1 <= len(shape[1]) <= 3 and shape[0] >= 1
    return True


def dust_threshold(spk: bytes) -> int:
    """The smallest value an output of this script may carry under bitcoind's default
    -dustrelayfee: three times the cost of creating and later spending it."""
    if is_unspendable(spk):
        return 0
    output_size = 8 + len(spk) + (1 if len(spk) < 0xFD else 3)
    # A spend's input: 32+4+1+4 bytes, plus a signature and key (107 bytes, a quarter of
    # that for witness programs).
    spend_size = 67 if witness_program(spk) is not None else 148
    return (output_size + spend_size) * _DUST_RELAY_FEE // 1000


def _script_num(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _is_der_signature(sig: bytes) -> bool:
    """BIP66 strict DER plus a trailing hash type byte (bitcoind's IsValidSignatureEncoding)."""
    if not 9 <= len(sig) <= 73 or sig[0] != 0x30 or sig[1] != len(sig) - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= len(sig):
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != len(sig) or sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80:
        return False
    if len_r > 1 and sig[4] == 0 and not sig[5] & 0x80:
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    return not (len_s > 1 and sig[len_r + 6] == 0 and not sig[len_r + 7] & 0x80)


def script_asm(script: bytes, *, decode_sighash: bool = False) -> str:
    """bitcoind's ScriptToAsmStr: small pushes as numbers, others as hex, opcodes by name;
    with `decode_sighash` (scriptSigs) a DER signature's hash type is shown as [ALL] etc."""
    words: list[str] = []
    try:
        for op, data in iter_ops(script):
            if data is None:
                words.append(_OPCODE_NAMES.get(op, "OP_UNKNOWN"))
            elif len(data) <= 4:
                words.append(str(_script_num(data)))
            elif (
                decode_sighash
                and not is_unspendable(script)
                and _is_der_signature(data)
                and data[-1] in _SIGHASH_NAMES
            ):
                words.append(data[:-1].hex() + f"[{_SIGHASH_NAMES[data[-1]]}]")
            else:
                words.append(data.hex())
    except ScriptError:
        words.append("[error]")
    return " ".join(words)


def script_address(spk: bytes) -> str | None:
    kind = script_type(spk)
    if kind == "pubkeyhash":
        return base58.encode_check(bytes([_P2PKH_PREFIX]) + spk[3:23])
    if kind == "scripthash":
        return base58.encode_check(bytes([_P2SH_PREFIX]) + spk[2:22])
    program = witness_program(spk)
    if program is not None and kind != "nonstandard":
        return bech32.encode(HRP, program[0], program[1])
    return None


def address_to_script(address: str) -> bytes:
    """The output script of a regtest address; ValueError for anything else."""
    if address[:5].lower() == HRP + "1":
        version, program = bech32.decode(HRP, address)
        if version is None or program is None:
            raise ValueError("invalid bech32 address")
        data = bytes(program)
        if version == 0 and len(data) not in (20, 32):
            raise ValueError("invalid witness v0 program size")
        return bytes([0 if version == 0 else 0x50 + version, len(data)]) + data
    try:
        payload = base58.decode_check(address)
    except Exception as exc:
        raise ValueError("invalid address") from exc
    if len(payload) == 21 and payload[0] == _P2PKH_PREFIX:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if len(payload) == 21 and payload[0] == _P2SH_PREFIX:
        return b"\xa9\x14" + payload[1:] + b"\x87"
    raise ValueError("not a regtest address")


_DESC_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    'ijklmnopqrstuvwxyzABCDEFGH`#"\\ '
)
_DESC_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_DESC_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _descriptor_checksum(text: str) -> str:
    # BIP380: a BCH code over the characters' 5-bit symbols and their group classes.
    def polymod(chk: int, value: int) -> int:
        top = chk >> 35
        chk = ((chk & 0x7FFFFFFFF) << 5) ^ value
        for bit, generator in enumerate(_DESC_GENERATOR):
            if (top >> bit) & 1:
                chk ^= generator
        return chk

    chk, classes = 1, []
    for char in text:
        position = _DESC_INPUT_CHARSET.index(char)
        chk = polymod(chk, position & 31)
        classes.append(position >> 5)
        if len(classes) == 3:
            chk = polymod(chk, classes[0] * 9 + classes[1] * 3 + classes[2])
            classes = []
    if len(classes) == 1:
        chk = polymod(chk, classes[0])
    elif len(classes) == 2:
        chk = polymod(chk, classes[0] * 3 + classes[1])
    for _ in range(8):
        chk = polymod(chk, 0)
    chk ^= 1
    return "".join(_DESC_CHECKSUM_CHARSET[(chk >> (5 * (7 - i))) & 31] for i in range(8))


def _with_checksum(text: str) -> str:
    return f"{text}#{_descriptor_checksum(text)}"


def _valid_xonly(key: bytes) -> bool:
    try:
        PublicKeyXOnly(key)
    except ValueError:
        return False
    return True


def descriptor(spk: bytes) -> str:
    """What bitcoind's InferDescriptor gives for a script it holds no keys for."""
    kind = script_type(spk)
    if kind == "witness_v1_taproot" and _valid_xonly(spk[2:]):
        return _with_checksum(f"rawtr({spk[2:].hex()})")
    if kind == "pubkey":
        return _with_checksum(f"pk({spk[1:-1].hex()})")
    if kind == "multisig":
        shape = _multisig(spk)
        if shape is not None:
            keys = ",".join(k.hex() for k in shape[1])
            return _with_checksum(f"multi({shape[0]},{keys})")
    address = script_address(spk)
    if address is not None:
        return _with_checksum(f"addr({address})")
    return _with_checksum(f"raw({spk.hex()})")
