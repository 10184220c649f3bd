#!/usr/bin/env python3
"""Regenerates the committed seed corpora under fuzz/corpus/<target>/.

    python3 fuzz/make_seeds.py [--fieldcrypt target/release/fieldcrypt] [--avro-walk BIN]

Needs: python3 with fastavro and cryptography, and an existing fieldcrypt binary
(`fieldcrypt sample` writes the schema-conforming records; this script does not
build it). With --avro-walk (the built fuzz target, e.g.
fuzz/target/x86_64-unknown-linux-gnu/release/avro_walk) it also runs that target
once over the plaintext seeds with FIELDCRYPT_FUZZ_SEEDGEN set, which saves the
encrypted datums as seeds of its encrypted-datum modes (2 and 3). Those seeds open
with the fuzz fixtures' TEST-ONLY constant deterministic keys; randomized fields
name a per-process DEK, so they stop at "unknown key" when replayed (by design).

Seed file names are content hashes, as libFuzzer names corpus files.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")

# Must match fuzz/src/lib.rs SCHEMAS (selector order) and the TEST-ONLY keys there.
SCHEMA_FILES = [
    "schemas/customer.avsc",
    "schemas/customer_cdc.avsc",
    "fuzz/schemas/linked_list.avsc",
    "fuzz/schemas/everything.avsc",
] + [
    "tests/corpus/" + f
    for f in [
        "01-avro-interop.avsc", "02-avro-record-with-required-fields.avsc",
        "03-avro-weather.avsc", "04-cpp-tweet.avsc", "05-cpp-bigrecord.avsc",
        "06-cpp-bigrecord-r.avsc", "07-cpp-reuse.avsc", "08-cpp-recursive-longlist.avsc",
        "09-cpp-tree1.avsc", "10-cpp-tree2.avsc", "11-cpp-crossref.avsc",
        "12-cpp-circulardep.avsc", "13-cpp-big-union.avsc", "14-cpp-union-array-union.avsc",
        "15-c-namespace-recursive.avsc", "16-avro-error-field-in-record.avsc",
        "17-avro-logical-types.avsc", "18-avro-nested-different-namespace.avsc",
        "19-avro-union-fixed-decimal.avsc", "20-avro-maps-and-arrays.avsc",
        "24-li-defaults-test.avsc", "25-li-record-with-defaults.avsc",
        "26-li-record-default-with-union.avsc", "27-li-recursive-ref-union.avsc",
        "28-li-test-tree-node.avsc", "29-li-logical-types.avsc",
        "30-li-logical-types-with-defaults.avsc", "31-li-util-tester1.avsc",
        "32-li-misleading-namespace.avsc", "33-li-fastserde-test.avsc",
        "34-li-split-record-aliases.avsc", "36-cf-avro-message.avsc",
        "37-cf-repeated-type-with-doc.avsc", "38-cf-repeated-type-with-default.avsc",
        "39-cf-array-of-records-default.avsc", "40-cf-multi-type-union.avsc",
        "41-cf-recursive-user.avsc", "42-cf-customer-tags.avsc",
        "44-flink-debezium-envelope.avsc", "45-hudi-debezium-cdc-envelope.avsc",
    ]
] + [
    "fuzz/schemas/deep_nullable.avsc",
]

GCM_KEY_ID = b"fuzz-gcm-key-id!"
GCM_KEY = bytes([0x11]) * 32
SIV_KEY_ID = b"fuzz-siv-key-id!"
SIV_KEY = bytes([0x22]) * 64
CONTEXTS = ["com.example.crm.Customer.ssn", "com.example.crm.Customer.email",
            "fuzz.all.Everything.raw", ""]

# Seeds larger than this are skipped (keeps the committed corpus small).
MAX_SEED = 4096


def save(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def zigzag(n):
    return (n << 1) ^ (n >> 63)


def varint(n):
    z = zigzag(n) & ((1 << 64) - 1)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def read_long(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7


def container_blocks(path):
    """(count, data) of each block of a null-codec container file."""
    buf = open(path, "rb").read()
    assert buf[:4] == b"Obj\x01"
    pos = 4
    while True:
        n, pos = read_long(buf, pos)
        if n == 0:
            break
        if n < 0:
            n = -n
            _, pos = read_long(buf, pos)
        for _ in range(2 * n):
            ln, pos = read_long(buf, pos)
            pos += ln
    pos += 16
    blocks = []
    while pos < len(buf):
        count, pos = read_long(buf, pos)
        size, pos = read_long(buf, pos)
        blocks.append((count, buf[pos:pos + size]))
        pos += size + 16
    return blocks


def sample(fc, schema, out, count, seed, codec):
    subprocess.run([fc, "sample", "--schema", schema, "--count", str(count),
                    "--seed", str(seed), "--codec", codec, out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def avro_walk_and_container(fc, tmp):
    plain = []
    for i, rel in enumerate(SCHEMA_FILES):
        schema = os.path.join(ROOT, rel)
        for seed in (1, 2):
            p = os.path.join(tmp, f"s{i}-{seed}.avro")
            sample(fc, schema, p, 1, seed, "null")
            (count, data), = container_blocks(p)
            datum = bytes([i]) + data
            if len(datum) <= MAX_SEED:
                plain.append(datum)
        p = os.path.join(tmp, f"s{i}-block.avro")
        sample(fc, schema, p, 3, 3, "null")
        (count, data), = container_blocks(p)
        block = bytes([0x40 | i]) + data
        if len(block) <= MAX_SEED:
            plain.append(block)
    # Hand-made linked lists (schema 2): short, at the depth limit, past it.
    for n in (3, 255, 256, 300):
        d = bytearray([2])
        for k in range(n):
            d += varint(k) + varint(1) + b"t" + varint(0) + varint(1 if k + 1 < n else 0)
        plain.append(bytes(d))
    for s in plain:
        save("avro_walk", s)

    # Container files: a few small schemas, every codec.
    for rel in ["schemas/customer.avsc", "fuzz/schemas/everything.avsc",
                "fuzz/schemas/linked_list.avsc", "tests/corpus/13-cpp-big-union.avsc"]:
        for codec in ["null", "deflate", "snappy", "zstandard"]:
            p = os.path.join(tmp, "c.avro")
            sample(fc, os.path.join(ROOT, rel), p, 2, 7, codec)
            data = open(p, "rb").read()
            if len(data) <= 2 * MAX_SEED:
                save("container", data)
    # One written by fastavro (another writer: different header layout, 2 blocks).
    import fastavro
    schema = fastavro.parse_schema(json.load(open(os.path.join(ROOT, "fuzz/schemas/linked_list.avsc"))))
    buf = io.BytesIO()
    recs = [{"value": k, "tag": "t%d" % k, "note": None,
             "next": {"value": -k, "tag": "x", "note": "n", "next": None}} for k in range(4)]
    fastavro.writer(buf, schema, recs, codec="deflate", sync_interval=64)
    save("container", buf.getvalue())
    return plain


def encrypted_seeds(walker, tmp):
    src = os.path.join(tmp, "plain")
    out = os.path.join(tmp, "enc")
    os.makedirs(src)
    os.makedirs(out)
    shutil.copytree(os.path.join(CORPUS, "avro_walk"), src, dirs_exist_ok=True)
    env = dict(os.environ, FIELDCRYPT_FUZZ_SEEDGEN=out)
    subprocess.run([walker, "-runs=0", src], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n = 0
    for name in sorted(os.listdir(out)):
        data = open(os.path.join(out, name), "rb").read()
        if len(data) <= MAX_SEED:
            save("avro_walk", data)
            n += 1
    return n


def ciphertext_seeds():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
    pts = [b"", varint(11) + b"123-45-6789", varint(5) + b"a@b.c", bytes(range(40))]
    for ci, ctx in enumerate(CONTEXTS):
        for k, pt in enumerate(pts):
            if (ci + k) % 2:
                continue
            h = bytes([1, 1]) + GCM_KEY_ID
            nonce = hashlib.sha256(b"nonce%d%d" % (ci, k)).digest()[:12]
            ct = AESGCM(GCM_KEY).encrypt(nonce, pt, h + ctx.encode())
            save("ciphertext", bytes([ci]) + h + nonce + ct)
            h = bytes([1, 2]) + SIV_KEY_ID
            ct = AESSIV(SIV_KEY).encrypt(pt, [h + ctx.encode()])  # IV first, then body
            save("ciphertext", bytes([ci]) + h + ct)
            # Version 2 (GCM only): the id's first 8 bytes in the header, the whole
            # id in the associated data.
            h = bytes([2, 1]) + GCM_KEY_ID[:8]
            ct = AESGCM(GCM_KEY).encrypt(nonce, pt, h + GCM_KEY_ID + ctx.encode())
            save("ciphertext", bytes([ci]) + h + nonce + ct)
    # Damaged: unknown version, algorithm, key; header only.
    save("ciphertext", bytes([0, 2, 1]) + GCM_KEY_ID + bytes(28))
    save("ciphertext", bytes([0, 1, 3]) + GCM_KEY_ID + bytes(28))
    save("ciphertext", bytes([1, 1, 1]) + bytes(16) + bytes(28))
    save("ciphertext", bytes([1, 1, 2]) + SIV_KEY_ID)
    save("ciphertext", bytes([0, 2, 2]) + SIV_KEY_ID[:8] + bytes(16))  # v2 has no SIV
    save("ciphertext", bytes([0, 2, 1]) + GCM_KEY_ID[:8] + bytes(27))  # one byte short


def dek_header(scope, kek, blob, kid=bytes(range(16))):
    s, k = scope.encode(), kek.encode()
    return bytes([1]) + kid + struct.pack(">H", len(s)) + s + struct.pack(">H", len(k)) + k + blob


def dek_header_seeds():
    save("dek_header", dek_header("orders", "local:0011223344556677", bytes(range(60))))
    save("dek_header", dek_header("route:cdc-customers", "local:8899aabbccddeeff", bytes(44)))
    save("dek_header", dek_header(
        "tenant:acme", "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        bytes(range(184))))
    save("dek_header", dek_header("", "", b""))
    save("dek_header", dek_header("x", "aws:alias/fieldcrypt", b"\xff" * 8)[:-8])


def framing_seeds(plain):
    for sid, datum in [(1, b""), (42, b"\x02\x06abc"), (0xFFFFFFFF, b"\x00")]:
        save("confluent_framing", b"\x00" + struct.pack(">I", sid) + datum)
    for s in plain[:6]:
        save("confluent_framing", b"\x00" + struct.pack(">I", 100 + s[0]) + s[1:])
    save("confluent_framing", b"\x01\x00\x00\x00\x01x")
    save("confluent_framing", b"\x00\x00")


def config_seeds():
    for rel in ["config/fieldcrypt.toml", "docker/fieldcrypt/fieldcrypt.toml"]:
        save("config", open(os.path.join(ROOT, rel), "rb").read())
    save("config", b"")
    save("config", b"""[kms]
provider = "aws"
key_id = "alias/fieldcrypt"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:4566"

[schema_registry]
url = "http://127.0.0.1:8081"

[pipeline]
delivery = "exactly-once"

[[routes]]
source = "^cdc\\\\..*"
target = "enc.${topic}"
tenant = "acme"

[[routes]]
source = "orders"
target = "orders.enc"
dead_letter = "orders.dlq"
kek = "alias/orders"
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fieldcrypt", default=os.path.join(ROOT, "target/release/fieldcrypt"))
    ap.add_argument("--avro-walk", help="built avro_walk fuzz target, for encrypted-datum seeds")
    a = ap.parse_args()
    if not os.access(a.fieldcrypt, os.X_OK):
        sys.exit(f"{a.fieldcrypt}: not found (build it, or pass --fieldcrypt)")
    for t in ["avro_walk", "container", "ciphertext", "dek_header", "confluent_framing", "config"]:
        shutil.rmtree(os.path.join(CORPUS, t), ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        plain = avro_walk_and_container(a.fieldcrypt, tmp)
        if a.avro_walk:
            n = encrypted_seeds(a.avro_walk, tmp)
            print(f"avro_walk: {n} encrypted-datum seeds")
    ciphertext_seeds()
    dek_header_seeds()
    framing_seeds(plain)
    config_seeds()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")


if __name__ == "__main__":
    main()
