"""Checks tests/golden/vectors.json with an independent implementation (pyca/cryptography),
following docs/ENCRYPTION.md only: header = version 0x01, algorithm, 16-byte key id;
associated data = header || field context; GCM: header || nonce || ct || tag;
SIV: header || siv || ct; version 2 (GCM): header = 0x02, 0x01, the key id's first 8
bytes, associated data = header || whole key id || field context; blind index =
HMAC-SHA256 truncated.

Usage: golden_vectors.py [--write]   (--write fills in the expected values)
"""
import hashlib
import hmac
import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

PATH = pathlib.Path(__file__).resolve().parent.parent / "golden" / "vectors.json"


def key(labels):
    return b"".join(hashlib.sha256(label.encode()).digest() for label in labels)


def zigzag(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def avro_string(s):
    b = s.encode()
    return zigzag(len(b)) + b


def normalize(s, steps):
    for step in steps:
        if step == "trim":
            s = s.strip()
        elif step == "lowercase":
            s = s.lower()
        elif step == "remove_whitespace":
            s = "".join(c for c in s if not c.isspace())
        elif step == "digits_only":
            s = "".join(c for c in s if c in "0123456789")
    return s


def compute(v):
    g = v["aes_256_gcm"]
    pt = avro_string(g["value"])
    header = bytes([1, 1]) + bytes.fromhex(g["key_id"])
    nonce = bytes.fromhex(g["nonce"])
    ct_tag = AESGCM(key(g["key_labels"])).encrypt(nonce, pt, header + g["context"].encode())
    g["plaintext"], g["ciphertext"] = pt.hex(), (header + nonce + ct_tag).hex()
    assert AESGCM(key(g["key_labels"])).decrypt(nonce, ct_tag, header + g["context"].encode()) == pt

    g2 = v["aes_256_gcm_v2"]
    pt = avro_string(g2["value"])
    kid = bytes.fromhex(g2["key_id"])
    header = bytes([2, 1]) + kid[:8]
    nonce = bytes.fromhex(g2["nonce"])
    aad = header + kid + g2["context"].encode()
    ct_tag = AESGCM(key(g2["key_labels"])).encrypt(nonce, pt, aad)
    g2["plaintext"], g2["ciphertext"] = pt.hex(), (header + nonce + ct_tag).hex()

    s = v["aes_256_siv"]
    pt = avro_string(s["value"])
    header = bytes([1, 2]) + bytes.fromhex(s["key_id"])
    siv_ct = AESSIV(key(s["key_labels"])).encrypt(pt, [header + s["context"].encode()])
    s["plaintext"], s["ciphertext"] = pt.hex(), (header + siv_ct).hex()

    b = v["blind_index"]
    for case in b["cases"]:
        mac = hmac.new(key(b["key_labels"]), normalize(case["value"], b["normalize"]).encode(), hashlib.sha256)
        case["index"] = mac.digest()[: b["length"]].hex()
    r = v["record"]
    r["encrypted"] = record_vector(r).hex()
    return v


def record_vector(r):
    """The Golden record encrypted per docs/ENCRYPTION.md, from scratch."""
    siv = AESSIV(key(r["siv_key_labels"]))
    ikey = key(r["index_key_labels"])
    header = bytes([1, 2]) + bytes.fromhex(r["siv_key_id"])
    s = avro_string
    i64 = lambda n: struct.pack(">q", n)
    # field: (plaintext Avro encoding, blind-index input, nullable)
    fields = [
        ("email", s(" Ann@Example.COM "), normalize(" Ann@Example.COM ", ["trim", "lowercase"]).encode(), False),
        ("age", zigzag(42), i64(42), False),
        ("balance", zigzag(-7), i64(-7), False),
        ("score", struct.pack("<f", 1.5), struct.pack("<f", 1.5), False),
        ("ratio", struct.pack("<d", 0.25), struct.pack("<d", 0.25), False),
        ("vip", b"\x01", b"\x01", False),
        ("tier", zigzag(1), b"GOLD", False),
        ("tag", b"abcd", b"abcd", False),
        ("blob", zigzag(3) + b"xyz", b"xyz", False),
        ("phone", zigzag(1) + s("+1 555"), b"+1 555", True),
        ("fax", None, None, True),
    ]
    out = b""
    for name, pt, index_input, nullable in fields:
        if pt is None:
            out += zigzag(0) + zigzag(0)  # null field, null index
            continue
        ct = header + siv.encrypt(pt, [header + f"fc.test.Golden.{name}".encode()])
        idx = hmac.new(ikey, index_input, hashlib.sha256).digest()[:8]
        if nullable:
            out += zigzag(1)
        out += zigzag(len(ct)) + ct
        if nullable:
            out += zigzag(1)
        out += zigzag(len(idx)) + idx
    return out + s("plain text")


def main():
    stored = json.loads(PATH.read_text())
    computed = compute(json.loads(PATH.read_text()))
    if "--write" in sys.argv:
        PATH.write_text(json.dumps(computed, indent=2) + "\n")
        print(f"wrote {PATH}")
        return 0
    if stored != computed:
        print("golden vectors disagree with the independent implementation", file=sys.stderr)
        print(json.dumps(computed, indent=2), file=sys.stderr)
        return 1
    print("golden vectors match pyca/cryptography")
    return 0


if __name__ == "__main__":
    sys.exit(main())
