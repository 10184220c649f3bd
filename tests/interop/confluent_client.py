"""The real third-party client in the interop test: confluent-kafka-python.

fieldcrypt must read what Confluent's own Avro serializer writes and write what
Confluent's own Avro deserializer reads. The Rust interop test drives this
script (with a Kafka-protocol broker and tools/test_registry.py running) to be
the client on both ends:

  confluent_client.py create-topics --bootstrap HOST:PORT --topics a,b --partitions P
      Creates topics with the AdminClient (an existing topic is not an error).

  confluent_client.py produce --bootstrap HOST:PORT --registry URL --topic T
          --schema FILE.avsc [--reference NAME=SUBJECT=FILE.avsc ...]
          --count N --seed S [--partitions-key-cardinality K] [--dump FILE]
      Produces N records generated from the seed to match the schema, values
      through AvroSerializer(auto.register.schemas=True) under subject T-value,
      keys "k{i % K}" through StringSerializer. --dump writes every generated
      record as a JSON line {"key": .., "value": ..}. Exits 1 if any delivery
      failed. Prints {"count": N, "schema_ids": [..]}.

      --reference (repeatable) makes the value schema one with Confluent schema
      references: each FILE is first registered under SUBJECT with
      SchemaRegistryClient.register_schema (with references to the earlier
      --reference files whose named types it uses, so list dependencies first),
      then AvroSerializer gets Schema(text, "AVRO", references=[SchemaReference(
      NAME, SUBJECT, version)]) and registers the value schema with them. NAME is
      the referenced type's full name (e.g. com.example.BankingInfo). The value
      schema references the --reference files it uses itself, plus any that no
      other --reference uses. Records are generated with the referenced named
      types known (a fastavro named_schemas built from the files).

  confluent_client.py consume --bootstrap HOST:PORT --registry URL --topic T
          --count N --timeout-seconds S [--group G]
          [--isolation read_committed] --out FILE
      Reads from the earliest offset through AvroDeserializer (the reader schema
      is the writer schema, fetched from the registry by the id in each record,
      with the schemas it references fetched by subject and version, as the
      deserializer itself does) until N records or the timeout. Writes each as a
      JSON line {"partition", "offset", "key", "value", "headers"} and prints
      {"count": N, "schema_ids": [..]}. Exits 0 when exactly N records were
      read, 2 when fewer arrived before the timeout.

  confluent_client.py compare --expected DUMP --actual OUT
      Compares the values of both files as a multiset of (key, value), since
      partitions interleave. Exits 1 with a summary of the differences.

Values are stored as JSON in their plain Avro form: logical types as their base
type (timestamp-millis as a long, decimal as its bytes, uuid as a string), and
bytes and fixed as {"$bytes": "<base64>"}.
"""

import argparse
import base64
import datetime
import decimal
import json
import random
import struct
import sys
import time
from collections import Counter

import fastavro
from confluent_kafka import Consumer, KafkaException, SerializingProducer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.error import KafkaError
from confluent_kafka.schema_registry import Schema as RegistrySchema
from confluent_kafka.schema_registry import SchemaReference, SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringDeserializer, StringSerializer

BYTES_MARKER = "$bytes"
EPOCH_UTC = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
EPOCH_NAIVE = datetime.datetime(1970, 1, 1)
EPOCH_DATE = datetime.date(1970, 1, 1)
# The logical types fastavro turns into Python objects when reading, by base type.
CONVERTED = {
    "int": {"date", "time-millis"},
    "long": {"timestamp-millis", "timestamp-micros", "local-timestamp-millis",
             "local-timestamp-micros", "time-micros"},
    "bytes": {"decimal"},
    "fixed": {"decimal"},
    "string": {"uuid"},
}


def log(msg):
    sys.stderr.write("confluent_client: %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# Schemas: fastavro's parsed form, where every name is full and every later use
# of a named type is its full name as a string.


class Schema:
    """A schema parsed with fastavro; `references` are the raw referenced schemas,
    each after the ones it uses itself, whose named types the schema may use."""

    def __init__(self, schema_obj, references=()):
        self.named = {}
        for ref in references:
            fastavro.parse_schema(ref, named_schemas=self.named)
        self.root = fastavro.parse_schema(schema_obj, named_schemas=self.named)

    def resolve(self, s):
        return self.named.get(s, s) if isinstance(s, str) else s

    def kind(self, s):
        """(type name, logicalType or None) of a resolved non-union schema."""
        if isinstance(s, str):
            return s, None
        t = s["type"]
        if isinstance(t, (dict, list)):  # {"type": {...}} nesting
            return self.kind(self.resolve(t))
        return t, s.get("logicalType")

    def unwrap(self, s):
        s = self.resolve(s)
        while isinstance(s, dict) and isinstance(s.get("type"), (dict, list)):
            s = self.resolve(s["type"])
        return s


# ---------------------------------------------------------------------------
# Schema references: named types defined in another subject's schema.

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NAMED_TYPES = ("record", "error", "enum", "fixed")


def avro_names(schema_obj):
    """(names the schema defines, names it uses without defining), as full names.
    An unqualified use inside a namespace gives both candidates ("ns.X", "X")."""
    defined, used = set(), []

    def full(name, ns):
        return name if "." in name or not ns else "%s.%s" % (ns, name)

    def walk(s, ns):
        if isinstance(s, str):
            if s not in PRIMITIVES:
                used.append((full(s, ns), s))
        elif isinstance(s, list):
            for b in s:
                walk(b, ns)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in NAMED_TYPES:
                name = s["name"]
                inner = name.rsplit(".", 1)[0] if "." in name else (s.get("namespace", ns) or "")
                defined.add(name if "." in name else full(name, inner))
                for f in s.get("fields", []) if t in ("record", "error") else []:
                    walk(f.get("type"), inner)
            elif t == "array":
                walk(s.get("items"), ns)
            elif t == "map":
                walk(s.get("values"), ns)
            else:
                walk(t, ns)

    walk(schema_obj, "")
    return defined, [u for u in used if u[0] not in defined and u[1] not in defined]


class Reference:
    """One --reference NAME=SUBJECT=FILE."""

    def __init__(self, spec):
        parts = spec.split("=", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError("--reference wants NAME=SUBJECT=FILE.avsc, not %r" % spec)
        self.name, self.subject, self.path = parts
        with open(self.path) as f:
            self.text = f.read()
        self.obj = json.loads(self.text)
        self.defined, _ = avro_names(self.obj)
        self.version = None


def direct_references(schema_obj, refs):
    """The refs (in their order) whose named types schema_obj uses."""
    _, uses = avro_names(schema_obj)
    out = []
    for ref in refs:
        if any(c in ref.defined for candidates in uses for c in candidates):
            out.append(ref)
    return out


def register_references(registry, refs):
    """Registers each referenced schema under its subject, with references to the
    earlier --reference schemas it uses, and notes the version it got there."""
    for i, ref in enumerate(refs):
        deps = direct_references(ref.obj, refs[:i])
        later = direct_references(ref.obj, refs[i + 1:])
        if later:
            raise ValueError("--reference %s uses %s: list that one before it" % (ref.name, later[0].name))
        schema = RegistrySchema(ref.text, "AVRO", [SchemaReference(d.name, d.subject, d.version) for d in deps])
        schema_id = registry.register_schema(ref.subject, schema)
        ref.version = registry.lookup_schema(ref.subject, schema).version
        log("registered reference %s under %s version %d (id %d)%s"
            % (ref.name, ref.subject, ref.version, schema_id,
               "" if not deps else ", referencing " + ", ".join(d.name for d in deps)))


def registry_references(registry, schema, seen=None, out=None):
    """The raw schemas a registered schema references, each after its own
    references and each name once, fetched by (subject, version) as
    AvroDeserializer does."""
    seen = set() if seen is None else seen
    out = [] if out is None else out
    for ref in schema.references or []:
        if ref.name in seen:
            continue
        seen.add(ref.name)
        referenced = registry.get_version(ref.subject, ref.version).schema
        registry_references(registry, referenced, seen, out)
        out.append(json.loads(referenced.schema_str))
    return out


def twos_complement(n, size=None):
    """Big-endian two's complement of n: minimal length, or exactly size bytes."""
    if size is None:
        size = max(1, (n.bit_length() + 8) // 8)
    return n.to_bytes(size, "big", signed=True)


# ---------------------------------------------------------------------------
# Record generator: deterministic values for any Avro schema.

WORDS = ["alpha", "Bravo", "charlie", "delta-9", "echo echo", "zoë", "Ωmega", "東京", "naïve café",
         "quote\"d", "back\\slash", "line\nbreak", "tab\there", "🙂", "", "x", "O'Brien"]


class Generator:
    MAX_DEPTH = 4

    def __init__(self, schema, seed):
        self.schema = schema
        self.rng = random.Random(seed)

    def record(self):
        return self.gen(self.schema.root, 0)

    def int_value(self, bits):
        r = self.rng.random()
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if r < 0.1:
            return self.rng.choice([0, 1, -1, lo, hi])
        if r < 0.6:
            return self.rng.randint(-1000, 100000)
        return self.rng.randint(lo, hi)

    def string_value(self):
        r = self.rng.random()
        if r < 0.5:
            return "%s-%d" % (self.rng.choice(WORDS), self.rng.randint(0, 99999))
        if r < 0.8:
            return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(0, 4)))
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._-+ é€"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 40)))

    def decimal_bytes(self, s, size=None):
        precision = int(s.get("precision", 10))
        limit = 10 ** min(precision, 30) - 1
        if size is not None:
            limit = min(limit, (1 << (8 * size - 1)) - 1)
        return twos_complement(self.rng.randint(-limit, limit), size)

    def gen(self, s, depth):
        s = self.schema.unwrap(s)
        if isinstance(s, list):
            return self.gen_union(s, depth)
        t, lt = self.schema.kind(s)
        rng = self.rng
        if t == "null":
            return None
        if t == "boolean":
            return rng.random() < 0.5
        if t == "int":
            if lt == "date":
                return rng.randint(-3650, 40000)
            if lt == "time-millis":
                return rng.randint(0, 86_399_999)
            return self.int_value(32)
        if t == "long":
            if lt in ("timestamp-millis", "local-timestamp-millis"):
                return rng.randint(946_684_800_000, 1_893_456_000_000)  # 2000..2030
            if lt in ("timestamp-micros", "local-timestamp-micros"):
                return rng.randint(946_684_800_000_000, 1_893_456_000_000_000)
            if lt == "time-micros":
                return rng.randint(0, 86_399_999_999)
            return self.int_value(64)
        if t == "float":
            return rng.randint(-(1 << 20), 1 << 20) / 8.0  # exact in float32
        if t == "double":
            return rng.choice([0.0, -2.5, 1e-300, rng.uniform(-1e12, 1e12), rng.random()])
        if t == "bytes":
            if lt == "decimal":
                return self.decimal_bytes(s)
            return rng.randbytes(rng.randint(0, 24))
        if t == "string":
            if lt == "uuid":
                return "%08x-%04x-%04x-%04x-%012x" % (
                    rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16),
                    rng.getrandbits(16), rng.getrandbits(48))
            return self.string_value()
        if t == "fixed":
            if lt == "decimal":
                return self.decimal_bytes(s, s["size"])
            return rng.randbytes(s["size"])
        if t == "enum":
            return rng.choice(s["symbols"])
        if t == "array":
            n = rng.randint(0, 3) if depth < self.MAX_DEPTH else 0
            return [self.gen(s["items"], depth + 1) for _ in range(n)]
        if t == "map":
            n = rng.randint(0, 3) if depth < self.MAX_DEPTH else 0
            return {"m%d_%s" % (j, self.string_value()[:8]): self.gen(s["values"], depth + 1) for j in range(n)}
        if t == "record" or t == "error":
            return {f["name"]: self.gen(f["type"], depth + 1) for f in s["fields"]}
        raise ValueError("cannot generate a value for Avro type %r" % (t,))

    def gen_union(self, branches, depth):
        non_null = [i for i, b in enumerate(branches) if self.schema.unwrap(b) != "null"]
        has_null = len(non_null) < len(branches)
        if has_null and (not non_null or depth >= self.MAX_DEPTH or self.rng.random() < 0.25):
            return None
        b = self.rng.choice(non_null)
        # fastavro writes a union value as the branch it picks itself; regenerate for
        # that branch until the value is written as the branch it was made for.
        for _ in range(8):
            value = self.gen(branches[b], depth)
            w = writer_branch(self.schema, value, branches)
            if w == b:
                break
            b = w
        return value


def valid(schema, v, s):
    """Whether fastavro's writer would accept plain value v for schema s."""
    s = schema.unwrap(s)
    if isinstance(s, list):
        return any(valid(schema, v, b) for b in s)
    t, _ = schema.kind(s)
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t in ("int", "long"):
        bits = 32 if t == "int" else 64
        return isinstance(v, int) and not isinstance(v, bool) and -(1 << (bits - 1)) <= v < (1 << (bits - 1))
    if t in ("float", "double"):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "string":
        return isinstance(v, str)
    if t == "bytes":
        return isinstance(v, (bytes, bytearray))
    if t == "fixed":
        return isinstance(v, (bytes, bytearray)) and len(v) == s["size"]
    if t == "enum":
        return isinstance(v, str) and v in s["symbols"]
    if t == "array":
        return isinstance(v, (list, tuple)) and all(valid(schema, x, s["items"]) for x in v)
    if t == "map":
        return isinstance(v, dict) and all(isinstance(k, str) and valid(schema, x, s["values"]) for k, x in v.items())
    if t in ("record", "error"):
        return isinstance(v, dict) and all(valid(schema, v.get(f["name"], f.get("default")), f["type"])
                                           for f in s["fields"])
    return False


def writer_branch(schema, v, branches):
    """The union branch fastavro's write_union picks for v (same rules)."""
    best, most_fields, could_be_float = -1, -1, False
    for i, b in enumerate(branches):
        t, _ = schema.kind(schema.unwrap(b))
        if could_be_float:
            if t == "double":
                return i
            continue
        if valid(schema, v, b):
            if t in ("record", "error"):
                fields = len({f["name"] for f in schema.unwrap(b)["fields"]} & set(v))
                if fields > most_fields:
                    best, most_fields = i, fields
            elif t == "float":
                best, could_be_float = i, True
            else:
                return i
    return best


# ---------------------------------------------------------------------------
# From what AvroDeserializer returns back to the plain form.


def micros(delta):
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def read_fits(schema, v, s):
    """Whether v, as fastavro's reader returns it, can have come from schema s."""
    s = schema.unwrap(s)
    if isinstance(s, list):
        return any(read_fits(schema, v, b) for b in s)
    t, lt = schema.kind(s)
    converted = lt if lt in CONVERTED.get(t, ()) else None
    if v is None:
        return t == "null"
    if isinstance(v, datetime.datetime):
        return converted is not None and "timestamp" in converted and (v.tzinfo is None) == converted.startswith("local-")
    if isinstance(v, datetime.date):
        return converted == "date"
    if isinstance(v, datetime.time):
        return converted in ("time-millis", "time-micros")
    if isinstance(v, decimal.Decimal):
        return converted == "decimal"
    if type(v).__name__ == "UUID":
        return converted == "uuid"
    if converted is not None:
        return False
    if isinstance(v, bool):
        return t == "boolean"
    if isinstance(v, int):
        return t in ("int", "long")
    if isinstance(v, float):
        return t in ("float", "double")
    if isinstance(v, str):
        return t == "string" or (t == "enum" and v in s["symbols"])
    if isinstance(v, (bytes, bytearray)):
        return t == "bytes" or (t == "fixed" and len(v) == s["size"])
    if isinstance(v, list):
        return t == "array"
    if isinstance(v, dict):
        if t in ("record", "error"):
            return set(v) == {f["name"] for f in s["fields"]}
        return t == "map"
    return False


def to_plain(schema, v, s):
    s = schema.unwrap(s)
    if isinstance(s, list):
        for b in s:
            if read_fits(schema, v, b):
                return to_plain(schema, v, b)
        raise ValueError("value %r fits no branch of union %r" % (v, s))
    if v is None:
        return None
    t, lt = schema.kind(s)
    if isinstance(v, datetime.datetime):
        us = micros(v - (EPOCH_NAIVE if v.tzinfo is None else EPOCH_UTC))
        return us // 1000 if lt.endswith("millis") else us
    if isinstance(v, datetime.date):
        return (v - EPOCH_DATE).days
    if isinstance(v, datetime.time):
        us = ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
        return us // 1000 if lt == "time-millis" else us
    if isinstance(v, decimal.Decimal):
        sign, digits, exponent = v.as_tuple()
        unscaled = int("".join(map(str, digits)) or "0") * 10 ** (exponent + int(s.get("scale", 0)))
        return twos_complement(-unscaled if sign else unscaled, s["size"] if t == "fixed" else None)
    if type(v).__name__ == "UUID":
        return str(v)
    if t in ("record", "error"):
        return {f["name"]: to_plain(schema, v[f["name"]], f["type"]) for f in s["fields"]}
    if t == "array":
        return [to_plain(schema, x, s["items"]) for x in v]
    if t == "map":
        return {k: to_plain(schema, x, s["values"]) for k, x in v.items()}
    return v


def to_json(v):
    """Plain Avro value -> JSON value, with bytes as {"$bytes": base64}."""
    if isinstance(v, (bytes, bytearray)):
        return {BYTES_MARKER: base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return v


def schema_id_of(raw):
    """The schema id in a Confluent wire-format value (magic byte 0 + 4-byte id)."""
    if raw is not None and len(raw) >= 5 and raw[0] == 0:
        return struct.unpack(">I", raw[1:5])[0]
    return None


# ---------------------------------------------------------------------------
# Subcommands


def cmd_create_topics(args):
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    names = [t for t in args.topics.split(",") if t]
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=args.partitions, replication_factor=1) for t in names],
        operation_timeout=30, request_timeout=30)
    failed = False
    for name, fut in futures.items():
        try:
            fut.result()
            log("created topic %s with %d partitions" % (name, args.partitions))
        except KafkaException as e:
            err = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                log("topic %s already exists" % name)
            else:
                log("creating topic %s failed: %s" % (name, err))
                failed = True
    md = admin.list_topics(timeout=30)
    counts = {t: len(md.topics[t].partitions) if t in md.topics else 0 for t in names}
    print(json.dumps({"partitions": counts}), flush=True)
    return 1 if failed else 0


def cmd_produce(args):
    with open(args.schema) as f:
        schema_text = f.read()
    schema_obj = json.loads(schema_text)
    refs = [Reference(spec) for spec in args.reference or []]
    registry = SchemaRegistryClient({"url": args.registry})
    value_schema = schema_text
    if refs:
        register_references(registry, refs)
        # The schema's references: those it uses itself, and any --reference no other
        # reference uses (so none given is dropped); nested ones come through theirs.
        used_by_refs = {id(d) for r in refs for d in direct_references(r.obj, refs) if d is not r}
        direct = direct_references(schema_obj, refs)
        mine = [r for r in refs if r in direct or id(r) not in used_by_refs]
        value_schema = RegistrySchema(schema_text, "AVRO",
                                      [SchemaReference(r.name, r.subject, r.version) for r in mine])
        log("value schema references %s" % ", ".join("%s (%s v%d)" % (r.name, r.subject, r.version) for r in mine))
    generator = Generator(Schema(schema_obj, [r.obj for r in refs]), args.seed)
    producer = SerializingProducer({
        "bootstrap.servers": args.bootstrap,
        "key.serializer": StringSerializer("utf_8"),
        "value.serializer": AvroSerializer(registry, value_schema, conf={
            "auto.register.schemas": True,
            "subject.name.strategy": topic_subject_name_strategy,  # T-value
        }),
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(args.timeout_seconds * 1000),
    })
    delivered, failures, schema_ids = [0], [], set()

    def on_delivery(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            delivered[0] += 1
            schema_ids.add(schema_id_of(msg.value()))

    dump = open(args.dump, "w") if args.dump else None
    try:
        for i in range(args.count):
            key = "k%d" % (i % args.partitions_key_cardinality)
            value = generator.record()
            if dump:
                dump.write(json.dumps({"key": key, "value": to_json(value)}, ensure_ascii=False, sort_keys=True) + "\n")
            while True:
                try:
                    producer.produce(args.topic, key=key, value=value, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.5)
            producer.poll(0)
        remaining = producer.flush(args.timeout_seconds + 5)
    finally:
        if dump:
            dump.close()
    print(json.dumps({"count": delivered[0], "schema_ids": sorted(i for i in schema_ids if i is not None)}),
          flush=True)
    if failures or remaining:
        log("%d deliveries failed, %d not delivered; first error: %s"
            % (len(failures), remaining, failures[0] if failures else "-"))
        return 1
    return 0


def cmd_consume(args):
    registry = SchemaRegistryClient({"url": args.registry})
    # No schema given: each record is read with its writer schema, fetched by id.
    subject = "%s-value" % args.topic
    deserializer = AvroDeserializer(registry, conf={"subject.name.strategy": topic_subject_name_strategy})
    key_deserializer = StringDeserializer("utf_8")
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group or "fieldcrypt-interop-%s" % args.topic,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "isolation.level": args.isolation,
    })
    start = time.monotonic()

    def on_assign(c, partitions):
        log("assigned %s after %.1fs" % ([p.partition for p in partitions], time.monotonic() - start))

    consumer.subscribe([args.topic], on_assign=on_assign)
    schemas, schema_ids, count = {}, [], 0
    deadline = start + args.timeout_seconds
    try:
        with open(args.out, "w") as out:
            while count < args.count and time.monotonic() < deadline:
                msg = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
                if msg is None:
                    continue
                if msg.error():
                    log("consumer error: %s" % msg.error())
                    continue
                raw = msg.value()
                ctx = SerializationContext(msg.topic(), MessageField.VALUE, msg.headers())
                value = deserializer(raw, ctx)
                schema_id = schema_id_of(raw)
                if schema_id is not None and schema_id not in schema_ids:
                    schema_ids.append(schema_id)
                if value is not None and schema_id is not None:
                    if schema_id not in schemas:
                        # Same (subject, id) as the deserializer asked for: a cache hit.
                        writer = registry.get_schema(schema_id, subject_name=subject)
                        schemas[schema_id] = Schema(json.loads(writer.schema_str),
                                                    registry_references(registry, writer))
                    value = to_plain(schemas[schema_id], value, schemas[schema_id].root)
                key = key_deserializer(msg.key(), SerializationContext(msg.topic(), MessageField.KEY))
                headers = {name: (None if hv is None else base64.b64encode(hv).decode("ascii"))
                           for name, hv in (msg.headers() or [])}
                out.write(json.dumps({"partition": msg.partition(), "offset": msg.offset(), "key": key,
                                      "value": to_json(value), "headers": headers},
                                     ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
    finally:
        consumer.close()
    print(json.dumps({"count": count, "schema_ids": schema_ids}), flush=True)
    if count < args.count:
        log("read %d of %d records before the %gs timeout" % (count, args.count, args.timeout_seconds))
        return 2
    return 0


def load_pairs(path):
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rec = json.loads(line)
                pairs.append((rec.get("key"), json.dumps(rec.get("value"), sort_keys=True, ensure_ascii=False)))
    return pairs


def cmd_compare(args):
    expected, actual = Counter(load_pairs(args.expected)), Counter(load_pairs(args.actual))
    missing, unexpected = expected - actual, actual - expected
    n_exp, n_act = sum(expected.values()), sum(actual.values())
    if not missing and not unexpected:
        print("compare: %d records equal" % n_exp)
        return 0
    print("compare: MISMATCH expected %d records, actual %d; %d missing, %d unexpected"
          % (n_exp, n_act, sum(missing.values()), sum(unexpected.values())))
    shown = 0
    for (key, value), n in sorted(missing.items()):
        if shown >= 5:
            break
        shown += 1
        print("  missing    x%d key=%s value=%s" % (n, key, value[:300]))
        twin = next((v for (k, v) in unexpected if k == key), None)
        if twin is not None:
            a, b = json.loads(value), json.loads(twin)
            if isinstance(a, dict) and isinstance(b, dict):
                diff = sorted(f for f in set(a) | set(b) if a.get(f, "<absent>") != b.get(f, "<absent>"))
                for f in diff[:10]:
                    print("    field %s: expected %s, actual %s"
                          % (f, json.dumps(a.get(f, "<absent>"))[:120], json.dumps(b.get(f, "<absent>"))[:120]))
    for (key, value), n in sorted(unexpected.items())[:5]:
        print("  unexpected x%d key=%s value=%s" % (n, key, value[:300]))
    return 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create-topics", help="create topics with the AdminClient")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topics", required=True, help="comma-separated topic names")
    p.add_argument("--partitions", type=int, default=1)
    p.set_defaults(func=cmd_create_topics)

    p = sub.add_parser("produce", help="produce generated records with AvroSerializer")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--schema", required=True, help="Avro schema file (.avsc)")
    p.add_argument("--reference", action="append", metavar="NAME=SUBJECT=FILE.avsc",
                   help="a schema the value schema (or a later --reference) references: registered "
                        "under SUBJECT first, referenced as NAME; repeatable, dependencies first")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--partitions-key-cardinality", type=int, default=50, help="keys are k{i %% K}")
    p.add_argument("--dump", help="write the generated records here as JSON lines")
    p.add_argument("--timeout-seconds", type=float, default=60.0, help="delivery timeout")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("consume", help="consume records with AvroDeserializer")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout-seconds", type=float, required=True)
    p.add_argument("--group")
    p.add_argument("--isolation", choices=["read_uncommitted", "read_committed"], default="read_uncommitted")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("compare", help="compare a produce dump with a consume output")
    p.add_argument("--expected", required=True)
    p.add_argument("--actual", required=True)
    p.set_defaults(func=cmd_compare)

    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
