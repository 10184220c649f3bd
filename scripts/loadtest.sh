#!/usr/bin/env bash
# The docker load-test topology without Docker: everything on 127.0.0.1 of one machine,
# each service a plain process started (and stopped) by this script:
#
#   tansu            Kafka-protocol broker, in-memory (scripts/broker.sh start PORT)
#   moto             AWS KMS emulator (python3 -m moto.server), holding one symmetric
#                    key with the alias alias/fieldcrypt: the KEK
#   test registry    the project's Confluent-compatible Schema Registry
#                    (tools/test_registry.py), so values are Confluent-framed
#   fieldcrypt run   encrypting cdc.customers -> secure.cdc.customers (dead letters to
#                    dlq.cdc.customers), metrics on LOADTEST_METRICS_PORT
#   prometheus       scraping fieldcrypt's /metrics every second (job "fieldcrypt"),
#                    with docker/prometheus/alerts.yml as rules when that file exists
#
# then runs `fieldcrypt loadgen` once per rate in LOADTEST_RATES and prints a table.
#
# What is measured, per rate (one loadgen run each, in order, against the same running
# fieldcrypt; every number except the CPU comes from loadgen's --report JSON):
#   * loadgen produces Debezium-style change events of schemas/customer_cdc.avsc to
#     cdc.customers at the target rate for LOADTEST_SECONDS seconds, keys drawn from
#     LOADTEST_KEYS distinct row ids; "rate" is the achieved produce rate
#     (produce.rate), "records" the records it produced (produce.records, tombstones
#     included);
#   * with --verify it then reads secure.cdc.customers until every produced record has
#     arrived or 60 s (--verify-timeout) pass, and checks each one: "seen", "missing",
#     "duplicates", "unencrypted" (a sensitive field left in clear) come from
#     verify.*; p50/p90/p99 are end-to-end latencies in ms (verify.latency_ms), from
#     the source record's produce to its encrypted copy being read back;
#   * fieldcrypt CPU s per million records = the fieldcrypt process's utime+stime (all
#     threads, /proc/PID/stat, in clock ticks of `getconf CLK_TCK`) read just before
#     and just after the loadgen command, divided by that run's produce.records, times
#     1e6. The window includes the verification tail and fieldcrypt's idle polling
#     between records, which dominates at low rates: compare CPU/M across rates with
#     that in mind. The broker, moto, the registry, Prometheus and loadgen itself share
#     the machine's cores but are not counted.
# After the runs, Prometheus' HTTP API must report up{job="fieldcrypt"} == 1 and
# sum(fieldcrypt_records_produced_total) >= the records all runs produced (the counter
# is cumulative over the runs; polled for up to 10 s for a scrape after the last run):
# this proves the scrape path end to end. Firing/pending alerts are listed.
#
# Exit status: 0 if everything passed; 1 if any run had loadgen exit non-zero (its
# verification failed), no readable report, report "ok" false, missing > 0,
# unencrypted > 0 or malformed > 0, or if the Prometheus check failed, or fieldcrypt
# died or did not exit 0 on SIGTERM. A failing run does not stop the later ones: the
# table is printed either way.
#
# Environment:
#   LOADTEST_RATES         target produce rates in records/s, space-separated, run in
#                          order; 0 = as fast as possible, shown as "max"
#                          (default "1000 5000 20000 0")
#   LOADTEST_SECONDS       seconds of producing per rate (default 20)
#   LOADTEST_KEYS          distinct record keys (row ids) loadgen draws from (default 10000)
#   LOADTEST_FETCH_WAIT_MS librdkafka fetch.wait.max.ms for fieldcrypt's consumer and the
#                          verifier's (default: unset, librdkafka's 500 ms). tansu holds a
#                          fetch for this long even when records arrive meanwhile (real
#                          Kafka answers as soon as data is there), so on tansu it is the
#                          floor of the end-to-end latency: BENCHMARKS.md shows both
#   LOADTEST_PARTITIONS    partitions of cdc.customers and secure.cdc.customers (default 6;
#                          dlq.cdc.customers has 1)
#   LOADTEST_BROKER_PORT   tansu's port on 127.0.0.1 (default 9292; refused if in use)
#   LOADTEST_METRICS_PORT  fieldcrypt's /metrics and /health port (default 9564; refused if in use)
#   LOADTEST_PROM_PORT     Prometheus' web/API port (default 9590; refused if in use)
#   FIELDCRYPT             the binary (default <repo>/target/release/fieldcrypt; never built
#                          here). It is copied to loadtest-out/fieldcrypt once and every
#                          command uses that copy, so a rebuild during the test cannot mix
#                          binaries.
# moto and the registry get free ports picked at start-up. moto is given DUMMY AWS
# credentials (AWS_ACCESS_KEY_ID=testing, AWS_SECRET_ACCESS_KEY=testing, exported for
# every command here); it accepts any, and nothing talks to real AWS (endpoint_url).
#
# Needs: python3 with moto[server] and boto3 (tests/requirements.txt), confluent-kafka
# (scripts/kafka_tool.py), prometheus and promtool (Debian: apt-get install prometheus),
# curl, tansu (scripts/broker.sh install, run here).
#
# Work files (config, keyset, logs of every service, Prometheus' data, loadgen reports,
# results.tsv) go to loadtest-out/, recreated on each invocation. On exit, success or
# not (Ctrl-C too), everything started here is stopped: fieldcrypt (SIGTERM, SIGKILL
# after 45 s), Prometheus, moto, the registry and the broker.
#
# Small scale, as CI runs it:  LOADTEST_RATES="500 2000" LOADTEST_SECONDS=3 scripts/loadtest.sh
set -euo pipefail
# Decimal points in awk's and Python's numbers whatever the user's locale.
unset LC_ALL
export LC_NUMERIC=C
# A relative FIELDCRYPT is relative to the directory this script was started from.
if [[ -n "${FIELDCRYPT:-}" ]]; then
  FC_SRC="$(realpath -m -- "$FIELDCRYPT")"
fi
cd "$(dirname "$0")/.."
ROOT="$PWD"

RATES="${LOADTEST_RATES:-1000 5000 20000 0}"
RUN_SECONDS="${LOADTEST_SECONDS:-20}"
KEYS="${LOADTEST_KEYS:-10000}"
FETCH_WAIT_MS="${LOADTEST_FETCH_WAIT_MS:-}"
FETCH_WAIT_LINE=""
if [[ -n "$FETCH_WAIT_MS" ]]; then
  [[ "$FETCH_WAIT_MS" =~ ^[0-9]+$ ]] || { echo "loadtest: LOADTEST_FETCH_WAIT_MS must be a whole number of ms" >&2; exit 1; }
  FETCH_WAIT_LINE="\"fetch.wait.max.ms\" = \"$FETCH_WAIT_MS\""
fi
PARTITIONS="${LOADTEST_PARTITIONS:-6}"
PORT="${LOADTEST_BROKER_PORT:-9292}"
METRICS_PORT="${LOADTEST_METRICS_PORT:-9564}"
PROM_PORT="${LOADTEST_PROM_PORT:-9590}"
FC_SRC="${FC_SRC:-$ROOT/target/release/fieldcrypt}"

OUT="$ROOT/loadtest-out"
SOURCE="cdc.customers"
TARGET="secure.$SOURCE" # the route's target template secure.${topic}
DLQ="dlq.$SOURCE"       # the route's default dead-letter topic dlq.${topic}
SCHEMA="$ROOT/schemas/customer_cdc.avsc"
ALERTS_SRC="$ROOT/docker/prometheus/alerts.yml"
KMS_ALIAS="alias/fieldcrypt"
REGION="us-east-1"
VERIFY_TIMEOUT=60
READY_SECONDS=60     # fieldcrypt: start-up, KMS unwraps and the consumer-group join
SERVICE_SECONDS=60   # moto, the registry and Prometheus to start listening
PROM_WAIT_SECONDS=10 # for a scrape that reflects the last run
STOP_SECONDS=45      # fieldcrypt's drain timeout (30 s) plus margin
BROKER="$ROOT/scripts/broker.sh"
KT=(python3 "$ROOT/scripts/kafka_tool.py")
FC="$OUT/fieldcrypt"
CFG="$OUT/fieldcrypt.toml"

# DUMMY credentials for the local KMS emulator (moto accepts any). Not real AWS keys;
# the config's endpoint_url keeps every KMS call on 127.0.0.1.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION" AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

BROKER_STARTED=0
FC_PID=""
LG_PID=""
MOTO_PID=""
REG_PID=""
PROM_PID=""
OUT_MADE=""
COMMANDS=() # every command line this script ran, printed at the end

SCRIPT_NAME=loadtest
# die, log_tail, note_cmd, run
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"

# stop_pid NAME PID GRACE: SIGTERM, SIGKILL after GRACE seconds, then reap. Sets
# STOP_RC to the exit status (not run in $(...): `wait` only works for this shell's
# own children).
STOP_RC=0
stop_pid() {
  local name="$1" pid="$2" grace="$3"
  STOP_RC=0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name (pid $pid) still running ${grace}s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || STOP_RC=$?
}

stop_fieldcrypt() {
  stop_pid fieldcrypt "$FC_PID" "$STOP_SECONDS"
  FC_PID=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n "$LG_PID" ]]; then
    echo "== stopping loadgen (pid $LG_PID)" >&2
    stop_pid loadgen "$LG_PID" 10
  fi
  if [[ -n "$FC_PID" ]]; then
    echo "== stopping fieldcrypt (pid $FC_PID)" >&2
    stop_fieldcrypt
  fi
  if [[ -n "$PROM_PID" ]]; then
    echo "== stopping prometheus (pid $PROM_PID)" >&2
    stop_pid prometheus "$PROM_PID" 15
  fi
  if [[ -n "$REG_PID" ]]; then
    echo "== stopping the schema registry (pid $REG_PID)" >&2
    stop_pid registry "$REG_PID" 5
  fi
  if [[ -n "$MOTO_PID" ]]; then
    echo "== stopping moto (pid $MOTO_PID)" >&2
    stop_pid moto "$MOTO_PID" 5
  fi
  if ((BROKER_STARTED)); then
    echo "== stopping the broker on port $PORT" >&2
    "$BROKER" stop "$PORT" >&2
  fi
  if ((rc == 130 || rc == 143)); then
    echo "== load test interrupted${OUT_MADE:+; files are in loadtest-out/}" >&2
  elif ((rc != 0)); then
    echo "== load test FAILED (exit $rc)${OUT_MADE:+; files are in loadtest-out/}" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_until NAME PID SECONDS LOG CMD...: polls CMD until it succeeds; dies if process
# PID exits first or SECONDS pass, showing LOG.
wait_until() {
  local name="$1" pid="$2" limit="$3" log="$4"
  shift 4
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail "$log"
      die "$name (pid $pid) exited during start-up (log: $log)"
    fi
    ((SECONDS < deadline)) || {
      log_tail "$log"
      die "$name (pid $pid) not ready within ${limit}s (log: $log)"
    }
    sleep 0.2
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# Prints utime+stime of process $1 in clock ticks (all its threads, live and exited).
cpu_ticks() {
  local stat rest
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  rest="${stat##*) }" # drop "pid (comm) "; comm may contain spaces or ')'
  local -a f
  read -r -a f <<<"$rest"
  # f[0] is field 3 (state); utime and stime are fields 14 and 15.
  echo $((f[11] + f[12]))
}

# prom_query EXPR: prints the value of an instant query's first sample ("none" if the
# result is empty); fails if Prometheus does not answer with success.
prom_query() {
  curl -fsS --max-time 5 --get --data-urlencode "query=$1" \
    "http://127.0.0.1:$PROM_PORT/api/v1/query" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if r.get("status") != "success":
    sys.exit("query failed: %s" % r)
res = r["data"]["result"]
print(res[0]["value"][1] if res else "none")'
}

# check_int NAME VALUE MIN MAX: dies unless VALUE is a decimal integer in [MIN, MAX].
check_int() {
  if ! [[ "$2" =~ ^[0-9]{1,10}$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
    die "$1 must be an integer from $3 to $4 (got '$2')"
  fi
}

# --------------------------------------------------------------------------- checks

read -r -a RATE_LIST <<<"$RATES"
((${#RATE_LIST[@]} > 0)) || die "LOADTEST_RATES names no rate"
for i in "${!RATE_LIST[@]}"; do
  check_int "each LOADTEST_RATES entry" "${RATE_LIST[$i]}" 0 100000000
  RATE_LIST[i]=$((10#${RATE_LIST[$i]}))
done
check_int LOADTEST_SECONDS "$RUN_SECONDS" 1 86400
check_int LOADTEST_KEYS "$KEYS" 1 1000000000
check_int LOADTEST_PARTITIONS "$PARTITIONS" 1 1000
check_int LOADTEST_BROKER_PORT "$PORT" 1 65535
check_int LOADTEST_METRICS_PORT "$METRICS_PORT" 1 65535
check_int LOADTEST_PROM_PORT "$PROM_PORT" 1 65535
RUN_SECONDS=$((10#$RUN_SECONDS)) KEYS=$((10#$KEYS)) PARTITIONS=$((10#$PARTITIONS))
PORT=$((10#$PORT)) METRICS_PORT=$((10#$METRICS_PORT)) PROM_PORT=$((10#$PROM_PORT))
((PORT != METRICS_PORT && PORT != PROM_PORT && METRICS_PORT != PROM_PORT)) \
  || die "LOADTEST_BROKER_PORT, LOADTEST_METRICS_PORT and LOADTEST_PROM_PORT must differ"
BOOTSTRAP="127.0.0.1:$PORT"
METRICS_ADDR="127.0.0.1:$METRICS_PORT"

echo "== 1/8 tools"
missing=()
command -v curl >/dev/null || missing+=("curl (apt-get install curl)")
python3 -c 'import moto.server, boto3' 2>/dev/null \
  || missing+=("python3 modules moto[server] and boto3 (python3 -m pip install 'moto[server]==5.2.1', or -r tests/requirements.txt)")
python3 -c 'import confluent_kafka' 2>/dev/null \
  || missing+=("python3 module confluent-kafka for scripts/kafka_tool.py (python3 -m pip install -r tests/requirements.txt)")
command -v prometheus >/dev/null || missing+=("prometheus (Debian: apt-get install prometheus)")
command -v promtool >/dev/null || missing+=("promtool (Debian: apt-get install prometheus)")
[[ -x "$FC_SRC" ]] \
  || missing+=("the fieldcrypt binary at $FC_SRC (cargo build --release, or set FIELDCRYPT); this script does not build")
if ((${#missing[@]})); then
  for m in "${missing[@]}"; do echo "loadtest: missing: $m" >&2; done
  exit 1
fi
[[ -r /proc/self/stat ]] || die "/proc is needed to read the process CPU time"
CLK_TCK="$(getconf CLK_TCK)"
check_int "getconf CLK_TCK" "$CLK_TCK" 1 1000000
"$BROKER" install
if "$BROKER" status "$PORT" >/dev/null 2>&1; then
  die "a broker started by scripts/broker.sh is already running on $BOOTSTRAP and may hold old records; stop it (scripts/broker.sh stop $PORT) or set LOADTEST_BROKER_PORT"
fi
port_open "$PORT" && die "127.0.0.1:$PORT is already in use; set LOADTEST_BROKER_PORT"
port_open "$METRICS_PORT" && die "127.0.0.1:$METRICS_PORT (fieldcrypt's metrics listener) is already in use; set LOADTEST_METRICS_PORT"
port_open "$PROM_PORT" && die "127.0.0.1:$PROM_PORT (Prometheus) is already in use; set LOADTEST_PROM_PORT"

rm -rf "$OUT"
mkdir -p "$OUT"
OUT_MADE=1
cd "$OUT"
# One copy of the binary for the whole session (see FIELDCRYPT above).
cp "$FC_SRC" "$FC"
echo "fieldcrypt: $FC_SRC -> $FC ($("$FC" --version), sha256 $(sha256sum "$FC" | cut -c1-16)...)"
"$FC" loadgen --help >/dev/null 2>&1 \
  || die "$FC_SRC has no 'loadgen' subcommand (fieldcrypt loadgen --help failed); rebuild it"

# ------------------------------------------------------------------------- services

echo "== 2/8 broker, KMS emulator, schema registry, topics"
# Set before starting, so the trap stops a broker that started but never became ready.
BROKER_STARTED=1
run "$BROKER" start "$PORT"

# moto on a free port; retried in case another process took the port meanwhile.
for attempt in 1 2 3; do
  MOTO_PORT="$(free_port)"
  note_cmd python3 -m moto.server -H 127.0.0.1 -p "$MOTO_PORT"
  python3 -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$OUT/moto.log" 2>&1 &
  MOTO_PID=$!
  deadline=$((SECONDS + SERVICE_SECONDS))
  until port_open "$MOTO_PORT" || ! kill -0 "$MOTO_PID" 2>/dev/null || ((SECONDS >= deadline)); do
    sleep 0.2
  done
  if port_open "$MOTO_PORT" && kill -0 "$MOTO_PID" 2>/dev/null; then break; fi
  stop_pid moto "$MOTO_PID" 5
  MOTO_PID=""
  log_tail "$OUT/moto.log"
  ((attempt < 3)) || die "moto did not start listening (3 attempts; log: loadtest-out/moto.log)"
  echo "moto did not start on port $MOTO_PORT; retrying on another port" >&2
done
MOTO_URL="http://127.0.0.1:$MOTO_PORT"
echo "moto (KMS emulator) listening on $MOTO_URL (pid $MOTO_PID)"

# The KEK: a symmetric KMS key with the alias the config names (boto3, dummy credentials
# from the environment above).
run python3 - "$MOTO_URL" "$REGION" "$KMS_ALIAS" <<'PY'
import sys
import boto3

url, region, alias = sys.argv[1:4]
kms = boto3.client("kms", endpoint_url=url, region_name=region)
meta = kms.create_key(
    Description="fieldcrypt load-test KEK",
    KeySpec="SYMMETRIC_DEFAULT",
    KeyUsage="ENCRYPT_DECRYPT",
)["KeyMetadata"]
kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
# Read it back through the alias, as fieldcrypt will address it.
arn = kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"]
print(f"created KMS key {arn} with alias {alias}")
PY

REG_PORT_FILE="$OUT/registry.port"
note_cmd python3 "$ROOT/tools/test_registry.py" --host 127.0.0.1 --port 0 --port-file "$REG_PORT_FILE" --exit-with-parent
python3 "$ROOT/tools/test_registry.py" --host 127.0.0.1 --port 0 --port-file "$REG_PORT_FILE" \
  --exit-with-parent >"$OUT/registry.log" 2>&1 &
REG_PID=$!
wait_until "schema registry" "$REG_PID" "$SERVICE_SECONDS" "$OUT/registry.log" test -s "$REG_PORT_FILE"
REG_PORT="$(tr -d '[:space:]' <"$REG_PORT_FILE")"
check_int "the registry's port file" "$REG_PORT" 1 65535
REG_URL="http://127.0.0.1:$REG_PORT"
wait_until "schema registry" "$REG_PID" "$SERVICE_SECONDS" "$OUT/registry.log" http_ok "$REG_URL/subjects"
echo "schema registry listening on $REG_URL (pid $REG_PID)"

run "${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --partitions "$PARTITIONS" --topics "$SOURCE,$TARGET"
run "${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --partitions 1 --topics "$DLQ"

echo "== 3/8 loadtest-out/fieldcrypt.toml and keyset"
cat >"$CFG" <<EOF
# Written by scripts/loadtest.sh: fieldcrypt against the local load-test services.

[kms]
provider = "aws"
key_id = "$KMS_ALIAS"
region = "$REGION"
# moto's KMS emulator (dummy credentials in the environment).
endpoint_url = "$MOTO_URL"

[keyset]
file = "$OUT/keyset.json"

[kafka]
bootstrap_servers = "$BOOTSTRAP"
group_id = "fieldcrypt-loadtest"
client_id = "fieldcrypt-loadtest"

[kafka.properties]
# tansu completes a group join after half the session timeout (librdkafka's default
# is 45 s); 6 s keeps start-up quick on a local broker.
"session.timeout.ms" = "6000"
${FETCH_WAIT_LINE}

[schema_registry]
url = "$REG_URL"

[metrics]
listen = "$METRICS_ADDR"

[[routes]]
source = "$SOURCE"
target = "secure.\${topic}"
EOF
cat "$CFG"
# customer_cdc.avsc: email is deterministic (domain "default") with an "email" blind
# index; the other sensitive fields are randomized (DEKs from the KMS, no keyset key).
run "$FC" keys create --config "$CFG" --purpose deterministic --domain default
run "$FC" keys create --config "$CFG" --purpose blind-index --domain email
run "$FC" keys list --config "$CFG"
run "$FC" plan --config "$CFG" "$SCHEMA" --output-schema "$OUT/customer_cdc.encrypted.avsc"

echo "== 4/8 fieldcrypt run (log: loadtest-out/fieldcrypt.log)"
note_cmd "$FC" run --config "$CFG"
"$FC" run --config "$CFG" >"$OUT/fieldcrypt.log" 2>&1 &
FC_PID=$!
echo "started fieldcrypt (pid $FC_PID); waiting up to ${READY_SECONDS}s for /health/ready (partitions assigned)"
wait_until fieldcrypt "$FC_PID" "$READY_SECONDS" "$OUT/fieldcrypt.log" http_ok "http://$METRICS_ADDR/health/ready"
echo "fieldcrypt ready on http://$METRICS_ADDR"

echo "== 5/8 prometheus (log: loadtest-out/prometheus.log)"
RULES=""
if [[ -f "$ALERTS_SRC" ]]; then
  cp "$ALERTS_SRC" "$OUT/alerts.yml"
  RULES="rule_files:
  - alerts.yml # a copy of docker/prometheus/alerts.yml"
  echo "alert rules: docker/prometheus/alerts.yml (copied to loadtest-out/alerts.yml)"
else
  RULES="# (no docker/prometheus/alerts.yml at the time of this run: no alert rules)"
  echo "alert rules: none (docker/prometheus/alerts.yml does not exist)"
fi
cat >"$OUT/prometheus.yml" <<EOF
# Written by scripts/loadtest.sh.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s

$RULES

scrape_configs:
  - job_name: fieldcrypt
    static_configs:
      - targets: ["$METRICS_ADDR"]
EOF
run promtool check config "$OUT/prometheus.yml"
note_cmd prometheus --config.file="$OUT/prometheus.yml" --storage.tsdb.path="$OUT/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT"
prometheus --config.file="$OUT/prometheus.yml" --storage.tsdb.path="$OUT/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$OUT/prometheus.log" 2>&1 &
PROM_PID=$!
wait_until prometheus "$PROM_PID" "$SERVICE_SECONDS" "$OUT/prometheus.log" http_ok "http://127.0.0.1:$PROM_PORT/-/ready"
echo "prometheus ready on http://127.0.0.1:$PROM_PORT (pid $PROM_PID)"

# ------------------------------------------------------------------------- the runs

RESULTS="$OUT/results.tsv"
printf 'run\ttarget_rate\trate\trecords\tseen\tmissing\tduplicates\tunencrypted\tmalformed\tp50_ms\tp90_ms\tp99_ms\tcpu_s\tcpu_s_per_M\tloadgen_exit\tok\n' >"$RESULTS"

# Prints the results row of one run (tab-separated, "-" for what is unknown) on stdout
# and, on stderr, one line per reason the run failed. Args: run label rc report ticks.
ROW_PY='
import json, sys
run, label, rc, path, ticks, hz = sys.argv[1:7]
rc, hz = int(rc), int(hz)
ticks = int(ticks) if ticks != "-" else None
fails = []
if rc != 0:
    fails.append("loadgen exited %d (verification failed or loadgen error)" % rc)
try:
    with open(path) as f:
        r = json.load(f)
    p, v = r["produce"], r["verify"]
    lat = v["latency_ms"]
except FileNotFoundError:
    r = None
    fails.append("no report written (%s)" % path)
except (ValueError, KeyError, TypeError) as e:
    r = None
    fails.append("unreadable report %s: %s" % (path, e))
cpu = ticks / hz if ticks is not None else None
if r is None:
    row = [run, label, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
           "%.2f" % cpu if cpu is not None else "-", "-", str(rc), "false"]
else:
    for k in ("missing", "unencrypted", "malformed"):
        if v[k] > 0:
            fails.append("%s = %d" % (k, v[k]))
    if not r.get("ok", False):
        fails.append("report says ok = false")
    recs = p["records"]
    per_m = "%.2f" % (cpu / recs * 1e6) if cpu is not None and recs > 0 else "-"
    row = [run, label, "%.0f" % p["rate"], str(recs), str(v["seen"]), str(v["missing"]),
           str(v["duplicates"]), str(v["unencrypted"]), str(v["malformed"]),
           "%.1f" % lat["p50"], "%.1f" % lat["p90"], "%.1f" % lat["p99"],
           "%.2f" % cpu if cpu is not None else "-", per_m, str(rc),
           "true" if not fails else "false"]
print("\t".join(row))
for f in fails:
    print(f, file=sys.stderr)
'

FAILURES=() # one line per failure, printed at the end
TOTAL_RECORDS=0
echo "== 6/8 ${#RATE_LIST[@]} loadgen run(s) of ${RUN_SECONDS}s each, $KEYS keys, $PARTITIONS partitions"
n=0
for rate in "${RATE_LIST[@]}"; do
  n=$((n + 1))
  label="$rate"
  ((rate != 0)) || label="max"
  report="$OUT/report-$n-$label.json"
  lglog="$OUT/loadgen-$n-$label.log"
  if [[ -z "$FC_PID" ]] || ! kill -0 "$FC_PID" 2>/dev/null; then
    FAILURES+=("run $n ($label): not run, fieldcrypt is no longer running")
    printf '%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\tfalse\n' "$n" "$label" >>"$RESULTS"
    continue
  fi
  echo "-- run $n: target rate $label records/s for ${RUN_SECONDS}s (log: loadtest-out/${lglog##*/})"
  c0="$(cpu_ticks "$FC_PID")" || c0=""
  note_cmd "$FC" loadgen --config "$CFG" --topic "$SOURCE" --schema "$SCHEMA" --rate "$rate" \
    --duration "$RUN_SECONDS" --keys "$KEYS" --verify --verify-timeout "$VERIFY_TIMEOUT" --report "$report"
  # In the background and waited for, so that a signal to this script is acted on at
  # once (the trap stops loadgen too); its output is shown live through tee.
  "$FC" loadgen --config "$CFG" --topic "$SOURCE" --schema "$SCHEMA" --rate "$rate" \
    --duration "$RUN_SECONDS" --keys "$KEYS" --verify --verify-timeout "$VERIFY_TIMEOUT" \
    --report "$report" > >(tee "$lglog") 2>&1 &
  LG_PID=$!
  lg_rc=0
  wait "$LG_PID" || lg_rc=$?
  LG_PID=""
  c1="$(cpu_ticks "$FC_PID")" || c1=""
  ticks="-"
  if [[ -n "$c0" && -n "$c1" ]]; then ticks=$((c1 - c0)); fi
  reasons="$OUT/failures-$n.txt"
  python3 -c "$ROW_PY" "$n" "$label" "$lg_rc" "$report" "$ticks" "$CLK_TCK" >>"$RESULTS" 2>"$reasons" \
    || die "could not summarise run $n (python3 failed: $(cat "$reasons"))"
  while IFS= read -r line; do
    if [[ -n "$line" ]]; then FAILURES+=("run $n ($label): $line"); fi
  done <"$reasons"
  rm -f "$reasons"
  records="$(tail -n 1 "$RESULTS" | cut -f4)"
  if [[ "$records" =~ ^[0-9]+$ ]]; then TOTAL_RECORDS=$((TOTAL_RECORDS + records)); fi
  if ! kill -0 "$FC_PID" 2>/dev/null; then
    log_tail "$OUT/fieldcrypt.log"
    FAILURES+=("fieldcrypt exited during run $n ($label)")
    wait "$FC_PID" 2>/dev/null || true
    FC_PID=""
  fi
done

# ---------------------------------------------------------------- the scrape path

echo "== 7/8 prometheus: up{job=\"fieldcrypt\"} and sum(fieldcrypt_records_produced_total) >= $TOTAL_RECORDS"
up="none" prod="none"
deadline=$((SECONDS + PROM_WAIT_SECONDS))
while :; do
  up="$(prom_query 'up{job="fieldcrypt"}' 2>/dev/null)" || up="error"
  prod="$(prom_query 'sum(fieldcrypt_records_produced_total)' 2>/dev/null)" || prod="error"
  if [[ "$up" == 1 ]] && [[ "$prod" =~ ^[0-9.e+]+$ ]] \
    && awk -v p="$prod" -v t="$TOTAL_RECORDS" 'BEGIN { exit !(p + 0 >= t) }'; then
    break
  fi
  ((SECONDS < deadline)) || break
  sleep 0.5
done
echo "prometheus: up{job=\"fieldcrypt\"} = $up"
echo "prometheus: sum(fieldcrypt_records_produced_total) = $prod (loadgen produced $TOTAL_RECORDS records in all runs)"
[[ "$up" == 1 ]] || FAILURES+=("prometheus: up{job=\"fieldcrypt\"} is $up, not 1")
if ! [[ "$prod" =~ ^[0-9.e+]+$ ]] || ! awk -v p="$prod" -v t="$TOTAL_RECORDS" 'BEGIN { exit !(p + 0 >= t) }'; then
  FAILURES+=("prometheus: sum(fieldcrypt_records_produced_total) = $prod < $TOTAL_RECORDS records produced")
fi
# Informational: the rules Prometheus loaded and any alert pending or firing now.
curl -fsS --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/rules" 2>/dev/null | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
print("prometheus: %d rule group(s), %d rule(s) loaded" % (len(groups), len(rules)))
for r in rules:
    for a in r.get("alerts", []):
        print("prometheus: alert %s is %s" % (r["name"], a["state"]))' \
  || echo "prometheus: could not list the loaded rules"

if [[ -n "$FC_PID" ]]; then
  echo "== stopping fieldcrypt with SIGTERM (it drains and commits)"
  stop_fieldcrypt
  if ((STOP_RC == 0)); then
    echo "fieldcrypt exited 0"
  else
    log_tail "$OUT/fieldcrypt.log"
    FAILURES+=("fieldcrypt exited with status $STOP_RC after SIGTERM")
  fi
fi

# ------------------------------------------------------------------------- results

echo "== 8/8 results (tansu in-memory on $BOOTSTRAP, $PARTITIONS partitions, ${RUN_SECONDS}s per rate, $KEYS keys, $(nproc) CPUs)"
echo
awk -F'\t' 'NR == 1 {
    printf "%-7s %8s %8s %8s %8s %7s %5s %6s %8s %8s %8s %10s\n", "target", "rate/s", "records", "seen",
      "missing", "dups", "unenc", "p50 ms", "p90 ms", "p99 ms", "CPU s/M", "result"
    next
  }
  {
    printf "%-7s %8s %8s %8s %8s %7s %5s %6s %8s %8s %8s %10s\n", $2, $3, $4, $5, $6, $7, $8, $10, $11,
      $12, $14, ($16 == "true" ? "ok" : "FAILED")
  }' "$RESULTS"
echo
echo "rate/s: achieved produce rate; p50/p90/p99: end-to-end latency (produce to encrypted copy read)"
echo "CPU s/M: fieldcrypt CPU seconds per million records produced, over the whole loadgen run"
echo "(verification tail and idle polling included, so low rates look expensive)"
echo
echo "commands used (cwd loadtest-out/):"
for c in "${COMMANDS[@]}"; do echo "  $c"; done
echo
echo "raw results: loadtest-out/results.tsv; reports, config and logs of every service: loadtest-out/"
if ((${#FAILURES[@]})); then
  echo
  echo "FAILED:" >&2
  for f in "${FAILURES[@]}"; do echo "  $f" >&2; done
  exit 1
fi
echo "all runs passed"
