"""Confluent client-side field-level encryption (CSFLE), as confluent-kafka-python
does it, for the interop tests.

fieldcrypt must read records that Confluent's Python client encrypted with an
ENCRYPT domain rule (FieldEncryptionExecutor, Tink, the DEK Registry) and write
records that client decrypts. This script is that client. It uses the local-kms
KMS driver (LocalKmsDriver: the KEK is HKDF-SHA256 of a secret), with the secret
given on the command line; the registry is any Confluent-compatible one with the
DEK Registry (tools/test_registry.py serves both), the broker any Kafka-protocol
one (the tests use tansu).

  csfle_client.py produce --bootstrap HOST:PORT --registry URL --topic T
          --schema FILE.avsc --records FILE.jsonl --kek-name K --secret S
          [--algorithm AES256_GCM|AES256_SIV|AES128_GCM] [--tags PII[,TAG...]]
          [--kms-key-id ID] [--expiry-days N] [--partitions P]
          [--timeout-seconds S]
      Registers the schema under T-value with a ruleSet holding one ENCRYPT
      domain rule (TRANSFORM, WRITEREAD) over the tags, params encrypt.kek.name=K,
      encrypt.kms.type=local-kms, encrypt.kms.key.id=ID (default: K),
      encrypt.dek.algorithm (default AES256_GCM) and, with --expiry-days N > 0,
      encrypt.dek.expiry.days=N (ciphertexts then carry the 5-byte DEK version
      prefix). Creates the topic if it is missing (P partitions, default 1).
      Then produces each line of the JSONL file (one Avro record as JSON) with
      AvroSerializer(auto.register.schemas=False, use.latest.version=True; the
      rules only run on a "latest" schema) and the FieldEncryptionExecutor, which
      creates the KEK and the DEK in the DEK Registry on the first record. Keys
      are null. Prints {"count", "schema_id", "subject"}; exits 1 if a record
      does not serialize or a delivery failed.

  csfle_client.py consume --bootstrap HOST:PORT --registry URL --topic T
          --count N --secret S [--timeout-seconds S]
      Reads the topic from the beginning of every partition (assigned, no group
      join) through AvroDeserializer and the FieldEncryptionExecutor: the writer
      schema and its ruleSet come from GET /schemas/ids/{id}, the DEK from the
      DEK Registry, unwrapped with local-kms. Prints each decrypted record as one
      JSON line (keys sorted), in partition then offset order. Exits 0 when N
      records were read, 1 when a record does not deserialize (e.g. does not
      decrypt: the rule's onFailure is ERROR), 2 when fewer than N arrived
      before the timeout.

  csfle_client.py vectors --out FILE
      Golden vectors: what the Python/Tink implementation outputs with a fixed
      DEK (AES256_GCM: bytes 00..1f; AES256_SIV: bytes 00..3f) and, for GCM, a
      fixed nonce (a0..ab), for string and bytes fields, with and without the
      DEK-version prefix; the serialized Tink key protos; and the local-kms
      wrapped DEKs for the secret "mysecret" (one wrapped by Tink, whose IV is
      random, and one with the fixed IV b0..bb). The records go through the real
      AvroSerializer and executor against an in-process mock:// registry, with
      two Python seams of its Cryptor patched (generate_key returns the fixed
      DEK; encrypt uses the fixed GCM nonce, since Tink draws its nonce from its
      C++ RNG; AES-SIV is Tink's, unpatched); every Kafka value is then read back
      by the unpatched deserializer, i.e. decrypted by Tink. It also checks that
      Tink's own GCM output is nonce || AES-GCM ciphertext || tag and that Tink
      unwraps the fixed-IV wraps. Writes the JSON and runs check-vectors on it.

  csfle_client.py check-vectors FILE
      Checks every vector of FILE with the cryptography package alone (HKDF,
      AESGCM, AESSIV, no Tink, no confluent-kafka): the local-kms KEK, the key
      protos, both wraps, each field ciphertext (decrypt and re-encrypt), its
      base64 text, and each Kafka value decoded by hand. Exits 1 on a mismatch.

JSON records (the --records input and the consume output) are Avro values in
their plain JSON form, with bytes (and fixed) as {"$bytes": "<base64>"}; other
logical types that fastavro turns into objects are printed with str().
"""

import argparse
import base64
import copy
import importlib.metadata
import json
import struct
import sys
import time

BYTES_MARKER = "$bytes"
LOCAL_KMS = "local-kms"

# The fixed material of the golden vectors.
VECTOR_SECRET = "mysecret"
VECTOR_KEK_NAME = "kek1"
VECTOR_KMS_KEY_ID = "mykey"
VECTOR_DEK32 = bytes(range(32))
VECTOR_DEK64 = bytes(range(64))
VECTOR_GCM_NONCE = bytes(range(0xA0, 0xAC))
VECTOR_WRAP_IV = bytes(range(0xB0, 0xBC))
VECTOR_EXPIRY_DAYS = 7
VECTOR_SCHEMA = {
    "type": "record", "name": "Vector", "namespace": "fieldcrypt.csfle",
    "fields": [
        {"name": "s", "type": "string", "confluent:tags": ["PII"]},
        {"name": "b", "type": "bytes", "confluent:tags": ["PII"]},
    ],
}
VECTOR_PLAINTEXTS = [
    ("hello world", b"hello world"),
    ("", b""),
    ("zo\u00eb \u6771\u4eac \U0001f642", bytes([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF])),
]


def log(msg):
    sys.stderr.write("csfle_client: %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# JSON <-> Avro values


def from_json(v):
    """Plain JSON value -> Python Avro value: {"$bytes": base64} becomes bytes."""
    if isinstance(v, dict):
        if set(v) == {BYTES_MARKER} and isinstance(v[BYTES_MARKER], str):
            return base64.b64decode(v[BYTES_MARKER], validate=True)
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def to_json(v):
    """Python Avro value -> plain JSON value, bytes as {"$bytes": base64}."""
    if isinstance(v, (bytes, bytearray)):
        return {BYTES_MARKER: base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)  # datetime, Decimal, UUID: logical types fastavro converted


def causes(e):
    """An exception and its causes as one line: the serde wraps the RuleError it hit."""
    parts = []
    while e is not None:
        parts.append("%s(%s)" % (type(e).__name__, e) if str(e) else type(e).__name__)
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def schema_id_of(raw):
    if raw is not None and len(raw) >= 5 and raw[0] == 0:
        return struct.unpack(">I", raw[1:5])[0]
    return None


# ---------------------------------------------------------------------------
# The Confluent client pieces (imported lazily: check-vectors needs none of them)


def register_executors(secret):
    """Registers the ENCRYPT field executor and the local-kms and aws-kms drivers
    (all process-global) and returns the rule config carrying the secret. The AWS
    driver takes credentials, region and endpoint from the environment (boto3:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_KMS for moto)."""
    from confluent_kafka.schema_registry.rules.encryption.awskms.aws_driver import AwsKmsDriver
    from confluent_kafka.schema_registry.rules.encryption.encrypt_executor import FieldEncryptionExecutor
    from confluent_kafka.schema_registry.rules.encryption.localkms.local_driver import LocalKmsDriver

    FieldEncryptionExecutor.register()
    LocalKmsDriver.register()
    AwsKmsDriver.register()
    return {"secret": secret}


def encrypt_rule(tags, kek_name, kms_key_id, algorithm, expiry_days, kms_type=LOCAL_KMS):
    from confluent_kafka.schema_registry import Rule, RuleKind, RuleMode, RuleParams

    params = {
        "encrypt.kek.name": kek_name,
        "encrypt.kms.type": kms_type,
        "encrypt.kms.key.id": kms_key_id,
        "encrypt.dek.algorithm": algorithm,
    }
    if expiry_days:
        params["encrypt.dek.expiry.days"] = str(expiry_days)
    name = "encrypt" + "".join(c if c.isalnum() or c in "_-" else "_" for c in "_".join(tags))
    # Rule(name, doc, kind, mode, type, tags, params, expr, on_success, on_failure, disabled);
    # onFailure unset is ERROR on write and on read: a record that does not decrypt fails.
    return Rule(name, None, RuleKind.TRANSFORM, RuleMode.WRITEREAD, "ENCRYPT", list(tags),
                RuleParams(params), None, None, None, False)


def serializer_for(registry, rule_conf, rule_registry=None):
    from confluent_kafka.schema_registry.avro import AvroSerializer

    # Rules run only on a "latest" schema, and use.latest.version excludes auto-register.
    return AvroSerializer(registry, None, conf={
        "auto.register.schemas": False,
        "use.latest.version": True,
        "subject.name.strategy.type": "TOPIC",
    }, rule_conf=rule_conf, rule_registry=rule_registry)


def deserializer_for(registry, rule_conf, rule_registry=None):
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    return AvroDeserializer(registry, conf={"subject.name.strategy.type": "TOPIC"},
                            rule_conf=rule_conf, rule_registry=rule_registry)


def register_with_rule(registry, subject, schema_text, rule):
    from confluent_kafka.schema_registry import RuleSet
    from confluent_kafka.schema_registry import Schema as RegistrySchema

    schema = RegistrySchema(schema_text, "AVRO", [], None, RuleSet(None, [rule]))
    return registry.register_schema(subject, schema)


def ensure_topic(bootstrap, topic, partitions):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic
    from confluent_kafka.error import KafkaError

    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                              operation_timeout=30, request_timeout=30)[topic]
    try:
        fut.result()
        log("created topic %s with %d partition(s)" % (topic, partitions))
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


# ---------------------------------------------------------------------------
# produce / consume


def cmd_produce(args):
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

    with open(args.schema) as f:
        schema_text = f.read()
    json.loads(schema_text)  # fail early on a bad file
    records = []
    with open(args.records) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                records.append(from_json(json.loads(line)))
    tags = [t for t in args.tags.split(",") if t]
    if not tags:
        raise SystemExit("--tags: at least one tag (a rule without tags would encrypt every field)")

    rule_conf = register_executors(args.secret)
    registry = SchemaRegistryClient({"url": args.registry})
    subject = "%s-value" % args.topic
    rule = encrypt_rule(tags, args.kek_name, args.kms_key_id or args.kek_name, args.algorithm,
                        args.expiry_days, args.kms_type)
    schema_id = register_with_rule(registry, subject, schema_text, rule)
    log("registered %s under %s as id %d with rule %s" % (args.schema, subject, schema_id, rule.name))
    ensure_topic(args.bootstrap, args.topic, args.partitions)

    serializer = serializer_for(registry, rule_conf)
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(args.timeout_seconds * 1000),
    })
    delivered, failures, wire_ids = [0], [], set()

    def on_delivery(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            delivered[0] += 1
            wire_ids.add(schema_id_of(msg.value()))

    ctx = SerializationContext(args.topic, MessageField.VALUE)
    for i, record in enumerate(records):
        try:
            value = serializer(record, ctx)  # encrypts the tagged fields of record in place
        except SerializationError as e:
            log("record %d does not serialize: %s" % (i + 1, causes(e)))
            producer.flush(args.timeout_seconds)
            return 1
        while True:
            try:
                producer.produce(args.topic, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    remaining = producer.flush(args.timeout_seconds + 5)
    print(json.dumps({"count": delivered[0], "schema_id": schema_id, "subject": subject}), flush=True)
    if wire_ids - {schema_id}:
        log("records carry schema ids %s, expected %d" % (sorted(wire_ids), schema_id))
        return 1
    if failures or remaining:
        log("%d deliveries failed, %d not delivered; first error: %s"
            % (len(failures), remaining, failures[0] if failures else "-"))
        return 1
    return 0


def cmd_consume(args):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

    rule_conf = register_executors(args.secret)
    registry = SchemaRegistryClient({"url": args.registry})
    deserializer = deserializer_for(registry, rule_conf)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "fieldcrypt-csfle-%s" % args.topic,  # required; assign() joins no group
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    deadline = time.monotonic() + args.timeout_seconds
    got = []
    try:
        while True:
            md = consumer.list_topics(args.topic, timeout=max(1.0, deadline - time.monotonic()))
            topic_md = md.topics.get(args.topic)
            if topic_md is not None and topic_md.error is None and topic_md.partitions:
                break
            if time.monotonic() >= deadline:
                log("topic %s not found before the timeout" % args.topic)
                return 2
            time.sleep(0.2)
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in sorted(topic_md.partitions)])
        while len(got) < args.count and time.monotonic() < deadline:
            msg = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            if msg.error():
                log("consumer error: %s" % msg.error())
                continue
            ctx = SerializationContext(msg.topic(), MessageField.VALUE, msg.headers())
            try:
                got.append((msg.partition(), msg.offset(), deserializer(msg.value(), ctx)))
            except SerializationError as e:
                log("the record at partition %d offset %d does not deserialize: %s"
                    % (msg.partition(), msg.offset(), causes(e)))
                return 1
    finally:
        consumer.close()
    for _, _, value in sorted(got, key=lambda t: (t[0], t[1])):
        print(json.dumps(to_json(value), ensure_ascii=False, sort_keys=True), flush=True)
    if len(got) < args.count:
        log("read %d of %d records before the %gs timeout" % (len(got), args.count, args.timeout_seconds))
        return 2
    return 0


# ---------------------------------------------------------------------------
# Golden vectors


def key_proto(algorithm, raw):
    """The serialized Tink key proto, built by hand: AesGcmKey{key_value = 3} or
    AesSivKey{key_value = 2}, version 0 left out."""
    tag = 0x12 if algorithm == "AES256_SIV" else 0x1A
    return bytes([tag, len(raw)]) + raw


def local_kms_kek(secret):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"").derive(secret.encode("utf-8"))


def cmd_vectors(args):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from tink.proto import aes_gcm_pb2, aes_siv_pb2

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.rules.encryption.dek_registry.dek_registry_client import DekAlgorithm
    from confluent_kafka.schema_registry.rules.encryption.encrypt_executor import Clock, Cryptor, FieldEncryptionExecutor
    from confluent_kafka.schema_registry.rules.encryption.localkms.local_client import LocalKmsClient
    from confluent_kafka.schema_registry.rules.encryption.localkms.local_driver import LocalKmsDriver
    from confluent_kafka.serialization import MessageField, SerializationContext

    executor = FieldEncryptionExecutor.register_with_clock(Clock())
    LocalKmsDriver.register()
    rule_conf = {"secret": VECTOR_SECRET}
    registry = SchemaRegistryClient.new_client({"url": "mock://csfle-vectors"})  # in-process
    serializer = serializer_for(registry, rule_conf)
    deserializer = deserializer_for(registry, rule_conf)
    raw_keys = {"AES256_GCM": VECTOR_DEK32, "AES256_SIV": VECTOR_DEK64}

    # The two Python seams of Cryptor. Tink's key generation and GCM nonce come
    # from its C++ RNG, which no Python patch (os.urandom, random) reaches.
    orig_generate, orig_encrypt = Cryptor.generate_key, Cryptor.encrypt

    def fixed_generate_key(self):
        if self.dek_format is DekAlgorithm.AES256_SIV:
            return aes_siv_pb2.AesSivKey(version=0, key_value=VECTOR_DEK64).SerializeToString()
        return aes_gcm_pb2.AesGcmKey(version=0, key_value=VECTOR_DEK32).SerializeToString()

    def fixed_nonce_encrypt(self, dek, plaintext, associated_data):
        if self.is_deterministic:
            return orig_encrypt(self, dek, plaintext, associated_data)  # Tink's AES-SIV as is
        key = aes_gcm_pb2.AesGcmKey()
        key.ParseFromString(dek)
        return VECTOR_GCM_NONCE + AESGCM(key.key_value).encrypt(VECTOR_GCM_NONCE, plaintext, associated_data)

    cases = []
    for algorithm in ("AES256_GCM", "AES256_SIV"):
        for expiry_days in (0, VECTOR_EXPIRY_DAYS):
            topic = "vectors-%s%s" % (algorithm.lower().replace("_", "-"), "-v" if expiry_days else "")
            subject = "%s-value" % topic
            rule = encrypt_rule(["PII"], VECTOR_KEK_NAME, VECTOR_KMS_KEY_ID, algorithm, expiry_days)
            schema_id = register_with_rule(registry, subject, json.dumps(VECTOR_SCHEMA), rule)
            ctx = SerializationContext(topic, MessageField.VALUE)
            records = []
            Cryptor.generate_key, Cryptor.encrypt = fixed_generate_key, fixed_nonce_encrypt
            try:
                for text, data in VECTOR_PLAINTEXTS:
                    plain = {"s": text, "b": data}
                    encrypted = copy.deepcopy(plain)
                    value = serializer(encrypted, ctx)  # encrypted now holds the field values
                    records.append((plain, encrypted, value))
            finally:
                Cryptor.generate_key, Cryptor.encrypt = orig_generate, orig_encrypt
            dek = executor.executor.client.get_dek(VECTOR_KEK_NAME, subject, DekAlgorithm[algorithm],
                                                   1 if not expiry_days else -1, False)
            prefix = "DEK-version prefix (encrypt.dek.expiry.days=%d)" % expiry_days
            case = {
                "name": "%s, %s" % (algorithm, prefix if expiry_days else "no prefix"),
                "algorithm": algorithm,
                "dek_version_prefix": bool(expiry_days),
                "rule_params": dict(rule.params.params),
                "subject": subject,
                "schema_id": schema_id,
                "dek_version": dek.version,
                "dek_encrypted_key_material_b64": dek.encrypted_key_material,
            }
            if algorithm != "AES256_SIV":
                case["nonce_hex"] = VECTOR_GCM_NONCE.hex()
            case["records"] = []
            for plain, encrypted, value in records:
                # Read back by the unpatched deserializer: Tink decrypts what was written.
                back = deserializer(value, ctx)
                if back != plain:
                    raise SystemExit("vectors: %s: read back %r, wrote %r" % (case["name"], back, plain))
                ct_s = base64.b64decode(encrypted["s"], validate=True)
                case["records"].append({
                    "plaintext": to_json(plain),
                    "kafka_value_hex": value.hex(),
                    "fields": {
                        "s": {"type": "string", "plaintext_hex": plain["s"].encode("utf-8").hex(),
                              "ciphertext_hex": ct_s.hex(), "encrypted_text": encrypted["s"]},
                        "b": {"type": "bytes", "plaintext_hex": plain["b"].hex(),
                              "ciphertext_hex": encrypted["b"].hex()},
                    },
                })
            cases.append(case)
            log("case %s: schema id %d, DEK version %d" % (case["name"], schema_id, dek.version))

    # The fixed-nonce GCM vectors are Tink's format: Tink's own output (random nonce)
    # is nonce || AES-GCM ciphertext || tag under the same key and empty AAD.
    cryptor = Cryptor(DekAlgorithm.AES256_GCM)
    gcm_proto = key_proto("AES256_GCM", VECTOR_DEK32)
    for _, data in VECTOR_PLAINTEXTS:
        ct = cryptor.encrypt(gcm_proto, data, Cryptor.EMPTY_AAD)
        if ct[12:] != AESGCM(VECTOR_DEK32).encrypt(ct[:12], data, b""):
            raise SystemExit("vectors: Tink's AES256_GCM output is not nonce || AES-GCM(pt)")

    kek16 = local_kms_kek(VECTOR_SECRET)
    kms_aead = LocalKmsClient(VECTOR_SECRET).get_aead("local-kms://" + VECTOR_KMS_KEY_ID)
    deks = {}
    for algorithm, raw in raw_keys.items():
        proto = key_proto(algorithm, raw)
        tink_proto = (aes_siv_pb2.AesSivKey(version=0, key_value=raw) if algorithm == "AES256_SIV"
                      else aes_gcm_pb2.AesGcmKey(version=0, key_value=raw)).SerializeToString()
        if tink_proto != proto:
            raise SystemExit("vectors: the hand-built %s key proto differs from Tink's" % algorithm)
        wrapped_by_tink = kms_aead.encrypt(proto, b"")
        wrapped_fixed = VECTOR_WRAP_IV + AESGCM(kek16).encrypt(VECTOR_WRAP_IV, proto, b"")
        if kms_aead.decrypt(wrapped_fixed, b"") != proto:
            raise SystemExit("vectors: Tink's local-kms does not unwrap the fixed-IV wrap")
        deks[algorithm] = {
            "raw_key_hex": raw.hex(),
            "tink_key_proto_hex": proto.hex(),
            "wrapped_by_tink_b64": base64.b64encode(wrapped_by_tink).decode("ascii"),
            "wrapped_fixed_iv": {
                "iv_hex": VECTOR_WRAP_IV.hex(),
                "encrypted_key_material_b64": base64.b64encode(wrapped_fixed).decode("ascii"),
            },
        }

    out = {
        "description": (
            "Confluent CSFLE golden vectors: what confluent-kafka-python (FieldEncryptionExecutor, Tink) "
            "writes for ENCRYPT-tagged Avro string and bytes fields with a fixed DEK and, for AES256_GCM, "
            "a fixed nonce; made by tests/interop/csfle_client.py vectors, checked by its check-vectors."),
        "versions": {name: importlib.metadata.version(name) for name in ("confluent-kafka", "tink")},
        "format": {
            "string_field": "base64 (standard alphabet, padded) of ciphertext; the plaintext is the UTF-8 text",
            "bytes_field": "ciphertext",
            "ciphertext": "[00 || u32be(dek_version) when dek_version_prefix] || (AES256_GCM: nonce(12) || "
                          "AES-GCM(key, nonce, plaintext, aad='') || tag(16); AES256_SIV: RFC 5297 AES-SIV with "
                          "one empty associated-data component, SIV(16) || CTR ciphertext)",
            "kafka_value": "00 || u32be(schema_id) || Avro binary of the record with the encrypted field values",
            "dek": "encryptedKeyMaterial (base64) = local-kms wrap of tink_key_proto: IV(12) || "
                   "AES-128-GCM(kek16, IV, proto, aad='') || tag(16); kek16 = HKDF-SHA256(ikm=utf8(secret), "
                   "salt=none, info='', 16 bytes). The Tink wrap's IV is random: only unwrapping is reproducible.",
        },
        "provenance": {
            "AES256_SIV": "field ciphertexts are Tink's own (deterministic), through the unpatched executor",
            "AES256_GCM": "Tink draws the nonce in C++, so the executor's Cryptor.encrypt computed nonce || "
                          "AES-GCM with the fixed nonce; every value was then decrypted by the unpatched "
                          "executor (Tink), and Tink's own output was checked to be nonce || AES-GCM || tag",
            "random": "deks.*.wrapped_by_tink_b64 and cases[].dek_encrypted_key_material_b64 are Tink "
                      "local-kms wraps with a random IV: they change on every run; check by unwrapping",
        },
        "local_kms": {"secret": VECTOR_SECRET, "kek16_hex": kek16.hex(), "kek_name": VECTOR_KEK_NAME,
                      "kms_key_id": VECTOR_KMS_KEY_ID},
        "schema": VECTOR_SCHEMA,
        "deks": deks,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
        f.write("\n")
    log("wrote %s" % args.out)
    return check_vectors(args.out)


# ---------------------------------------------------------------------------
# Independent check of a vectors file: cryptography only


def read_varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos


def check_vectors(path):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

    with open(path) as f:
        v = json.load(f)
    failures = []
    checked = [0]

    def expect(ok, what):
        checked[0] += 1
        if not ok:
            failures.append(what)

    def opened(fn, *args):
        """fn(*args), or None when it raises (a tag or SIV that does not verify)."""
        try:
            return fn(*args)
        except Exception:
            return None

    kms = v["local_kms"]
    kek16 = local_kms_kek(kms["secret"])
    expect(kek16.hex() == kms["kek16_hex"], "local-kms KEK (HKDF) of secret %r" % kms["secret"])
    protos = {}
    for algorithm, d in v["deks"].items():
        raw = bytes.fromhex(d["raw_key_hex"])
        proto = bytes.fromhex(d["tink_key_proto_hex"])
        protos[algorithm] = proto
        expect(proto == key_proto(algorithm, raw), "%s key proto" % algorithm)
        tinked = base64.b64decode(d["wrapped_by_tink_b64"], validate=True)
        expect(opened(AESGCM(kek16).decrypt, tinked[:12], tinked[12:], b"") == proto,
               "%s Tink wrap unwraps" % algorithm)
        iv = bytes.fromhex(d["wrapped_fixed_iv"]["iv_hex"])
        fixed = base64.b64decode(d["wrapped_fixed_iv"]["encrypted_key_material_b64"], validate=True)
        expect(fixed == iv + AESGCM(kek16).encrypt(iv, proto, b""), "%s fixed-IV wrap" % algorithm)
    for case in v["cases"]:
        algorithm = case["algorithm"]
        raw = bytes.fromhex(v["deks"][algorithm]["raw_key_hex"])
        ekm = base64.b64decode(case["dek_encrypted_key_material_b64"], validate=True)
        expect(opened(AESGCM(kek16).decrypt, ekm[:12], ekm[12:], b"") == protos[algorithm],
               "%s: the registry's DEK unwraps to the key proto" % case["name"])
        for i, rec in enumerate(case["records"]):
            where = "%s, record %d" % (case["name"], i)
            values = {}
            for name, fld in rec["fields"].items():
                pt = bytes.fromhex(fld["plaintext_hex"])
                ct = bytes.fromhex(fld["ciphertext_hex"])
                values[name] = ct
                if fld["type"] == "string":
                    expect(base64.b64encode(ct).decode("ascii") == fld["encrypted_text"],
                           "%s, %s: base64 text" % (where, name))
                    expect(pt.decode("utf-8") == rec["plaintext"][name], "%s, %s: plaintext" % (where, name))
                    values[name] = fld["encrypted_text"].encode("ascii")
                else:
                    expect(base64.b64decode(rec["plaintext"][name][BYTES_MARKER]) == pt,
                           "%s, %s: plaintext" % (where, name))
                body = ct
                if case["dek_version_prefix"]:
                    expect(body[:5] == b"\x00" + struct.pack(">I", case["dek_version"]),
                           "%s, %s: DEK-version prefix" % (where, name))
                    body = body[5:]
                if algorithm == "AES256_SIV":
                    expect(AESSIV(raw).encrypt(pt, [b""]) == body, "%s, %s: AES-SIV" % (where, name))
                    expect(opened(AESSIV(raw).decrypt, body, [b""]) == pt, "%s, %s: AES-SIV decrypt" % (where, name))
                else:
                    nonce = bytes.fromhex(case["nonce_hex"])
                    expect(body[:12] == nonce, "%s, %s: nonce" % (where, name))
                    expect(AESGCM(raw).encrypt(nonce, pt, b"") == body[12:], "%s, %s: AES-GCM" % (where, name))
                    expect(opened(AESGCM(raw).decrypt, body[:12], body[12:], b"") == pt,
                           "%s, %s: AES-GCM decrypt" % (where, name))
            # The Kafka value, decoded by hand: magic, schema id, then each field in
            # schema order as Avro string/bytes (zigzag varint length + data).
            kv = bytes.fromhex(rec["kafka_value_hex"])
            expect(kv[:5] == b"\x00" + struct.pack(">I", case["schema_id"]), "%s: wire header" % where)
            pos = 5
            for fdef in v["schema"]["fields"]:
                n, pos = read_varint(kv, pos)
                expect(kv[pos:pos + n] == values[fdef["name"]], "%s: Avro field %s" % (where, fdef["name"]))
                pos += n
            expect(pos == len(kv), "%s: Kafka value length" % where)
    for what in failures:
        log("check-vectors: MISMATCH %s" % what)
    print("check-vectors: %d checks, %d failed (%s)" % (checked[0], len(failures), path), flush=True)
    return 1 if failures else 0


def cmd_check_vectors(args):
    return check_vectors(args.file)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    algorithms = ["AES256_GCM", "AES256_SIV", "AES128_GCM"]

    p = sub.add_parser("produce", help="register the schema with an ENCRYPT rule and produce encrypted records")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--schema", required=True, help="Avro schema file (.avsc), with confluent:tags on fields")
    p.add_argument("--records", required=True, help="JSONL file: one Avro record per line")
    p.add_argument("--kek-name", required=True)
    p.add_argument("--secret", required=True, help="the local-kms secret")
    p.add_argument("--algorithm", choices=algorithms, default="AES256_GCM")
    p.add_argument("--tags", default="PII", help="comma-separated tags the rule encrypts")
    p.add_argument("--kms-key-id", help="encrypt.kms.key.id (local-kms ignores it; aws-kms: the key ARN); default: the KEK name")
    p.add_argument("--kms-type", choices=[LOCAL_KMS, "aws-kms"], default=LOCAL_KMS,
                   help="encrypt.kms.type (aws-kms reads credentials and AWS_ENDPOINT_URL_KMS from the environment)")
    p.add_argument("--expiry-days", type=int, default=0,
                   help="encrypt.dek.expiry.days; > 0 adds the DEK-version prefix to ciphertexts")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the topic if it is created")
    p.add_argument("--timeout-seconds", type=float, default=60.0, help="delivery timeout")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("consume", help="consume and decrypt records, one JSON line each")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--secret", required=True, help="the local-kms secret")
    p.add_argument("--timeout-seconds", type=float, default=60.0)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("vectors", help="write golden vectors (and check them)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("check-vectors", help="check a vectors file with the cryptography package alone")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_vectors)

    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
