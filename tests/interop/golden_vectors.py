"""Checks tests/golden/vectors.json with an independent implementation (pyca/cryptography),
following docs/ENCRYPTION.md only: header = version 0x01, algorithm, 16-byte key id;
associated data = header || field context; GCM: header || nonce || ct || tag;
SIV: header || siv || ct; blind index = HMAC-SHA256 truncated.

Usage: golden_vectors.py [--write]   (--write fills in the expected values)
"""
import hashlib
import hmac
import json
import pathlib
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

    s = v["aes_256_siv"]
    pt = avro_string(s["value"])
    header = bytes([1, 2]) + bytes.fromhex(s["key_id"])
    siv_ct = AESSIV(key(s["key_labels"])).encrypt(pt, [header + s["context"].encode()])
    s["plaintext"], s["ciphertext"] = pt.hex(), (header + siv_ct).hex()

    b = v["blind_index"]
    for case in b["cases"]:
        mac = hmac.new(key(b["key_labels"]), normalize(case["value"], b["normalize"]).encode(), hashlib.sha256)
        case["index"] = mac.digest()[: b["length"]].hex()
    return v


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
