#!/usr/bin/env python3
"""Small Kafka helper for the fieldcrypt quick start (confluent-kafka + fastavro).

Values are RAW Avro binary (no Confluent wire-format framing), the way `fieldcrypt run`
reads and writes them with one schema file per route.

  create-topics --bootstrap B --topics a,b,c [--partitions P]
      create the topics with AdminClient (an existing topic is fine)
  produce-file --bootstrap B --topic T --file X.avro [--key-field id] [--compression C]
      produce every record of an Avro container file as a raw Avro value, encoded with
      the file's writer schema; the key is the UTF-8 text of the named field, looked up
      in the record or, for Debezium-style envelopes, in its `after` then `before`
  consume --bootstrap B --topic T --count N [--timeout-seconds S] [--schema F.avsc] [--show K]
      read from the earliest offset with a fresh consumer group; with --schema, decode
      every value (a value that does not decode is an error); print the first K
      records as JSON (bytes as "b64:...", headers listed; undecoded values as b64);
      prints "consumed N records"; exit 2 if fewer than N arrived in time
  compare --bootstrap B --source T --encrypted T2 --decrypted T3 --schema S.avsc
          --encrypted-schema E.avsc --count N [--seq-header H] [--timeout-seconds S]
      read all three topics from the earliest offset until each holds the N records
      that carry the sequence header H (loadgen's); print one source record next to
      its encrypted form, field by field; check that every decrypted record is
      byte-for-byte its source record (tombstones included); exit 1 on a mismatch,
      2 if records are missing

Needs: pip install confluent-kafka fastavro==1.13.1
"""

import argparse
import base64
import json
import sys
import time
import uuid
from io import BytesIO

try:
    import fastavro
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"kafka_tool.py: {e}; install with: python3 -m pip install confluent-kafka fastavro==1.13.1")


def die(msg, code=1):
    print(f"kafka_tool.py: {msg}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- create-topics


def create_topics(args):
    names = [t.strip() for t in args.topics.split(",") if t.strip()]
    if not names:
        die("--topics names no topic")
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    new = [NewTopic(t, num_partitions=args.partitions, replication_factor=args.replication_factor) for t in names]
    futures = admin.create_topics(new, operation_timeout=args.timeout_seconds, request_timeout=args.timeout_seconds)
    failed = False
    for topic, fut in futures.items():
        try:
            fut.result()
            print(f"created topic {topic} ({args.partitions} partitions)")
        except KafkaException as e:
            err = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                print(f"topic {topic} already exists")
            else:
                print(f"kafka_tool.py: creating {topic} failed: {err}", file=sys.stderr)
                failed = True
    if failed:
        sys.exit(1)
    # Show what the broker now reports, so a partition-count mismatch is visible.
    md = admin.list_topics(timeout=args.timeout_seconds)
    for t in names:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            die(f"topic {t} is not in the broker's metadata after creation")
        print(f"  {t}: {len(tm.partitions)} partition(s)")


# ----------------------------------------------------------------- produce-file


def key_of(record, field):
    """UTF-8 key from `field` in the record, or in a CDC envelope's after/before."""
    if not field or not isinstance(record, dict):
        return None
    candidates = [record]
    for part in ("after", "before"):
        if isinstance(record.get(part), dict):
            candidates.append(record[part])
    for c in candidates:
        if field in c and c[field] is not None:
            v = c[field]
            if isinstance(v, bytes):
                return v
            return str(v).encode("utf-8")
    return None


def produce_file(args):
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "queue.buffering.max.messages": 200000,
            "compression.type": args.compression,
        }
    )
    errors = []
    delivered = [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[0] += 1

    count = 0
    without_key = 0
    with open(args.file, "rb") as f:
        reader = fastavro.reader(f)
        schema = fastavro.parse_schema(reader.writer_schema)
        for record in reader:
            buf = BytesIO()
            fastavro.schemaless_writer(buf, schema, record)
            key = key_of(record, args.key_field)
            if key is None:
                without_key += 1
            while True:
                try:
                    producer.produce(args.topic, value=buf.getvalue(), key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            count += 1
    remaining = producer.flush(args.timeout_seconds)
    if remaining:
        die(f"{remaining} records still undelivered after {args.timeout_seconds}s")
    if errors:
        die(f"{len(errors)} records failed delivery, first: {errors[0]}")
    note = f" ({without_key} without key field {args.key_field!r})" if args.key_field and without_key else ""
    print(f"produced {delivered[0]} records from {args.file} to {args.topic}{note}")


# ---------------------------------------------------------------------- consume


def jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return "b64:" + base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)  # datetime, Decimal, UUID, ...


def text_or_b64(b):
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "b64:" + base64.b64encode(b).decode("ascii")


def consume(args):
    schema = None
    if args.schema:
        with open(args.schema) as f:
            # fastavro rejects unknown attributes only in strict mode; the fieldcrypt
            # attributes of an encrypted schema are kept as metadata.
            schema = fastavro.parse_schema(json.load(f))
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group or f"kafka-tool-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([args.topic])
    n = 0
    shown = 0
    deadline = time.monotonic() + args.timeout_seconds
    try:
        while n < args.count and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=min(1000, args.count - n), timeout=0.5)
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    die(f"consume error: {msg.error()}")
                n += 1
                value = msg.value()
                if schema is not None and value is not None:
                    # Decode every record (not only the shown ones), so a value that
                    # does not match the schema fails loudly.
                    try:
                        value = fastavro.schemaless_reader(BytesIO(value), schema, None)
                    except Exception as e:  # noqa: BLE001 - report which record
                        die(f"{args.topic}[{msg.partition()}]@{msg.offset()} does not decode with {args.schema}: {e!r}")
                if shown < args.show:
                    shown += 1
                    out = {
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "key": text_or_b64(msg.key()),
                        "headers": [[k, text_or_b64(v)] for k, v in (msg.headers() or [])],
                        "value": jsonable(value),
                    }
                    print(json.dumps(out, indent=2 if args.pretty else None))
                if n >= args.count:
                    break
    finally:
        consumer.close()
    print(f"consumed {n} records")
    if n < args.count:
        print(
            f"kafka_tool.py: only {n} of {args.count} records from {args.topic} within {args.timeout_seconds}s",
            file=sys.stderr,
        )
        sys.exit(2)


# ---------------------------------------------------------------------- compare


def read_by_seq(bootstrap, topic, count, header, timeout_seconds):
    """{seq: (value bytes or None, headers)} for the records carrying `header`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"kafka-tool-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    out = {}
    deadline = time.monotonic() + timeout_seconds
    try:
        while len(out) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    die(f"consume error on {topic}: {msg.error()}")
                headers = dict(msg.headers() or [])
                seq = headers.get(header)
                if seq is None:
                    continue
                out[int(seq.decode("ascii"))] = (msg.value(), headers)
    finally:
        consumer.close()
    return out


def flatten(value, prefix=""):
    """[(path, leaf)] of a decoded record, nested records joined with dots."""
    if isinstance(value, dict):
        rows = []
        for k, v in value.items():
            rows.extend(flatten(v, f"{prefix}{k}."))
        return rows
    return [(prefix[:-1], value)]


def shown(v, width):
    text = "null" if v is None else json.dumps(jsonable(v), ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def compare(args):
    with open(args.schema) as f:
        schema = fastavro.parse_schema(json.load(f))
    with open(args.encrypted_schema) as f:
        enc_schema = fastavro.parse_schema(json.load(f))
    topics = {"source": args.source, "encrypted": args.encrypted, "decrypted": args.decrypted}
    got = {}
    for role, topic in topics.items():
        got[role] = read_by_seq(args.bootstrap, topic, args.count, args.seq_header, args.timeout_seconds)
        print(f"{role:>9}: {len(got[role])} records in {topic}")
    short = [role for role in topics if len(got[role]) < args.count]
    if short:
        die(f"fewer than {args.count} records in: {', '.join(topics[r] for r in short)}", code=2)

    def decode(b, s):
        return None if b is None else fastavro.schemaless_reader(BytesIO(b), s, None)

    # One record to show: the first update (before and after both set), else the first value.
    seqs = sorted(got["source"])
    pick = next(
        (q for q in seqs if got["source"][q][0] is not None and (decode(got["source"][q][0], schema) or {}).get("op") == "u"),
        next((q for q in seqs if got["source"][q][0] is not None), None),
    )
    if pick is not None:
        src = dict(flatten(decode(got["source"][pick][0], schema)))
        enc = flatten(decode(got["encrypted"][pick][0], enc_schema))
        width = 44
        print(f"\nrecord seq {pick}, field by field (bytes as base64):")
        print(f"  {'field':<24} {'source':<{width}} {'encrypted':<{width}}")
        for path, e in enc:
            if path in src:
                s = src[path]
                what = "" if s == e else "  <- encrypted"
            else:
                s, what = "", "  <- blind index (added)"
            print(f"  {path:<24} {shown(s, width) if s != '' else '':<{width}} {shown(e, width):<{width}}{what}")
    equal = tombstones = 0
    bad = []
    for q in seqs:
        s, d = got["source"][q][0], got["decrypted"][q][0]
        if s == d:
            equal += 1
            tombstones += s is None
        else:
            bad.append(q)
    print(f"\n{equal} of {len(seqs)} decrypted records equal their source byte for byte ({tombstones} tombstones)")
    if bad:
        die(f"{len(bad)} decrypted records differ from their source, first seqs: {bad[:10]}")


# ------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create-topics", help="create topics (an existing topic is fine)")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topics", required=True, help="comma-separated topic names")
    c.add_argument("--partitions", type=int, default=1)
    c.add_argument("--replication-factor", type=int, default=1)
    c.add_argument("--timeout-seconds", type=float, default=30)
    c.set_defaults(func=create_topics)

    pr = sub.add_parser("produce-file", help="produce an Avro container file's records as raw Avro values")
    pr.add_argument("--bootstrap", required=True)
    pr.add_argument("--topic", required=True)
    pr.add_argument("--file", required=True)
    pr.add_argument("--key-field", default=None, help="field whose value becomes the key (record, after or before)")
    pr.add_argument("--timeout-seconds", type=float, default=120)
    pr.add_argument("--compression", default="none", choices=["none", "gzip", "snappy", "lz4", "zstd"],
                    help="batch compression codec (default none)")
    pr.set_defaults(func=produce_file)

    co = sub.add_parser("consume", help="consume from the earliest offset, optionally decoding raw Avro values")
    co.add_argument("--bootstrap", required=True)
    co.add_argument("--topic", required=True)
    co.add_argument("--count", type=int, required=True)
    co.add_argument("--timeout-seconds", type=float, default=60)
    co.add_argument("--schema", default=None, help="writer schema (.avsc) of the raw Avro values")
    co.add_argument("--show", type=int, default=0, help="print the first K decoded records as JSON")
    co.add_argument("--group", default=None, help="consumer group (default: a fresh random one)")
    co.add_argument("--pretty", action="store_true", help="indent the printed JSON")
    co.set_defaults(func=consume)

    cm = sub.add_parser("compare", help="source vs encrypted vs decrypted topics, joined by loadgen's sequence header")
    cm.add_argument("--bootstrap", required=True)
    cm.add_argument("--source", required=True)
    cm.add_argument("--encrypted", required=True)
    cm.add_argument("--decrypted", required=True)
    cm.add_argument("--schema", required=True, help="writer schema (.avsc) of the source values")
    cm.add_argument("--encrypted-schema", required=True, help="the derived schema (fieldcrypt plan --output-schema)")
    cm.add_argument("--count", type=int, required=True, help="records the load generator produced")
    cm.add_argument("--seq-header", default="loadgen.seq")
    cm.add_argument("--timeout-seconds", type=float, default=60)
    cm.set_defaults(func=compare)

    args = p.parse_args()
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
