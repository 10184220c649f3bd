"""fastavro (an independent Avro implementation) against fieldcrypt's files.

  fastavro_check.py check-encrypted PLAIN.avro ENCRYPTED.avro OUTPUT_SCHEMA.avsc
      Reads ENCRYPTED using only the output schema, and checks it record by record
      against PLAIN: untouched fields equal, encrypted fields are bytes (null where the
      original was null) that never contain the plaintext, blind indexes are bytes.
  fastavro_check.py write FILE CODEC
      Writes records of a schema with every Avro type and sensitive fields.
  fastavro_check.py compare A.avro B.avro
      Checks that two files hold equal writer schemas and equal records.
"""
import datetime
import decimal
import json
import random
import sys
import uuid

import fastavro

RICH = {
    "type": "record",
    "name": "Order",
    "namespace": "shop.v1",
    "doc": "An order with every Avro type.",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "email", "type": "string", "sensitive": {"mode": "deterministic", "blind_index": "email"}},
        {"name": "card", "type": {"type": "fixed", "name": "Card", "size": 8}, "sensitive": True},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]},
         "sensitive": {"mode": "deterministic"}},
        {"name": "notes", "type": ["null", "string", "long"], "default": None, "confluent:tags": ["PII"]},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
         "sensitive": True, "x-owner": "finance"},
        {"name": "ratio", "type": "double", "sensitive": True},
        {"name": "weight", "type": "float"},
        {"name": "gift", "type": "boolean", "sensitive": {"blind_index": "flags"}},
        {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}, "sensitive": True},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}, "sensitive": True},
        {"name": "lines", "type": {"type": "array", "items": {
            "type": "record", "name": "Line", "fields": [
                {"name": "sku", "type": "string"},
                {"name": "price_cents", "type": "int", "sensitive": True},
                {"name": "attrs", "type": {"type": "map", "values": "string"}, "default": {}}]}}},
        {"name": "meta", "type": {"type": "map", "values": ["null", "bytes"]}, "sensitive": True},
        {"name": "shipping", "type": ["null", {"type": "record", "name": "Addr", "fields": [
            {"name": "street", "type": "string"},
            {"name": "zip", "type": "string"}]}], "default": None},
        {"name": "billing", "type": ["null", "Addr"], "default": None, "sensitive": True},
    ],
}


def rich_records(n):
    rnd = random.Random(7)
    for i in range(n):
        who = rnd.randrange(20)
        yield {
            "id": i,
            "email": f"user{who}@example.com",
            "card": bytes(rnd.randrange(256) for _ in range(8)),
            "status": rnd.choice(["NEW", "PAID", "SHIPPED"]),
            "notes": rnd.choice([None, f"note {i}", i * 1000]),
            "amount": decimal.Decimal(rnd.randrange(-10**6, 10**6)) / 100,
            "ratio": rnd.random(),
            "weight": float(rnd.randrange(1000)) / 4,
            "gift": rnd.random() < 0.5,
            "placed": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=i),
            "day": datetime.date(2026, 1, 1) + datetime.timedelta(days=rnd.randrange(300)),
            "ref": uuid.UUID(int=rnd.getrandbits(128)),
            "lines": [{"sku": f"SKU-{j}", "price_cents": rnd.randrange(10**5), "attrs": {"c": "red"} if j else {}}
                      for j in range(rnd.randrange(4))],
            "meta": {f"k{j}": (None if j == 0 else bytes([j] * j)) for j in range(rnd.randrange(3))},
            "shipping": None if i % 3 == 0 else {"street": f"{i} Main St", "zip": "12345"},
            "billing": None if i % 2 == 0 else {"street": f"{i} Bill Rd", "zip": "54321"},
        }


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def read(path, reader_schema=None):
    with open(path, "rb") as f:
        r = fastavro.reader(f, reader_schema=reader_schema)
        return r.writer_schema, list(r)


def check_encrypted(plain_path, enc_path, schema_path):
    with open(schema_path) as f:
        out_schema = json.load(f)
    parsed = fastavro.parse_schema(out_schema)
    _, plain = read(plain_path)
    _, enc = read(enc_path, reader_schema=parsed)
    if len(plain) != len(enc):
        fail(f"{len(plain)} plain records but {len(enc)} encrypted")

    def walk(schema, p, e, path):
        if isinstance(schema, dict) and schema.get("type") == "record":
            for field in schema["fields"]:
                name, attr = field["name"], field.get("fieldcrypt")
                fp = f"{path}.{name}" if path else name
                if attr and "blind_index_of" in attr:
                    src = p.get(attr["blind_index_of"])
                    if src is None:
                        if e[name] is not None:
                            fail(f"{fp}: index of a null must be null")
                    elif not isinstance(e[name], bytes) or len(e[name]) != 16:
                        fail(f"{fp}: blind index is not 16 bytes")
                elif attr:
                    if p[name] is None:
                        if e[name] is not None:
                            fail(f"{fp}: null must stay null")
                    else:
                        if not isinstance(e[name], bytes) or e[name][0] != 1 or e[name][1] not in (1, 2):
                            fail(f"{fp}: not a fieldcrypt ciphertext")
                        if isinstance(p[name], str) and len(p[name]) >= 4 and p[name].encode() in e[name]:
                            fail(f"{fp}: plaintext inside the ciphertext")
                else:
                    if not same(field["type"], p[name], e[name], fp):
                        fail(f"{fp}: untouched field changed")
        return True

    def same(ftype, pv, ev, fp):
        # Untouched fields may still hold records with encrypted fields inside.
        if isinstance(ftype, dict) and ftype.get("type") == "record":
            return walk(ftype, pv, ev, fp)
        if isinstance(ftype, list) and isinstance(pv, dict) and isinstance(ev, dict):
            for b in ftype:
                if isinstance(b, dict) and b.get("type") == "record":
                    return walk(b, pv, ev, fp)
        if isinstance(ftype, dict) and ftype.get("type") == "array" and isinstance(ftype.get("items"), dict):
            return all(same(ftype["items"], a, b, fp + "[]") for a, b in zip(pv, ev)) and len(pv) == len(ev)
        return pv == ev

    for p, e in zip(plain, enc):
        walk(out_schema, p, e, "")
    print(f"fastavro read {len(enc)} encrypted records with the output schema")


def main():
    cmd = sys.argv[1]
    if cmd == "check-encrypted":
        check_encrypted(*sys.argv[2:5])
    elif cmd == "write":
        with open(sys.argv[2], "wb") as f:
            fastavro.writer(f, fastavro.parse_schema(RICH), rich_records(500), codec=sys.argv[3],
                            metadata={"app.origin": "fastavro"})
        print(f"fastavro wrote 500 records to {sys.argv[2]}")
    elif cmd == "compare":
        sa, ra = read(sys.argv[2])
        sb, rb = read(sys.argv[3])
        if sa != sb:
            fail(f"writer schemas differ:\n{json.dumps(sa)}\n{json.dumps(sb)}")
        if ra != rb:
            for i, (a, b) in enumerate(zip(ra, rb)):
                if a != b:
                    fail(f"record {i} differs")
            fail(f"record counts differ: {len(ra)} vs {len(rb)}")
        print(f"{len(ra)} records equal")
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
