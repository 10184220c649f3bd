#!/usr/bin/env python3
"""Check the public Avro schema corpus: every schema parses with fastavro (with its
Confluent-style references given as named schemas) and every "sensitive" path in
manifest.json exists.

Path semantics follow docs/CONFIG.md ([[rules]].fields): dots descend into nested
records through unions, arrays and maps; where a step passes through a union of
several records, every record that has the next field is selected.

Usage: python3 tests/corpus/check_corpus.py   (needs `pip install fastavro==1.13.1`)
"""
import glob
import json
import os
import sys

import fastavro

HERE = os.path.dirname(os.path.abspath(__file__))
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NAMED = {"record", "error", "enum", "fixed"}


def fullname(name, namespace):
    if "." in name:
        return name
    return f"{namespace}.{name}" if namespace else name


def collect(schema, namespace, names):
    """Index every named type by full name; return the namespace each lives in."""
    if isinstance(schema, list):
        for branch in schema:
            collect(branch, namespace, names)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t in NAMED:
            full = fullname(schema["name"], schema.get("namespace", namespace))
            inner_ns = full.rsplit(".", 1)[0] if "." in full else ""
            names[full] = (schema, inner_ns)
            if t in ("record", "error"):
                for field in schema["fields"]:
                    collect(field["type"], inner_ns, names)
        elif t == "array":
            collect(schema["items"], namespace, names)
        elif t == "map":
            collect(schema["values"], namespace, names)
        elif isinstance(t, (dict, list)):
            collect(t, namespace, names)


def records_in(schema, namespace, names, seen=None):
    """Records reachable from `schema` through unions, arrays and maps (not fields)."""
    if seen is None:
        seen = set()
    out = []
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return out
        key = schema if schema in names else fullname(schema, namespace)
        if key not in names:
            raise KeyError(f"unresolved type {schema!r} (namespace {namespace!r})")
        target, ns = names[key]
        return records_in(target, ns, names, seen)
    if isinstance(schema, list):
        for branch in schema:
            out += records_in(branch, namespace, names, seen)
        return out
    t = schema.get("type")
    if t in ("record", "error"):
        full = fullname(schema["name"], schema.get("namespace", namespace))
        if full not in seen:
            seen.add(full)
            inner_ns = full.rsplit(".", 1)[0] if "." in full else ""
            out.append((schema, inner_ns))
    elif t == "array":
        out += records_in(schema["items"], namespace, names, seen)
    elif t == "map":
        out += records_in(schema["values"], namespace, names, seen)
    elif isinstance(t, (dict, list)) or (isinstance(t, str) and t not in PRIMITIVES | NAMED):
        out += records_in(t, namespace, names, seen)
    return out


def path_exists(top, path, names):
    current = [(top, names_ns(top))]
    for step in path.split("."):
        nxt = []
        for schema, ns in current:
            for rec, rec_ns in records_in(schema, ns, names):
                for field in rec["fields"]:
                    if field["name"] == step:
                        nxt.append((field["type"], rec_ns))
        if not nxt:
            return False
        current = nxt
    return True


def names_ns(top):
    full = fullname(top["name"], top.get("namespace", ""))
    return full.rsplit(".", 1)[0] if "." in full else ""


def main():
    manifest = json.load(open(os.path.join(HERE, "manifest.json")))
    failures = 0
    listed = set()
    for entry in manifest:
        f = entry["file"]
        listed.add(f)
        named = {}
        names = {}
        try:
            for ref in entry.get("references", []):
                listed.add(ref["file"])
                ref_schema = json.load(open(os.path.join(HERE, ref["file"])))
                fastavro.parse_schema(ref_schema, named_schemas=named)
                collect(ref_schema, "", names)
                if ref["name"] not in names:
                    raise KeyError(f"reference {ref['name']} not defined by {ref['file']}")
            schema = json.load(open(os.path.join(HERE, f)))
            fastavro.parse_schema(schema, named_schemas=named)
            collect(schema, "", names)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL parse {f}: {type(e).__name__}: {e}")
            failures += 1
            continue
        if not 1 <= len(entry["sensitive"]) <= 3:
            print(f"FAIL {f}: expected 1-3 sensitive paths")
            failures += 1
        for p in entry["sensitive"]:
            if not path_exists(schema, p, names):
                print(f"FAIL path {f}: {p}")
                failures += 1
    on_disk = {os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "**", "*.avsc"), recursive=True)}
    for extra in sorted(on_disk - listed):
        print(f"FAIL {extra}: on disk but not in manifest.json")
        failures += 1
    for missing in sorted(listed - on_disk):
        print(f"FAIL {missing}: in manifest.json but not on disk")
        failures += 1
    print(f"{len(manifest)} schemas, {len(on_disk)} files, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
