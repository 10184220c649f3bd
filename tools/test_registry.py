#!/usr/bin/env python3
"""fieldcrypt's own test Schema Registry. Its one job: serve, from memory, the part
of Confluent Schema Registry's REST API that fieldcrypt and the Confluent clients
use, so tests run without a real registry (none can be installed here).

Implements this subset of the Confluent Schema Registry API (AVRO only), with the
response shapes of Confluent Platform 7.x (the docker stack runs cp-schema-registry
7.7.1): "schemaType" is left out for AVRO, and "references", "metadata" and
"ruleSet" only appear when the schema has them.

    GET    /subjects                                  list of subjects
    GET    /subjects/{subject}/versions               list of versions
    GET    /subjects/{subject}/versions/{v|latest|-1} {"subject","version","id",
                                                      "references"?,"metadata"?,
                                                      "ruleSet"?,"schema"}
    GET    /subjects/{subject}/versions/{v}/schema    raw schema
    GET    /subjects/{subject}/versions/{v}/referencedby
                                                      ids of the schemas referencing
                                                      that version, ascending
    POST   /subjects/{subject}/versions               register {"schema","schemaType"?,
                                                      "references"?,"metadata"?,
                                                      "ruleSet"?} -> {"id"}, or with
                                                      metadata/ruleSet the whole
                                                      schema {"id","version",...}
    POST   /subjects/{subject}                        lookup (same body) -> as GET version
    DELETE /subjects/{subject}                        list of deleted versions
    GET    /schemas/ids/{id}                          {"references"?,"metadata"?,
                                                      "ruleSet"?,"schema"}
    GET    /schemas/ids/{id}/schema                   raw schema
    GET    /schemas/ids/{id}/versions                 [{"subject","version"}]
    GET    /schemas/ids/{id}/subjects                 [subject, ...]
    GET    /schemas/types                             ["AVRO"]
    GET    /associations/resources/{ns}/{name}        [] (no associations: newer
                                                      clients then use TopicNameStrategy)
    GET    /config[/{subject}]                        {"compatibilityLevel": ...}
    PUT    /config[/{subject}]                        echoes {"compatibility": ...}

and the DEK Registry of client-side field-level encryption (rule type ENCRYPT),
as Confluent's DekRegistryResource answers it, under /dek-registry/v1:

    GET    /keks?deleted=                             sorted KEK names (also
                                                      ?subjectPrefix=, ?offset=, ?limit=)
    POST   /keks                                      create {"name","kmsType","kmsKeyId",
                                                      "kmsProps"?,"doc"?,"shared"?} -> Kek
    GET    /keks/{kek}?deleted=                       Kek {"name","kmsType","kmsKeyId",
                                                      "kmsProps","doc"?,"shared","ts",
                                                      "deleted"?}
    GET    /keks/{kek}/deks?deleted=                  sorted subjects with a DEK
    POST   /keks/{kek}/deks/{subject}                 create {"version"? (1),"algorithm"?
                                                      (AES256_GCM),"encryptedKeyMaterial"}
                                                      -> Dek (405 with --legacy-dek-create)
    POST   /keks/{kek}/deks                           the same, "subject" in the body
    GET    /keks/{kek}/deks/{subject}?algorithm=&deleted=
                                                      version 1's Dek {"kekName","subject",
                                                      "version","algorithm",
                                                      "encryptedKeyMaterial","ts","deleted"?}
    GET    /keks/{kek}/deks/{subject}/versions?algorithm=&deleted=
                                                      ascending versions
    GET    /keks/{kek}/deks/{subject}/versions/{v|latest|-1}?algorithm=&deleted=
                                                      that version's Dek

"ts" is the store time in ms (the Python client treats a DEK without one as expired
on every write when encrypt.dek.expiry.days is set); --dek-age-days N stores DEKs
N days in the past, so a test can see a writer rotate an expired DEK. ?algorithm= is one of
AES128_GCM, AES256_GCM (the default), AES256_SIV (else 404); ?deleted= is true
for "true" in any case. Creating a KEK or DEK that exists is 409/40971, as the
server does (the clients then read it back); ?rewrap=true on a DEK create
replaces it. A KEK name is a letter or _ then letters, digits, _ or - (at most
256); a DEK subject is non-empty with no control characters. Nothing is ever
deleted (no DELETE routes), and this registry has no KMS: it stores and returns
encryptedKeyMaterial as sent, never fills in "keyMaterial", and a DEK created
without encryptedKeyMaterial is 422/42271 (500/50070 under a shared KEK, whose
DEKs the server would generate).

Schema ids are global and start at 1. A schema's identity, as Confluent's, is its
text (canonicalised JSON) with its references, metadata and ruleSet: the same
identity gets the same id under every subject, and the same text with another
ruleSet is a new id. Versions start at 1 per subject, and registering a schema
already under the subject returns its id without a new version. A request without
metadata or ruleSet takes the subject's latest version's (Confluent's inheritance;
default/override metadata and rules in the config are not modelled), on register
and on lookup. metadata and ruleSet are stored in Confluent's normalised form
(sorted maps and sets, empty parts left out, rule kind/mode defaulted to
TRANSFORM/WRITEREAD, "disabled" always present).

References [{"name","subject","version"}] must point at a registered subject
version (-1: the latest, stored resolved). The schema is parsed with fastavro with
the referenced schemas' named types known, nested references first, each
reference name once, as Confluent's Avro parser is fed them.

Outside /dek-registry, query parameters (?normalize=, ?subject=, ?deleted=, ...)
are accepted and ignored. Errors use Confluent's codes: 40401 subject not found,
40402 version not found, 40403 schema not found, 42201 invalid schema (also an
unknown reference), 42202 invalid version (also a DEK version), 42206 subject
still referenced (on delete), 42210 invalid ruleSet (register), 422 a body field
of the wrong JSON type, 401 bad auth; in the DEK Registry 40470 key not found,
40971 key already exists, 42271 invalid or missing key field, 50070 DEK generation
error, and 405 for a known path with another method. Deletes are permanent (no
soft delete).

Usage:
    python3 tools/test_registry.py --host 127.0.0.1 --port 0 \
        [--port-file PATH] [--basic-auth user:pass] [--legacy-dek-create]
        [--exit-with-parent]
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _exit_on_signal(signum, frame):
    # Raised in the main thread, out of serve_forever(); the finally closes the socket.
    raise SystemExit(0)


# Installed before the slower optional import, so an early SIGTERM still exits 0.
signal.signal(signal.SIGTERM, _exit_on_signal)
signal.signal(signal.SIGINT, _exit_on_signal)

try:  # optional: validate Avro when fastavro is importable
    import fastavro  # type: ignore
except Exception:  # pragma: no cover - depends on the environment
    fastavro = None


class ApiError(Exception):
    """An error answered to the client as {"error_code", "message"}."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid_schema(message):
    return ApiError(422, 42201, message)


def canonical(schema_text):
    """Canonical form of a schema text: parsed and re-dumped with sorted keys."""
    try:
        obj = json.loads(schema_text)
    except (TypeError, ValueError) as e:
        raise invalid_schema("Invalid schema: schema is not valid JSON: %s" % e)
    return obj, json.dumps(obj, sort_keys=True, separators=(",", ":"))


def parse_version(version):
    """A path version as Confluent's VersionId reads it: "latest" (any case) or -1
    for the latest, else an int >= 1; anything else is 42202 (checked before the
    subject is looked up, as Confluent does)."""
    text = version.strip()
    if text.lower() == "latest":
        return -1
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or (v <= 0 and v != -1) or v > 2**31 - 1:
        raise ApiError(422, 42202, "The specified version '%s' is not a valid version id. "
                       "Allowed values are between [1, 2^31-1] and the string \"latest\"" % version)
    return v


# -- request bodies ---------------------------------------------------------
# Confluent reads metadata and ruleSet into Java objects (Metadata, RuleSet, Rule)
# and writes them back with @JsonInclude(NON_EMPTY): maps and sets come back sorted,
# empty collections and empty strings are left out, a rule's kind and mode default
# to TRANSFORM and WRITEREAD, and "disabled" (a primitive boolean) is always there.
# The normalised form below is what is stored, returned and part of the identity.

RULE_KINDS = ("TRANSFORM", "CONDITION")
RULE_MODES = ("UPGRADE", "DOWNGRADE", "UPDOWN", "WRITE", "READ", "WRITEREAD")
MIGRATION_MODES = ("UPGRADE", "DOWNGRADE", "UPDOWN")
DOMAIN_MODES = ("WRITE", "READ", "WRITEREAD")
RULE_LISTS = ("migrationRules", "domainRules", "encodingRules")


def body_error(message):
    # What Confluent's JSON binding answers for a field of the wrong type.
    return ApiError(422, 422, message)


def _str_or_none(value, what):
    if value is None or isinstance(value, str):
        return value or None  # NON_EMPTY: "" is left out
    raise body_error("Invalid request: %s must be a string" % what)


def _scalar_str(value, what):
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise body_error("Invalid request: %s must be a string" % what)


def _str_set(value, what):
    if value is None:
        return []
    if not isinstance(value, list):
        raise body_error("Invalid request: %s must be an array of strings" % what)
    return sorted({_scalar_str(v, what) for v in value})


def _str_map(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise body_error("Invalid request: %s must be an object" % what)
    return {k: _scalar_str(value[k], "%s.%s" % (what, k)) for k in sorted(value)}


def normalize_metadata(md):
    if md is None:
        return None
    if not isinstance(md, dict):
        raise body_error("Invalid request: metadata must be an object")
    tags = md.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise body_error("Invalid request: metadata.tags must be an object")
    out = {}
    tags = {k: _str_set(tags[k], "metadata.tags.%s" % k) for k in sorted(tags or {})}
    if tags:
        out["tags"] = tags
    props = _str_map(md.get("properties"), "metadata.properties")
    if props:
        out["properties"] = props
    sensitive = _str_set(md.get("sensitive"), "metadata.sensitive")
    if sensitive:
        out["sensitive"] = sensitive
    return out


def normalize_rule(rule):
    if not isinstance(rule, dict):
        raise body_error("Invalid request: a rule must be an object")
    kind = rule.get("kind") or "TRANSFORM"
    if kind not in RULE_KINDS:
        raise body_error("Invalid request: rule kind %r is not one of %s" % (kind, ", ".join(RULE_KINDS)))
    mode = rule.get("mode") or "WRITEREAD"
    if mode not in RULE_MODES:
        raise body_error("Invalid request: rule mode %r is not one of %s" % (mode, ", ".join(RULE_MODES)))
    disabled = rule.get("disabled", False)
    if disabled is None:
        disabled = False
    if not isinstance(disabled, bool):
        raise body_error("Invalid request: rule disabled must be a boolean")
    out = {}
    for key in ("name", "doc"):
        v = _str_or_none(rule.get(key), "rule " + key)
        if v is not None:
            out[key] = v
    out["kind"] = kind
    out["mode"] = mode
    v = _str_or_none(rule.get("type"), "rule type")
    if v is not None:
        out["type"] = v
    tags = _str_set(rule.get("tags"), "rule tags")
    if tags:
        out["tags"] = tags
    params = _str_map(rule.get("params"), "rule params")
    if params:
        out["params"] = params
    for key in ("expr", "onSuccess", "onFailure"):
        v = _str_or_none(rule.get(key), "rule " + key)
        if v is not None:
            out[key] = v
    out["disabled"] = disabled
    return out


def normalize_rule_set(rs):
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise body_error("Invalid request: ruleSet must be an object")
    out = {}
    for key in RULE_LISTS:
        rules = rs.get(key)
        if rules is None:
            continue
        if not isinstance(rules, list):
            raise body_error("Invalid request: ruleSet.%s must be an array" % key)
        if rules:
            out[key] = [normalize_rule(r) for r in rules]
    enable_at = _str_or_none(rs.get("enableAt"), "ruleSet.enableAt")
    if enable_at is not None:
        out["enableAt"] = enable_at
    return out


RULE_NAME_MAX = 256


def validate_rule_set(rs):
    """Confluent's RuleSet.validate(), run on register only: 422/42210."""
    if not rs:
        return
    names = set()

    def fail(msg):
        raise ApiError(422, 42210, msg)

    for key in RULE_LISTS:
        for rule in rs.get(key, []):
            name = rule.get("name")
            if name in names:
                fail("Found rule with duplicate name '%s'" % name)
            names.add(name)
            if name is None:
                fail("Missing rule name")
            if len(name) > RULE_NAME_MAX:
                fail("Rule name too long")
            if not (name[0].isalpha() or name[0] == "_"):
                fail("Illegal initial character in rule name: %s" % name)
            if any(not (c.isalnum() or c in "_-") for c in name[1:]):
                fail("Illegal character in rule name: %s" % name)
            if "type" not in rule:
                fail("Missing rule type")
            if rule["mode"] not in ("WRITEREAD", "UPDOWN"):
                for action in ("onSuccess", "onFailure"):
                    if "," in rule.get(action, ""):
                        fail("Multiple actions only valid with WRITEREAD and UPDOWN")
            if key == "migrationRules" and rule["mode"] not in MIGRATION_MODES:
                fail("Migration rules can only be UPGRADE, DOWNGRADE, UPDOWN")
            if key == "domainRules" and rule["mode"] not in DOMAIN_MODES:
                fail("Domain rules can only be WRITE, READ, WRITEREAD")
            if key == "encodingRules" and rule["mode"] not in DOMAIN_MODES:
                fail("Encoding rules can only be WRITE, READ, WRITEREAD")


def parse_references(refs):
    """The request's references as [{"name","subject","version"}] (versions still
    unresolved: -1 means the subject's latest)."""
    if refs is None:
        return []
    if not isinstance(refs, list):
        raise body_error("Invalid request: references must be an array")
    out = []
    for ref in refs:
        if not isinstance(ref, dict):
            raise body_error("Invalid request: a reference must be an object")
        name, subject, version = ref.get("name"), ref.get("subject"), ref.get("version")
        if (not isinstance(name, str) or not isinstance(subject, str)
                or not isinstance(version, int) or isinstance(version, bool)):
            raise invalid_schema("Invalid schema of type AVRO, details: Invalid reference: "
                                 "SchemaReference{name='%s', subject='%s', version=%s}"
                                 % tuple("null" if v is None else v for v in (name, subject, version)))
        out.append({"name": name, "subject": subject, "version": version})
    return out


class Request:
    """A register or lookup body: schema text, references, metadata, ruleSet."""

    def __init__(self, body):
        if not isinstance(body, dict):
            raise invalid_schema("Invalid schema: request body must be a JSON object")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type != "AVRO":
            raise invalid_schema("Invalid schema: schemaType %s is not supported (AVRO only)" % schema_type)
        self.text = body.get("schema")
        if not isinstance(self.text, str):
            raise invalid_schema("Invalid schema: field 'schema' must be a string")
        self.obj, self.canon = canonical(self.text)
        self.references = parse_references(body.get("references"))
        self.metadata = normalize_metadata(body.get("metadata"))
        self.rule_set = normalize_rule_set(body.get("ruleSet"))


def identity(canon, references, metadata, rule_set):
    """What makes two registrations the same schema (one id), as Confluent's MD5 of
    schema text + references + metadata + ruleSet: null and {} metadata differ."""
    return (canon,
            json.dumps([[r["name"], r["subject"], r["version"]] for r in references]),
            None if metadata is None else json.dumps(metadata, sort_keys=True),
            None if rule_set is None else json.dumps(rule_set, sort_keys=True))


class Registry:
    """In-memory schemas and subjects, guarded by one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        # id -> {"schema", "references", "metadata", "ruleSet"}; text as first registered
        self.schemas = {}
        self.ids_by_identity = {}  # identity(...) -> id
        self.subjects = {}  # subject -> list of ids; version = index + 1
        self.config = {"compatibilityLevel": "NONE"}
        self.subject_config = {}

    def _versions(self, subject):
        versions = self.subjects.get(subject)
        if versions is None:
            raise ApiError(404, 40401, "Subject '%s' not found." % subject)
        return versions

    def _version_index(self, subject, version):
        v = parse_version(version) if isinstance(version, str) else version
        versions = self._versions(subject)
        if v == -1:
            if not versions:
                raise ApiError(404, 40402, "Version %d not found." % v)
            return len(versions) - 1
        if v > len(versions):
            raise ApiError(404, 40402, "Version %d not found." % v)
        return v - 1

    def _entry(self, subject, index):
        """GET /subjects/{s}/versions/{v}: Confluent's Schema entity, schemaType left
        out for AVRO (CP 7.x), empty references left out."""
        schema_id = self.subjects[subject][index]
        rec = self.schemas[schema_id]
        out = {"subject": subject, "version": index + 1, "id": schema_id}
        out.update(self._extras(rec))
        out["schema"] = rec["schema"]
        return out

    @staticmethod
    def _extras(rec):
        out = {}
        if rec["references"]:
            out["references"] = [dict(r) for r in rec["references"]]
        if rec["metadata"] is not None:
            out["metadata"] = rec["metadata"]
        if rec["ruleSet"] is not None:
            out["ruleSet"] = rec["ruleSet"]
        return out

    # -- references -------------------------------------------------------

    def _resolve(self, subject, references):
        """References with -1 replaced by the latest version, and the referenced
        schemas in parse order (each one's own references first, each name once,
        as Confluent's AbstractSchemaProvider.resolveReferences). Unknown subject or
        version: 42201, as Confluent answers it."""
        resolved, texts, visited = [], [], set()

        def walk(refs, top):
            for ref in refs:
                versions = self.subjects.get(ref["subject"])
                v = ref["version"]
                if versions and v == -1:
                    v = len(versions)
                if not versions or not 1 <= v <= len(versions):
                    raise invalid_schema(
                        "Invalid schema of type AVRO, details: No schema reference found for subject "
                        "\"%s\" and version %d" % (ref["subject"], ref["version"]))
                if top:
                    resolved.append({"name": ref["name"], "subject": ref["subject"], "version": v})
                if ref["name"] in visited:
                    continue
                visited.add(ref["name"])
                rec = self.schemas[versions[v - 1]]
                walk(rec["references"], False)
                texts.append((ref["name"], rec["schema"]))

        walk(references, True)
        return resolved, texts

    @staticmethod
    def _validate_avro(obj, ref_texts):
        """Parses the schema with the referenced schemas' named types known, like
        Confluent's AvroSchema (one Avro parser fed the references, then the schema)."""
        if fastavro is None:
            return
        named = {}
        try:
            for name, text in ref_texts + [(None, obj)]:
                before = dict(named)
                fastavro.parse_schema(json.loads(text) if name is not None else obj, named_schemas=named)
                redefined = sorted(k for k in before if named[k] is not before[k])
                if redefined:
                    raise ValueError("Can't redefine: %s" % redefined[0])
        except Exception as e:
            raise invalid_schema("Invalid schema of type AVRO, details: %s: %s" % (type(e).__name__, e))

    def _prepare(self, subject, req):
        """Resolved references and validation (call with the lock held)."""
        references, ref_texts = self._resolve(subject, req.references)
        self._validate_avro(req.obj, ref_texts)
        return references

    def _inherited(self, subject, req):
        """Metadata and ruleSet: the request's, else the subject's latest version's
        (Confluent's maybeSetMetadataRuleSet; default/override config not modelled)."""
        metadata, rule_set = req.metadata, req.rule_set
        versions = self.subjects.get(subject)
        if versions and (metadata is None or rule_set is None):
            prev = self.schemas[versions[-1]]
            if metadata is None:
                metadata = prev["metadata"]
            if rule_set is None:
                rule_set = prev["ruleSet"]
        return metadata, rule_set

    def referenced_by(self, subject, version):
        with self.lock:
            index = self._version_index(subject, version)
            key = (subject, index + 1)
            live = {i for ids in self.subjects.values() for i in ids}
            return sorted(i for i in live
                          if any((r["subject"], r["version"]) == key for r in self.schemas[i]["references"]))

    # -- operations -------------------------------------------------------

    def subject_list(self):
        with self.lock:
            return sorted(self.subjects)

    def version_list(self, subject):
        with self.lock:
            return list(range(1, len(self._versions(subject)) + 1))

    def get_version(self, subject, version):
        with self.lock:
            return self._entry(subject, self._version_index(subject, version))

    def register(self, subject, req):
        """POST /subjects/{s}/versions. Answers {"id"} when the stored schema is the
        request as sent; with metadata or a ruleSet (given or inherited) Confluent
        answers the whole schema: {"id","version","references"?,"metadata"?,
        "ruleSet"?,"schema"}."""
        validate_rule_set(req.rule_set)
        with self.lock:
            references = self._prepare(subject, req)
            metadata, rule_set = self._inherited(subject, req)
            key = identity(req.canon, references, metadata, rule_set)
            schema_id = self.ids_by_identity.get(key)
            if schema_id is None:
                schema_id = len(self.schemas) + 1
                self.schemas[schema_id] = {"schema": req.text, "references": references,
                                           "metadata": metadata, "ruleSet": rule_set}
                self.ids_by_identity[key] = schema_id
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            if metadata is None and rule_set is None:
                return {"id": schema_id}
            out = {"id": schema_id, "version": versions.index(schema_id) + 1}
            out.update(self._extras(self.schemas[schema_id]))
            out["schema"] = self.schemas[schema_id]["schema"]
            return out

    def lookup(self, subject, req):
        """POST /subjects/{s}: the version of this schema (text, references,
        metadata, ruleSet) under the subject; without metadata/ruleSet in the request
        the latest version's are tried too, as Confluent does."""
        with self.lock:
            references = self._prepare(subject, req)
            versions = self._versions(subject)
            candidates = [(req.metadata, req.rule_set), self._inherited(subject, req)]
            for metadata, rule_set in candidates:
                schema_id = self.ids_by_identity.get(identity(req.canon, references, metadata, rule_set))
                if schema_id is not None and schema_id in versions:
                    return self._entry(subject, versions.index(schema_id))
            raise ApiError(404, 40403, "Schema not found")

    def schema_by_id(self, schema_id):
        """GET /schemas/ids/{id}: {"schema", "references"?, "metadata"?, "ruleSet"?}."""
        with self.lock:
            if schema_id not in self.schemas:
                raise ApiError(404, 40403, "Schema %s not found" % schema_id)
            rec = self.schemas[schema_id]
            out = self._extras(rec)
            out["schema"] = rec["schema"]
            return out

    def versions_of_id(self, schema_id):
        with self.lock:
            if schema_id not in self.schemas:
                raise ApiError(404, 40403, "Schema %s not found" % schema_id)
            return [
                {"subject": s, "version": ids.index(schema_id) + 1}
                for s, ids in sorted(self.subjects.items())
                if schema_id in ids
            ]

    def delete_subject(self, subject):
        with self.lock:
            versions = self._versions(subject)
            for index, _ in enumerate(versions):
                key = (subject, index + 1)
                for other, ids in self.subjects.items():
                    if other != subject and any(
                            (r["subject"], r["version"]) == key
                            for i in ids for r in self.schemas[i]["references"]):
                        raise ApiError(422, 42206, "One or more references exist to the schema "
                                       "{magic=1,keytype=SCHEMA,subject=%s,version=%d}." % key)
            del self.subjects[subject]
            self.subject_config.pop(subject, None)
            return list(range(1, len(versions) + 1))


def parse_id(text):
    try:
        return int(text)
    except ValueError:
        raise ApiError(404, 40403, "Schema %s not found" % text)


# -- DEK Registry -----------------------------------------------------------
# Confluent's DEK Registry (dek-registry/.../DekRegistryResource.java and
# AbstractDekRegistry.java), which client-side field-level encryption uses: KEKs
# name a key in a KMS, DEKs are data keys wrapped by a KEK (encryptedKeyMaterial,
# base64), one per (KEK, subject, algorithm, version). This registry has no KMS:
# it stores what the clients send and never generates or unwraps a key.

DEK_ALGORITHMS = ("AES128_GCM", "AES256_GCM", "AES256_SIV")
DEFAULT_DEK_ALGORITHM = "AES256_GCM"
KEK_NAME_MAX = 256


def invalid_key(field):
    return ApiError(422, 42271, "Invalid or missing value for field '%s' of key" % field)


def key_not_found(name):
    return ApiError(404, 40470, "Key '%s' not found" % name)


def key_exists(name):
    return ApiError(409, 40971, "Key '%s' already exists; use a different value" % name)


def jersey_not_found():
    # What JAX-RS answers when a query parameter does not convert (an unknown
    # algorithm, a non-numeric offset).
    return ApiError(404, 404, "HTTP 404 Not Found")


def check_kek_name(name):
    """DekRegistryResource.checkName: a letter or _, then letters, digits, _ or -."""
    if (not isinstance(name, str) or not name or len(name) > KEK_NAME_MAX
            or not (name[0].isalpha() or name[0] == "_")
            or any(not (c.isalnum() or c in "_-") for c in name[1:])):
        raise invalid_key("name")
    return name


def check_dek_subject(subject):
    """DekRegistryResource.checkSubject: non-empty, no ISO control characters."""
    if (not isinstance(subject, str) or not subject
            or any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in subject)):
        raise invalid_key("subject")
    return subject


def query_bool(query, name):
    """A JAX-RS boolean query parameter: true only for "true", any case."""
    values = query.get(name)
    return bool(values) and values[0].lower() == "true"


def query_int(query, name, default):
    values = query.get(name)
    if not values or values[0] == "":
        return default
    try:
        return int(values[0])
    except ValueError:
        raise jersey_not_found()


def query_algorithm(query):
    """?algorithm= as a DekFormat; absent means AES256_GCM, as the server reads it."""
    values = query.get("algorithm")
    if not values or values[0] == "":
        return DEFAULT_DEK_ALGORITHM
    if values[0] not in DEK_ALGORITHMS:
        raise jersey_not_found()
    return values[0]


def page(items, query):
    """?offset= and ?limit= (a limit <= 0 is no limit)."""
    offset = max(0, query_int(query, "offset", 0))
    limit = query_int(query, "limit", -1)
    items = items[offset:]
    return items[:limit] if limit > 0 else items


def normalize_kms_type(kms_type):
    lower = kms_type.lower()
    for prefix in ("aws", "azure", "gcp"):
        if lower.startswith(prefix):
            return prefix + "-kms"
    return kms_type


# CreateKekRequest.validate(): the key id's form for the KMS types it knows.
KMS_KEY_ID_PREFIXES = {
    "aws-kms": ("arn:aws:kms:",),
    "azure-kms": ("https://",),
    "gcp-kms": ("projects/",),
    "hcvault": ("https://", "http://"),
}


def _body_str(body, key):
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise body_error("Invalid request: %s must be a string" % key)
    return value


def _body_bool(body, key):
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise body_error("Invalid request: %s must be a boolean" % key)
    return value


def now_ms():
    return int(time.time() * 1000)


class DekRegistry:
    """In-memory KEKs and DEKs, guarded by one lock. Entities are answered in the
    server's JSON (Jackson NON_NULL): a Kek is {"name","kmsType","kmsKeyId",
    "kmsProps","doc"?,"shared","ts","deleted"?}, a Dek {"kekName","subject",
    "version","algorithm","encryptedKeyMaterial","ts","deleted"?}; "ts" is the
    store time in ms and "deleted" only appears (true) on a deleted key."""

    def __init__(self, dek_age_ms=0):
        self.dek_age_ms = dek_age_ms
        self.lock = threading.Lock()
        self.keks = {}  # name -> {"name","kmsType","kmsKeyId","kmsProps","doc","shared","deleted","ts"}
        self.deks = {}  # (kek, subject, algorithm, version) -> {... "encryptedKeyMaterial","deleted","ts"}

    @staticmethod
    def _kek_entity(kek):
        out = {"name": kek["name"], "kmsType": kek["kmsType"], "kmsKeyId": kek["kmsKeyId"],
               "kmsProps": dict(kek["kmsProps"])}
        if kek["doc"] is not None:
            out["doc"] = kek["doc"]
        out["shared"] = kek["shared"]
        out["ts"] = kek["ts"]
        if kek["deleted"]:
            out["deleted"] = True
        return out

    @staticmethod
    def _dek_entity(dek):
        out = {"kekName": dek["kekName"], "subject": dek["subject"], "version": dek["version"],
               "algorithm": dek["algorithm"]}
        if dek["encryptedKeyMaterial"] is not None:
            out["encryptedKeyMaterial"] = dek["encryptedKeyMaterial"]
        out["ts"] = dek["ts"]
        if dek["deleted"]:
            out["deleted"] = True
        return out

    def _kek(self, name, lookup_deleted):
        kek = self.keks.get(name)
        if kek is None or (kek["deleted"] and not lookup_deleted):
            raise key_not_found(name)
        return kek

    def _deks(self, kek_name, subject, algorithm, lookup_deleted):
        """The DEKs of (kek, subject, algorithm), by ascending version."""
        found = [d for (k, s, a, _), d in self.deks.items()
                 if (k, s, a) == (kek_name, subject, algorithm) and (lookup_deleted or not d["deleted"])]
        return sorted(found, key=lambda d: d["version"])

    # -- KEKs -------------------------------------------------------------

    def kek_names(self, query):
        """GET /dek-registry/v1/keks?deleted=&subjectPrefix=&offset=&limit=: sorted
        names; with subjectPrefix, the KEKs of the DEKs whose subject starts with one."""
        lookup_deleted = query_bool(query, "deleted")
        prefixes = query.get("subjectPrefix") or []
        with self.lock:
            if prefixes:
                names = sorted({d["kekName"] for d in self.deks.values()
                                if (lookup_deleted or not d["deleted"])
                                and any(d["subject"].startswith(p) for p in prefixes)})
            else:
                names = sorted(n for n, k in self.keks.items() if lookup_deleted or not k["deleted"])
        return page(names, query)

    def get_kek(self, name, query):
        check_kek_name(name)
        with self.lock:
            return self._kek_entity(self._kek(name, query_bool(query, "deleted")))

    def create_kek(self, body):
        """POST /dek-registry/v1/keks. Creating a KEK that exists is 409/40971,
        unless the stored one is deleted and the request is the same key (then it
        is undeleted), as the server's createKek."""
        if not isinstance(body, dict):
            raise body_error("Invalid request: body must be a JSON object")
        name = check_kek_name(body.get("name"))
        kms_type = _body_str(body, "kmsType")
        kms_key_id = _body_str(body, "kmsKeyId")
        if not kms_key_id:
            raise invalid_key("kmsKeyId")
        if kms_type is None:
            raise invalid_key("kmsType")
        if not kms_key_id.startswith(KMS_KEY_ID_PREFIXES.get(kms_type, ("",))):
            raise invalid_key("kmsKeyId")
        kek = {"name": name, "kmsType": normalize_kms_type(kms_type), "kmsKeyId": kms_key_id,
               "kmsProps": _str_map(body.get("kmsProps"), "kmsProps"), "doc": _body_str(body, "doc"),
               "shared": _body_bool(body, "shared"), "deleted": _body_bool(body, "deleted")}
        same = ("name", "kmsType", "kmsKeyId", "kmsProps", "doc", "shared")
        with self.lock:
            old = self.keks.get(name)
            if old is not None and (old["deleted"] == kek["deleted"]
                                    or any(old[k] != kek[k] for k in same)):
                raise key_exists(name)
            kek["ts"] = now_ms()
            self.keks[name] = kek
            return self._kek_entity(kek)

    # -- DEKs -------------------------------------------------------------

    def dek_subjects(self, kek_name, query):
        """GET .../keks/{kek}/deks: the sorted subjects with a DEK under the KEK."""
        check_kek_name(kek_name)
        lookup_deleted = query_bool(query, "deleted")
        with self.lock:
            self._kek(kek_name, lookup_deleted)
            subjects = sorted({d["subject"] for d in self.deks.values()
                               if d["kekName"] == kek_name and (lookup_deleted or not d["deleted"])})
        return page(subjects, query)

    def dek_versions(self, kek_name, subject, query):
        """GET .../deks/{subject}/versions?algorithm=: ascending versions ([] when
        the subject has none; only a missing KEK is 404)."""
        check_kek_name(kek_name)
        check_dek_subject(subject)
        algorithm = query_algorithm(query)
        lookup_deleted = query_bool(query, "deleted")
        with self.lock:
            self._kek(kek_name, lookup_deleted)
            versions = [d["version"] for d in self._deks(kek_name, subject, algorithm, lookup_deleted)]
        return page(versions, query)

    def get_dek(self, kek_name, subject, version, query):
        """GET .../deks/{subject}[/versions/{v}]?algorithm=&deleted=: version 1 on the
        unversioned path; "latest" or -1 is the highest version."""
        check_kek_name(kek_name)
        check_dek_subject(subject)
        v = parse_version(version) if isinstance(version, str) else version
        algorithm = query_algorithm(query)
        lookup_deleted = query_bool(query, "deleted")
        with self.lock:
            self._kek(kek_name, lookup_deleted)
            deks = self._deks(kek_name, subject, algorithm, lookup_deleted)
            found = deks[-1:] if v == -1 else [d for d in deks if d["version"] == v]
            if not found:
                raise key_not_found(subject)
            return self._dek_entity(found[0])

    def create_dek(self, kek_name, path_subject, body, query):
        """POST .../keks/{kek}/deks/{subject} (the subject from the path wins) or the
        older POST .../keks/{kek}/deks (subject in the body). Body {"subject",
        "version"? (1), "algorithm"? (AES256_GCM), "encryptedKeyMaterial",
        "deleted"?}. The same DEK twice is 409/40971 (unless ?rewrap=true, which
        replaces it); a deleted one created again is undeleted."""
        if not isinstance(body, dict):
            raise body_error("Invalid request: body must be a JSON object")
        # The body is bound first (type errors), then the names are checked.
        body_subject = _body_str(body, "subject")
        version = body.get("version")
        if version is None:
            version = 1
        if not isinstance(version, int) or isinstance(version, bool):
            raise body_error("Invalid request: version must be an integer")
        algorithm = body.get("algorithm") or DEFAULT_DEK_ALGORITHM
        if algorithm not in DEK_ALGORITHMS:
            raise body_error("Invalid request: algorithm must be one of %s" % ", ".join(DEK_ALGORITHMS))
        material = _body_str(body, "encryptedKeyMaterial")
        deleted = _body_bool(body, "deleted")
        rewrap = query_bool(query, "rewrap")
        subject = path_subject if path_subject is not None else body_subject
        check_kek_name(kek_name)
        check_dek_subject(subject)
        key = (kek_name, subject, algorithm, version)
        with self.lock:
            kek = self._kek(kek_name, deleted)
            old = self.deks.get(key)
            if not rewrap and old is not None and (old["deleted"] == deleted
                                                   or old["encryptedKeyMaterial"] != material):
                raise key_exists(subject)
            if material is not None:
                if kek["shared"] and old is not None:
                    raise key_exists(subject)
            elif kek["shared"]:
                # The server would generate the DEK with the KEK's KMS; there is none here.
                raise ApiError(500, 50070, "Could not generate encrypted dek for %s: "
                               "the test registry has no KMS" % subject)
            else:
                raise invalid_key("encryptedKeyMaterial")
            dek = {"kekName": kek_name, "subject": subject, "version": version, "algorithm": algorithm,
                   "encryptedKeyMaterial": material, "deleted": deleted,
                   "ts": now_ms() - self.dek_age_ms}
            self.deks[key] = dek
            return self._dek_entity(dek)


class Handler(BaseHTTPRequestHandler):
    server_version = "fieldcrypt-test-registry/1"
    protocol_version = "HTTP/1.1"

    # -- plumbing ---------------------------------------------------------

    def log_message(self, fmt, *args):  # silence the default access log
        pass

    def _send(self, status, payload):
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="test-registry"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        sys.stderr.write("%s %s %d\n" % (self.command, getattr(self, "path", None), status))
        sys.stderr.flush()

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, ...) as JSON too."""
        self.close_connection = True
        reason = message or self.responses.get(code, ("Error",))[0]
        try:
            self._send(code, {"error_code": code, "message": reason})
        except OSError:
            pass

    def _read_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True  # cannot tell where the body ends
            raise ApiError(400, 400, "Bad Content-Length header")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(422, 42201, "Invalid request: body is not valid JSON: %s" % e)

    def _authorized(self):
        expected = self.server.basic_auth
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except Exception:
            return False
        return given == expected

    def _handle(self):
        try:
            # Drain the body first so keep-alive connections stay in sync.
            try:
                body = self._read_body()
                body_error = None
            except ApiError as e:
                body, body_error = None, e
            if not self._authorized():
                self._send(401, {"error_code": 401, "message": "Unauthorized"})
                return
            if body_error is not None:
                raise body_error
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/") if p != ""]
            query = parse_qs(url.query, keep_blank_values=True)
            status, payload = self.route(self.command, parts, body, query)
            self._send(status, payload)
        except ApiError as e:
            self._send(e.status, {"error_code": e.code, "message": e.message})
        except Exception as e:  # never crash on bad input
            self._send(500, {"error_code": 50001, "message": "Internal error: %r" % e})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    # -- routes -----------------------------------------------------------

    def route(self, method, parts, body, query):
        reg = self.server.registry
        n = len(parts)
        if n >= 3 and parts[:3] == ["dek-registry", "v1", "keks"]:
            return self.route_dek(method, parts[3:], body, query)
        if n >= 1 and parts[0] == "subjects":
            if n == 1 and method == "GET":
                return 200, reg.subject_list()
            if n == 2:
                subject = parts[1]
                if method == "POST":
                    return 200, reg.lookup(subject, Request(body))
                if method == "DELETE":
                    return 200, reg.delete_subject(subject)
                raise ApiError(405, 405, "Method not allowed")
            if n >= 3 and parts[2] == "versions":
                subject = parts[1]
                if n == 3:
                    if method == "GET":
                        return 200, reg.version_list(subject)
                    if method == "POST":
                        return 200, reg.register(subject, Request(body))
                    raise ApiError(405, 405, "Method not allowed")
                if n == 4 and method == "GET":
                    return 200, reg.get_version(subject, parts[3])
                if n == 5 and parts[4] == "schema" and method == "GET":
                    return 200, json.loads(reg.get_version(subject, parts[3])["schema"])
                if n == 5 and parts[4] == "referencedby" and method == "GET":
                    return 200, reg.referenced_by(subject, parts[3])
        elif n >= 1 and parts[0] == "schemas":
            if n == 2 and parts[1] == "types" and method == "GET":
                return 200, ["AVRO"]
            if n >= 3 and parts[1] == "ids" and method == "GET":
                schema_id = parse_id(parts[2])
                if n == 3:
                    return 200, reg.schema_by_id(schema_id)
                if n == 4 and parts[3] == "versions":
                    return 200, reg.versions_of_id(schema_id)
                if n == 4 and parts[3] == "subjects":
                    return 200, [v["subject"] for v in reg.versions_of_id(schema_id)]
                if n == 4 and parts[3] == "schema":
                    return 200, json.loads(reg.schema_by_id(schema_id)["schema"])
        elif n >= 1 and parts[0] == "config" and n <= 2:
            if method == "GET":
                if n == 2:
                    with reg.lock:
                        level = reg.subject_config.get(parts[1], reg.config["compatibilityLevel"])
                    return 200, {"compatibilityLevel": level}
                return 200, dict(reg.config)
            if method == "PUT":
                if not isinstance(body, dict) or not isinstance(body.get("compatibility"), str):
                    raise ApiError(422, 42203, "Invalid compatibility level")
                level = body["compatibility"].upper()
                with reg.lock:
                    if n == 2:
                        reg.subject_config[parts[1]] = level
                    else:
                        reg.config["compatibilityLevel"] = level
                return 200, {"compatibility": level}
            raise ApiError(405, 405, "Method not allowed")
        elif n == 4 and parts[0] == "associations" and parts[1] == "resources" and method == "GET":
            return 200, []
        elif n == 0 and method == "GET":
            return 200, {}
        raise ApiError(404, 404, "HTTP 404 Not Found")

    def route_dek(self, method, parts, body, query):
        """/dek-registry/v1/keks/...; parts are the path segments after "keks". A
        known path with another method is 405, as JAX-RS answers it."""
        deks = self.server.dek_registry
        n = len(parts)
        allowed = ()
        if n == 0:
            allowed = ("GET", "POST")
            if method == "GET":
                return 200, deks.kek_names(query)
            if method == "POST":
                return 200, deks.create_kek(body)
        elif n == 1:
            allowed = ("GET",)
            if method == "GET":
                return 200, deks.get_kek(parts[0], query)
        elif parts[1] == "deks":
            kek = parts[0]
            if n == 2:
                allowed = ("GET", "POST")
                if method == "GET":
                    return 200, deks.dek_subjects(kek, query)
                if method == "POST":
                    return 200, deks.create_dek(kek, None, body, query)
            elif n == 3:
                # Schema Registry releases from before mid-2025 (7.7.4 and older in
                # the 7.7 line, e.g. the docker stack's 7.7.1) have no POST here: the clients then fall back to
                # POST .../deks (--legacy-dek-create).
                allowed = ("GET",) if self.server.legacy_dek_create else ("GET", "POST")
                if method == "GET":
                    return 200, deks.get_dek(kek, parts[2], 1, query)
                if method == "POST" and method in allowed:
                    return 200, deks.create_dek(kek, parts[2], body, query)
            elif n in (4, 5) and parts[3] == "versions":
                allowed = ("GET",)
                if method == "GET" and n == 4:
                    return 200, deks.dek_versions(kek, parts[2], query)
                if method == "GET":
                    return 200, deks.get_dek(kek, parts[2], parts[4], query)
        if allowed:
            raise ApiError(405, 405, "HTTP 405 Method Not Allowed")
        raise ApiError(404, 404, "HTTP 404 Not Found")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    ap = argparse.ArgumentParser(description="In-memory Confluent-compatible Schema Registry for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the bound port here (atomically)")
    ap.add_argument("--basic-auth", metavar="USER:PASS", help="require this HTTP Basic credential")
    ap.add_argument("--legacy-dek-create", action="store_true",
                    help="answer POST /dek-registry/v1/keks/{kek}/deks/{subject} with 405, as "
                         "Schema Registry releases from before mid-2025 do (7.7.4 and older in the 7.7 "
                         "line), so clients use POST .../keks/{kek}/deks")
    ap.add_argument("--dek-age-days", type=float, default=0,
                    help="store every new DEK's ts this many days in the past (tests of "
                         "encrypt.dek.expiry.days rotation)")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="exit when the parent process goes away (e.g. a pyenv shim killed by a test)")
    args = ap.parse_args(argv)
    if args.basic_auth is not None and ":" not in args.basic_auth:
        ap.error("--basic-auth must be user:pass")

    server = Server((args.host, args.port), Handler)
    server.registry = Registry()
    server.dek_registry = DekRegistry(int(args.dek_age_days * 86_400_000))
    server.legacy_dek_create = args.legacy_dek_create
    server.basic_auth = args.basic_auth
    port = server.server_address[1]

    if args.port_file:
        tmp = "%s.tmp.%d" % (args.port_file, os.getpid())
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)

    if args.exit_with_parent:
        parent = os.getppid()

        def watch_parent():
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_parent, daemon=True).start()

    print("listening on http://%s:%d" % (args.host, port), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
