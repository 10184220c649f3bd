"""Checks one corpus schema's file-mode round trip with fastavro, an independent
Avro implementation (tests/corpus.rs drives it):

  corpus_check.py PLAIN.avro ENCRYPTED.avro DECRYPTED.avro

- fastavro reads all three files with the schema each embeds;
- the decrypted file's schema is the plain file's schema, exactly (as JSON);
- the decrypted records equal the plain ones, in order;
- every field the encrypted schema marks as encrypted (a `fieldcrypt` attribute
  holding the original `field`) is `bytes` (or nullable bytes) there, and no text
  value of at least 8 characters found under such a field in the plain records
  occurs anywhere in the encrypted file (the files are written uncompressed),
  unless the same value also sits in a field that is not encrypted.

Prints one line of counts; exits 1 with the reason otherwise.
"""

import json
import sys

import fastavro


def fail(msg):
    print(f"corpus_check.py: {msg}", file=sys.stderr)
    sys.exit(1)


def read(path):
    with open(path, "rb") as f:
        r = fastavro.reader(f)
        schema = json.loads(r.metadata["avro.schema"])
        return schema, list(r)


def encrypted_fields(schema):
    """{(record name, field name)} of the fields the encrypted schema encrypts."""
    out = set()

    def walk(s):
        if isinstance(s, list):
            for b in s:
                walk(b)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in ("record", "error"):
                for f in s.get("fields", []):
                    a = f.get("fieldcrypt")
                    if isinstance(a, dict) and "field" in a:
                        ty = f["type"]
                        if ty not in ("bytes", ["null", "bytes"], ["bytes", "null"]):
                            fail(f"encrypted field {f['name']} has type {ty}, not bytes")
                        out.add(f["name"])
                    walk(f.get("type"))
            elif t == "array":
                walk(s.get("items"))
            elif t == "map":
                walk(s.get("values"))
            elif isinstance(t, (dict, list)):
                walk(t)

    walk(schema)
    return out


def field_name_counts(schema):
    counts = {}

    def walk(s, seen):
        if isinstance(s, list):
            for b in s:
                walk(b, seen)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in ("record", "error"):
                key = s.get("name")
                if key in seen:
                    return
                seen.add(key)
                for f in s.get("fields", []):
                    counts[f["name"]] = counts.get(f["name"], 0) + 1
                    walk(f.get("type"), seen)
            elif t == "array":
                walk(s.get("items"), seen)
            elif t == "map":
                walk(s.get("values"), seen)
            elif isinstance(t, (dict, list)):
                walk(t, seen)

    walk(schema, set())
    return counts


def strings_under(v, out):
    if isinstance(v, str):
        if len(v) >= 8:
            out.add(v)
    elif isinstance(v, dict):
        for x in v.values():
            strings_under(x, out)
    elif isinstance(v, (list, tuple)):
        for x in v:
            strings_under(x, out)


def split_strings(v, names, secret, clear):
    """Strings under the named (encrypted) fields into `secret`, others into `clear`."""
    if isinstance(v, str):
        if len(v) >= 8:
            clear.add(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            if k in names:
                strings_under(x, secret)
            else:
                split_strings(x, names, secret, clear)
    elif isinstance(v, (list, tuple)):
        for x in v:
            split_strings(x, names, secret, clear)


def main():
    plain_path, enc_path, dec_path = sys.argv[1:4]
    plain_schema, plain = read(plain_path)
    enc_schema, enc = read(enc_path)
    dec_schema, dec = read(dec_path)
    if dec_schema != plain_schema:
        fail("the decrypted file's schema differs from the plain file's schema")
    if len(plain) != len(dec) or len(enc) != len(plain):
        fail(f"record counts differ: plain {len(plain)}, encrypted {len(enc)}, decrypted {len(dec)}")
    for i, (a, b) in enumerate(zip(plain, dec)):
        if a != b:
            fail(f"record {i} differs after the round trip")
    names = encrypted_fields(enc_schema)
    if not names:
        fail("the encrypted schema encrypts no field")
    # Only names that belong to one field of the schema, so a same-named field
    # left in clear elsewhere is not mistaken for a leak.
    counts = field_name_counts(plain_schema)
    unique = {n for n in names if counts.get(n, 0) == 1}
    secrets, clear = set(), set()
    for r in plain:
        split_strings(r, unique, secrets, clear)
    # A value that also sits in a field left in clear (the same person in a
    # change event's `after`, say) may rightly appear in the file.
    secrets -= clear
    with open(enc_path, "rb") as f:
        blob = f.read()
    leaked = [s for s in secrets if s.encode("utf-8") in blob]
    if leaked:
        fail(f"{len(leaked)} plaintext value(s) of encrypted fields found in the encrypted file")
    print(f"ok: {len(plain)} records, {len(names)} encrypted field name(s), {len(secrets)} plaintext strings absent")


if __name__ == "__main__":
    main()
