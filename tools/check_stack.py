#!/usr/bin/env python3
"""Static checks of the docker load-test stack (no Docker engine needed).

Run from anywhere: python3 tools/check_stack.py

Checks
  * docker/compose.yaml: every service has an image or a build; build contexts and
    Dockerfiles exist; every bind-mount source (relative to docker/) exists, and
    LocalStack init hooks are executable; named volumes are declared; depends_on
    names services; profiles are well formed and no always-on service depends on
    a profile-only one.
  * Dockerfile: the files its COPY instructions take from the context exist.
  * docker/fieldcrypt/fieldcrypt.toml parses, and every table and key in it is
    documented in docs/CONFIG.md (fieldcrypt refuses unknown keys).
  * docker/prometheus/prometheus.yml: its rule files exist and parse.
  * Every fieldcrypt_* metric used in an expression (Grafana dashboards, alert
    rules) is registered in src/observe/metrics.rs, and none is
    fieldcrypt_transactions_total (exported only in exactly-once mode).

Output: problems on stderr; then, on stdout, a line `METRICS` followed by every
distinct fieldcrypt_* name used in an expression, one per line, sorted. Names are
printed as written, i.e. as sample names (histograms as NAME_bucket), so each must
appear verbatim in a live /metrics scrape. Exit status 1 if any check failed.

Needs Python 3.11+ (tomllib) and PyYAML.
"""

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
CONFIG = DOCKER / "fieldcrypt" / "fieldcrypt.toml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
DASHBOARDS = DOCKER / "grafana" / "dashboards"
METRICS_RS = ROOT / "src" / "observe" / "metrics.rs"
CONFIG_DOC = ROOT / "docs" / "CONFIG.md"

METRIC_RE = re.compile(r"\bfieldcrypt_[A-Za-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
EXACTLY_ONCE_ONLY = {"fieldcrypt_transactions_total"}
PROFILE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def rel(p):
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------- compose


def check_compose():
    where = rel(COMPOSE)
    doc = yaml.safe_load(COMPOSE.read_text())
    if "version" in doc:
        problem(where, "drop the obsolete top-level `version:` key")
    services = doc.get("services") or {}
    if not services:
        problem(where, "no services")
    volumes = set((doc.get("volumes") or {}).keys())
    profiled = {n for n, s in services.items() if s.get("profiles")}

    for name, svc in services.items():
        at = f"{where}: service {name}"
        if not svc.get("image") and not svc.get("build"):
            problem(at, "has neither image nor build")
        build = svc.get("build")
        if build:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            ctx_path = (DOCKER / ctx).resolve()
            if not ctx_path.is_dir():
                problem(at, f"build context {ctx} ({rel(ctx_path)}) is not a directory")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (ctx_path / dockerfile).is_file():
                problem(at, f"Dockerfile {rel(ctx_path / dockerfile)} does not exist")
            else:
                check_dockerfile(ctx_path / dockerfile, ctx_path)

        for v in svc.get("volumes") or []:
            if isinstance(v, str):
                parts = v.split(":")
                source, target = parts[0], parts[1] if len(parts) > 1 else ""
                is_bind = source.startswith((".", "/", "~"))
            else:
                source, target = v.get("source", ""), v.get("target", "")
                is_bind = v.get("type") == "bind"
            if is_bind:
                path = (DOCKER / os.path.expanduser(source)).resolve()
                if not path.exists():
                    problem(at, f"bind-mount source {source} ({rel(path)}) does not exist")
                elif target.startswith("/etc/localstack/init/") and path.is_file() and not os.access(path, os.X_OK):
                    problem(at, f"{rel(path)} must be executable (LocalStack runs init hooks directly)")
            elif source and source not in volumes:
                problem(at, f"named volume {source} is not declared under top-level volumes")

        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problem(at, f"depends_on {dep}, which is not a service")
            elif dep in profiled and name not in profiled:
                problem(at, f"depends_on {dep}, which only runs under profiles {services[dep]['profiles']}")

        profiles = svc.get("profiles")
        if profiles is not None:
            if not isinstance(profiles, list) or not profiles:
                problem(at, "profiles must be a non-empty list")
            else:
                for p in profiles:
                    if not isinstance(p, str) or not PROFILE_RE.match(p):
                        problem(at, f"invalid profile name {p!r}")


def check_dockerfile(dockerfile, context):
    """The context files that COPY/ADD take (not --from=stage) must exist."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]) or len(args) < 2:
            continue
        for src in args[:-1]:
            if not (context / src).exists():
                problem(rel(dockerfile), f"{words[0]} source {src} does not exist in the build context")


# ---------------------------------------------------------------- fieldcrypt.toml


def documented_config_keys():
    """{section pattern: set of keys} from the headings and tables of docs/CONFIG.md."""
    sections, current = {}, None
    for line in CONFIG_DOC.read_text().splitlines():
        m = re.match(r"^#+ `\[\[?([A-Za-z0-9_.]+)\]?\]`", line)
        if m:
            current = m.group(1)
            sections.setdefault(current, set())
        elif current and line.startswith("| `"):
            first_cell = line.split("|")[1]
            sections[current].update(re.findall(r"`([A-Za-z0-9_]+)`", first_cell))
    return sections


def check_config():
    where = rel(CONFIG)
    try:
        cfg = tomllib.loads(CONFIG.read_text())
    except tomllib.TOMLDecodeError as e:
        problem(where, f"not valid TOML: {e}")
        return
    sections = documented_config_keys()

    def section_for(path):
        # blind_index.domains.email -> blind_index.domains.NAME, tags.PII -> tags.TAG
        for pattern in sections:
            pat = re.sub(r"\\\.[A-Z]+$", r"\\.[^.]+", re.escape(pattern))
            if re.fullmatch(pat, path):
                return pattern
        return None

    def walk(table, path):
        sec = section_for(path)
        if sec is None:
            if table and all(isinstance(v, dict) for v in table.values()):
                for key, value in table.items():  # e.g. blind_index.domains.<NAME>
                    walk(value, f"{path}.{key}")
            else:
                problem(where, f"[{path}] is not a documented table in {rel(CONFIG_DOC)}")
            return
        for key, value in table.items():
            sub = f"{path}.{key}"
            if isinstance(value, dict) and key not in sections[sec]:
                walk(value, sub)
            elif key not in sections[sec]:
                problem(where, f"{sub} is not a documented key of [{sec}] in {rel(CONFIG_DOC)}")

    for key, value in cfg.items():
        tables = value if isinstance(value, list) else [value]
        for t in tables:
            if not isinstance(t, dict):
                problem(where, f"top-level key {key} is not a table")
            else:
                walk(t, key)


# ---------------------------------------------------------------- metrics


def exprs_in_json(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "query") and isinstance(v, str):
                yield v
            else:
                yield from exprs_in_json(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs_in_json(v)


def prometheus_exprs():
    where = rel(PROMETHEUS)
    doc = yaml.safe_load(PROMETHEUS.read_text())
    for rf in doc.get("rule_files") or []:
        path = PROMETHEUS.parent / rf
        if not path.is_file():
            problem(where, f"rule file {rf} ({rel(path)}) does not exist")
            continue
        rules = yaml.safe_load(path.read_text()) or {}
        for group in rules.get("groups") or []:
            for rule in group.get("rules") or []:
                if "expr" not in rule:
                    problem(rel(path), f"rule {rule.get('alert') or rule.get('record')} has no expr")
                else:
                    yield rel(path), str(rule["expr"])


def referenced_metrics():
    """{metric name: set of files using it in an expression}."""
    used = {}
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    if not dashboards:
        problem(rel(DASHBOARDS), "no dashboard JSON files")
    for path in dashboards:
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problem(rel(path), f"not valid JSON: {e}")
            continue
        for expr in exprs_in_json(doc):
            for name in METRIC_RE.findall(expr):
                used.setdefault(name, set()).add(rel(path))
    for where, expr in prometheus_exprs():
        for name in METRIC_RE.findall(expr):
            used.setdefault(name, set()).add(where)
    return used


def exported_metric_families():
    return set(re.findall(r'"(fieldcrypt_[A-Za-z0-9_]+)"', METRICS_RS.read_text()))


def family_of(name, families):
    if name in families:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return None


def check_metrics(used):
    families = exported_metric_families()
    if not families:
        problem(rel(METRICS_RS), "found no fieldcrypt_* metric names")
        return
    for name, files in sorted(used.items()):
        where = ", ".join(sorted(files))
        if family_of(name, families) is None:
            problem(where, f"{name} is not a metric registered in {rel(METRICS_RS)}")
        elif name in EXACTLY_ONCE_ONLY:
            problem(where, f"{name} is exported only with delivery = \"exactly-once\"; the stack is at-least-once")


# ---------------------------------------------------------------- main


def main():
    for path in (COMPOSE, CONFIG, PROMETHEUS, METRICS_RS, CONFIG_DOC):
        if not path.is_file():
            problem(rel(path), "missing")
    if problems:
        return report({})
    check_compose()
    check_config()
    used = referenced_metrics()
    check_metrics(used)
    return report(used)


def report(used):
    for p in problems:
        print(f"check_stack: {p}", file=sys.stderr)
    print("METRICS")
    for name in sorted(used):
        print(name)
    if problems:
        print(f"check_stack: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_stack: OK ({len(used)} metric names referenced)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
