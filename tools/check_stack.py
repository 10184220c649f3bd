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
  * Replicas: at least two compose services run `fieldcrypt run` with the same
    config file and environment (so the same [kafka] group_id), each with its own
    hostname equal to its service name (the exactly-once transactional.id
    defaults to <group_id>-<host>-<pid>); no two services publish the same host
    port; the Prometheus job "fieldcrypt" scrapes every replica as its own target.
  * Dashboards: variables `datasource` (type datasource, prometheus), `instance`
    and `topic` (multi-value queries with All); every panel, target and query
    variable uses the data source {"type": "prometheus", "uid": "${datasource}"};
    every fieldcrypt_* selector in a panel query filters instance=~"$instance",
    and topic=~"$topic" when the metric has a source-topic label (labels read
    from src/observe/metrics.rs; the *_produced_total counters are labelled with
    target topics and must not be); no __inputs / ${DS_...} placeholders, which
    file provisioning would leave unresolved.

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

from config_keys import documented_config_keys, undocumented

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
SCRAPE_JOB = "fieldcrypt"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE_MATCHER = 'instance=~"$instance"'
TOPIC_MATCHER = 'topic=~"$topic"'
# Metrics whose topic label is the route's target topic (Metrics::prepare_route in
# src/observe/metrics.rs), not a source topic: $topic lists source topics, so
# filtering these by it would empty the panel whenever one topic is picked.
TARGET_TOPIC_METRICS = {"fieldcrypt_records_produced_total", "fieldcrypt_bytes_produced_total"}
# A metric name, then its label matchers if any (none of ours contain a brace).
SELECTOR_RE = re.compile(r"\b(fieldcrypt_[A-Za-z0-9_]+)(?:\{([^}]*)\})?")

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
    # cargo resolves the whole workspace even to build one binary: every member
    # must be in the image's build context.
    copied = set()
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words[1:]):
            copied.update(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))
    cargo = (context / "Cargo.toml").read_text()
    m = re.search(r"members\s*=\s*\[([^\]]*)\]", cargo)
    members = re.findall(r'"([^"]+)"', m.group(1)) if m else []
    for member in members:
        if member != "." and member not in copied:
            problem(rel(dockerfile), f"workspace member {member}/ is not copied into the build stage (cargo would fail to load the workspace)")
    ignored = [l.strip().rstrip("/") for l in (context / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for member in members:
        if member in ignored:
            problem(".dockerignore", f"excludes workspace member {member}/, which the build needs")
    if "CARGO_PROFILE_RELEASE_STRIP" not in text and "strip" not in text:
        problem(rel(dockerfile), "the shipped binary is not stripped (the release profile keeps debug info)")


# ---------------------------------------------------------------- fieldcrypt.toml


def check_config():
    where = rel(CONFIG)
    try:
        cfg = tomllib.loads(CONFIG.read_text())
    except tomllib.TOMLDecodeError as e:
        problem(where, f"not valid TOML: {e}")
        return
    for kind, path, sec in undocumented(cfg, documented_config_keys(CONFIG_DOC)):
        if kind == "table":
            problem(where, f"[{path}] is not a documented table in {rel(CONFIG_DOC)}")
        elif kind == "key":
            problem(where, f"{path} is not a documented key of [{sec}] in {rel(CONFIG_DOC)}")
        else:
            problem(where, f"top-level key {path} is not a table")


# ---------------------------------------------------------------- replicas


def config_path_in(command):
    """The --config argument of a `fieldcrypt run` command list, if any."""
    for i, word in enumerate(command[:-1]):
        if word == "--config":
            return command[i + 1]
    return None


def bind_source(svc, target):
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) > 1 and parts[1] == target:
                return parts[0]
        elif v.get("target") == target:
            return v.get("source")
    return None


def host_ports(svc):
    """Published (host ip, host port) pairs of a service's ports."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            if p.get("published") is not None:
                out.append((str(p.get("host_ip", "")), str(p["published"])))
            continue
        parts = str(p).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1]))
        elif len(parts) == 2:
            out.append(("", parts[0]))
    return out


def metrics_port():
    try:
        listen = tomllib.loads(CONFIG.read_text()).get("metrics", {}).get("listen", "")
    except tomllib.TOMLDecodeError:
        return None  # check_config reports it
    return listen.rsplit(":", 1)[1] if ":" in listen else None


def check_replicas():
    where = rel(COMPOSE)
    services = yaml.safe_load(COMPOSE.read_text()).get("services") or {}

    seen_ports = {}
    for name, svc in services.items():
        for ip, port in host_ports(svc):
            other = seen_ports.get((ip, port))
            if other:
                problem(where, f"services {other} and {name} both publish host port {ip + ':' if ip else ''}{port}")
            seen_ports[(ip, port)] = name

    replicas = {
        name: svc
        for name, svc in services.items()
        if not svc.get("profiles")
        and isinstance(svc.get("command"), list)
        and svc["command"][:1] == ["run"]
    }
    if len(replicas) < 2:
        problem(where, f"expected at least two services running `fieldcrypt run` (replicas), found {sorted(replicas)}")
        return

    configs, envs = {}, {}
    for name, svc in replicas.items():
        at = f"{where}: service {name}"
        hostname = svc.get("hostname")
        if not hostname:
            problem(at, "set `hostname`: the exactly-once transactional.id defaults to <group_id>-<host>-<pid>, and the pid is 1 in every container")
        elif hostname != name:
            problem(at, f"hostname {hostname} should equal the service name, which is what Prometheus resolves")
        path = config_path_in(svc["command"])
        configs[name] = bind_source(svc, path) if path else None
        if configs[name] is None:
            problem(at, "`run` has no --config bind-mounted from the stack's files")
        envs[name] = svc.get("environment") or {}
    hostnames = [svc.get("hostname") for svc in replicas.values() if svc.get("hostname")]
    if len(set(hostnames)) != len(hostnames):
        problem(where, f"replicas share a hostname: {hostnames}")
    if len(set(configs.values())) != 1:
        problem(where, f"replicas mount different config files, so possibly different consumer groups: {configs}")
    elif next(iter(configs.values())) is not None:
        source = (DOCKER / next(iter(configs.values()))).resolve()
        if source == CONFIG.resolve():
            try:
                group = tomllib.loads(CONFIG.read_text()).get("kafka", {}).get("group_id")
            except tomllib.TOMLDecodeError:
                group = None
            if not group:
                problem(rel(CONFIG), "[kafka] group_id is not set: the replicas need one shared consumer group")
    env_values = [json.dumps(e, sort_keys=True) for e in envs.values()]
    if len(set(env_values)) != 1:
        problem(where, "replicas have different environments (config substitutions could give them different groups)")

    # Prometheus: one target per replica in the fieldcrypt job.
    port = metrics_port()
    doc = yaml.safe_load(PROMETHEUS.read_text()) or {}
    jobs = [j for j in doc.get("scrape_configs") or [] if j.get("job_name") == SCRAPE_JOB]
    if not jobs:
        problem(rel(PROMETHEUS), f"no scrape job {SCRAPE_JOB}")
        return
    targets = {t for j in jobs for sc in j.get("static_configs") or [] for t in sc.get("targets") or []}
    for name in replicas:
        want = f"{name}:{port}"
        if want not in targets:
            problem(rel(PROMETHEUS), f"job {SCRAPE_JOB} does not scrape replica {name} ({want}); targets: {sorted(targets)}")


# ---------------------------------------------------------------- dashboards


def topic_labelled_metrics():
    """fieldcrypt_* families registered in metrics.rs with a `topic` label."""
    text = METRICS_RS.read_text()
    names = list(re.finditer(r'"(fieldcrypt_[A-Za-z0-9_]+)"', text))
    out = set()
    for i, m in enumerate(names):
        end = names[i + 1].start() if i + 1 < len(names) else len(text)
        labels = re.search(r"&\[([^\]]*)\]", text[m.end():end])
        if labels and '"topic"' in labels.group(1):
            out.add(m.group(1))
    return out


def all_panels(panels):
    for p in panels or []:
        yield p
        yield from all_panels(p.get("panels"))  # panels of a collapsed row


def check_dashboard(path, doc, topic_metrics, families):
    where = rel(path)
    if "__inputs" in doc or "${DS_" in path.read_text():
        problem(where, "__inputs / ${DS_...} placeholders are only resolved by the import UI; file provisioning would leave them as they are (use the datasource variable)")

    variables = {v.get("name"): v for v in (doc.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem(where, "needs a variable `datasource` of type datasource with query prometheus")
    for name, metric in (("instance", "fieldcrypt_ready"), ("topic", "fieldcrypt_records_consumed_total")):
        v = variables.get(name)
        if not v:
            problem(where, f"needs a variable `{name}`")
            continue
        query = v.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if v.get("type") != "query" or f"label_values({metric}" not in query or not query.rstrip().endswith(f", {name})"):
            problem(where, f"variable {name} should be label_values({metric}..., {name}), got {query!r}")
        if not v.get("multi") or not v.get("includeAll"):
            problem(where, f"variable {name} should be multi-value with All")
        if v.get("datasource") != DATASOURCE_REF:
            problem(where, f"variable {name} should use the data source {DATASOURCE_REF}")

    for p in all_panels(doc.get("panels")):
        at = f"{where}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DATASOURCE_REF:
            problem(at, f"datasource {p.get('datasource')} should be {DATASOURCE_REF}")
        targets = p.get("targets") or []
        if not targets:
            problem(at, "no targets")
        for t in targets:
            ref = f"{at} target {t.get('refId')}"
            if t.get("datasource") != DATASOURCE_REF:
                problem(ref, f"datasource {t.get('datasource')} should be {DATASOURCE_REF}")
            expr = t.get("expr", "")
            selectors = SELECTOR_RE.findall(expr)
            if not selectors:
                problem(ref, f"no fieldcrypt_* metric in {expr!r}")
            for name, matchers in selectors:
                if INSTANCE_MATCHER not in matchers:
                    problem(ref, f"{name} is not filtered by {INSTANCE_MATCHER}")
                family = family_of(name, families)
                if family in TARGET_TOPIC_METRICS:
                    if TOPIC_MATCHER in matchers:
                        problem(ref, f"{name} is labelled with target topics; {TOPIC_MATCHER} (source topics) would hide it")
                elif family in topic_metrics and TOPIC_MATCHER not in matchers:
                    problem(ref, f"{name} has a topic label but is not filtered by {TOPIC_MATCHER}")


def check_dashboards():
    topic_metrics = topic_labelled_metrics()
    families = exported_metric_families()
    for path in sorted(DASHBOARDS.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # referenced_metrics reports it
        check_dashboard(path, doc, topic_metrics, families)


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
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip())
        return 0
    for path in (COMPOSE, CONFIG, PROMETHEUS, METRICS_RS, CONFIG_DOC):
        if not path.is_file():
            problem(rel(path), "missing")
    if problems:
        return report({})
    check_compose()
    check_config()
    check_replicas()
    check_dashboards()
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
