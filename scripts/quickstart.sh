#!/usr/bin/env bash
# fieldcrypt quick start: the Kafka stream processor end to end on one machine.
#
#  1. builds fieldcrypt, installs the Python helpers (confluent-kafka, fastavro) if
#     missing, installs and starts a local Kafka-protocol broker (tansu, in-memory,
#     scripts/broker.sh) on 127.0.0.1:9092;
#  2. creates a local KEK, a deterministic key and an e-mail blind-index key;
#  3. creates the topics dbserver1.inventory.customers (3 partitions),
#     secure.dbserver1.inventory.customers (3) and dlq.dbserver1.inventory.customers (1);
#  4. writes 10,000 Debezium-style change events (schemas/customer_cdc.avsc) and
#     produces them as raw Avro values;
#  5. writes demo-out/pipeline.toml (one route, source -> secure.${topic});
#  6. runs `fieldcrypt run --config pipeline.toml` until the 10,000 records are
#     encrypted, shows one encrypted record and the metrics, and stops it with SIGTERM.
#
# Keys, data, config and logs land in demo-out/ (recreated on each run). On exit,
# success or not (Ctrl-C too), it stops the fieldcrypt and the broker it started.
# Environment: QUICKSTART_PORT (broker port, default 9092), QUICKSTART_METRICS_PORT
# (fieldcrypt's metrics/health listener, default 9464), QUICKSTART_SKIP_BUILD=1 (use the
# existing target/release/fieldcrypt). The file-mode demo is scripts/quickstart-files.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PORT="${QUICKSTART_PORT:-9092}"
METRICS_PORT="${QUICKSTART_METRICS_PORT:-9464}"
BOOTSTRAP="127.0.0.1:$PORT"
METRICS_ADDR="127.0.0.1:$METRICS_PORT"
COUNT=10000
SOURCE="dbserver1.inventory.customers"
TARGET="secure.$SOURCE"
DLQ="dlq.$SOURCE"
WAIT_SECONDS=120
STOP_SECONDS=45 # fieldcrypt's drain timeout (30 s) plus margin
FC="$ROOT/target/release/fieldcrypt"
BROKER="$ROOT/scripts/broker.sh"
KT=(python3 "$ROOT/scripts/kafka_tool.py")
SCHEMA="$ROOT/schemas/customer_cdc.avsc"

BROKER_STARTED=0
FC_PID=""

SCRIPT_NAME=quickstart
COMMANDS=()
# die, log_tail, note_cmd, run
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n "$FC_PID" ]] && kill -0 "$FC_PID" 2>/dev/null; then
    echo "== stopping fieldcrypt (pid $FC_PID)"
    kill -TERM "$FC_PID" 2>/dev/null
    local deadline=$((SECONDS + STOP_SECONDS))
    while kill -0 "$FC_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$FC_PID" 2>/dev/null; then
      echo "fieldcrypt still running after ${STOP_SECONDS}s; sending SIGKILL" >&2
      kill -KILL "$FC_PID" 2>/dev/null
    fi
    wait "$FC_PID" 2>/dev/null
  fi
  if ((BROKER_STARTED)); then
    echo "== stopping the broker"
    "$BROKER" stop "$PORT"
  fi
  if ((rc == 130 || rc == 143)); then
    echo "== quick start interrupted; files are in demo-out/" >&2
  elif ((rc != 0)); then
    echo "== quick start FAILED (exit $rc); files are in demo-out/" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints fieldcrypt's Prometheus metrics (fails if the listener does not answer).
metrics() {
  if command -v curl >/dev/null; then
    curl -fsS --max-time 2 "http://$METRICS_ADDR/metrics"
  else
    python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
      "http://$METRICS_ADDR/metrics"
  fi
}

# Sums the samples of metric $1 across all label sets (stdin: the /metrics text).
sum_metric() {
  awk -v name="$1" '
    index($0, name) == 1 {
      rest = substr($0, length(name) + 1)
      if (rest !~ /^[{ ]/) next          # a longer metric name with this prefix
      sub(/^\{[^}]*\}/, "", rest)        # labels
      split(rest, f, " ")
      total += f[1]
    }
    END { printf "%d\n", total }'
}

echo "== 1/6 build, Python helpers, broker"
if [[ "${QUICKSTART_SKIP_BUILD:-0}" == 1 ]]; then
  [[ -x "$FC" ]] || die "QUICKSTART_SKIP_BUILD=1 but $FC does not exist"
  echo "using the existing $FC"
else
  cargo build --release --quiet
fi
if ! python3 -c 'import confluent_kafka, fastavro' 2>/dev/null; then
  echo "installing Python helpers (tests/requirements.txt)"
  pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" && return 0
    # Debian's own python3 refuses pip installs (PEP 668) unless told otherwise.
    echo "pip install failed; retrying with --break-system-packages" >&2
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
  }
  pip_install -r tests/requirements.txt \
    || die "could not pip-install tests/requirements.txt (is python3-pip installed?)"
  if ! python3 -c 'import confluent_kafka, fastavro' 2>/dev/null; then
    pip_install confluent-kafka fastavro==1.13.1 || die "could not pip-install confluent-kafka and fastavro"
  fi
fi
"$BROKER" install
if "$BROKER" status "$PORT" >/dev/null 2>&1; then
  die "a broker started by scripts/broker.sh is already running on $BOOTSTRAP and may hold old records; stop it (scripts/broker.sh stop $PORT) or set QUICKSTART_PORT"
fi
if port_open "$METRICS_PORT"; then
  die "127.0.0.1:$METRICS_PORT (fieldcrypt's metrics listener) is already in use; free it or set QUICKSTART_METRICS_PORT"
fi
# broker.sh refuses a port that another process already listens on.
"$BROKER" start "$PORT"
BROKER_STARTED=1

echo "== 2/6 keys: a local KEK, a deterministic key and an e-mail blind-index key (demo-out/.fieldcrypt/)"
rm -rf demo-out && mkdir -p demo-out && cd demo-out
"$FC" keys init
"$FC" keys create --purpose deterministic --domain default
"$FC" keys create --purpose blind-index --domain email
"$FC" keys list

echo "== 3/6 topics on $BOOTSTRAP"
"${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --topics "$SOURCE,$TARGET" --partitions 3
"${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --topics "$DLQ" --partitions 1

echo "== 4/6 $COUNT sample change events -> $SOURCE (raw Avro values, key = row id)"
"$FC" plan "$SCHEMA" --output-schema customer_cdc.encrypted.avsc
"$FC" sample --schema "$SCHEMA" --count "$COUNT" cdc.avro
"${KT[@]}" produce-file --bootstrap "$BOOTSTRAP" --topic "$SOURCE" --file cdc.avro --key-field id
echo "one source record, decoded with $SCHEMA:"
"${KT[@]}" consume --bootstrap "$BOOTSTRAP" --topic "$SOURCE" --count 1 --timeout-seconds 30 \
  --schema "$SCHEMA" --show 1 --pretty

echo "== 5/6 demo-out/pipeline.toml"
cat >pipeline.toml <<EOF
# fieldcrypt run configuration written by scripts/quickstart.sh. Keys not set here take
# their embedded defaults (docs/CONFIG.md): local KEK .fieldcrypt/kek.key, keyset
# .fieldcrypt/keyset.json, relative to this directory (demo-out/).

[kafka]
bootstrap_servers = "$BOOTSTRAP"
group_id = "fieldcrypt-quickstart"
client_id = "fieldcrypt-quickstart"
# tansu completes a group join after half the session timeout (librdkafka's default
# is 45 s); 6 s keeps start-up and rebalances quick on a local broker.
properties = { "session.timeout.ms" = "6000" }

[pipeline]
mode = "encrypt"
on_error = "dead-letter"

[[routes]]
source = "$SOURCE"
target = "secure.\${topic}"
dead_letter = "dlq.\${topic}"
# The writer schema of the source topic's raw Avro values; its attributes mark the
# sensitive fields (the encrypted records follow customer_cdc.encrypted.avsc).
value_schema = "../schemas/customer_cdc.avsc"

[metrics]
# Prometheus /metrics, /health/live and /health/ready.
listen = "$METRICS_ADDR"
EOF
cat pipeline.toml

echo "== 6/6 fieldcrypt run --config pipeline.toml (log: demo-out/fieldcrypt.log)"
"$FC" run --config pipeline.toml >fieldcrypt.log 2>&1 &
FC_PID=$!
echo "started fieldcrypt (pid $FC_PID); waiting for $COUNT records in $TARGET (metric fieldcrypt_records_produced_total, up to ${WAIT_SECONDS}s)"
deadline=$((SECONDS + WAIT_SECONDS))
next_report=$((SECONDS + 5))
produced=0
while :; do
  if ! kill -0 "$FC_PID" 2>/dev/null; then
    rc=0
    wait "$FC_PID" || rc=$?
    FC_PID=""
    log_tail fieldcrypt.log
    die "fieldcrypt exited early (exit $rc)"
  fi
  produced="$(metrics 2>/dev/null | sum_metric fieldcrypt_records_produced_total || true)"
  produced="${produced:-0}"
  if ((produced >= COUNT)); then
    break
  fi
  if ((SECONDS >= deadline)); then
    log_tail fieldcrypt.log
    die "only $produced of $COUNT records produced within ${WAIT_SECONDS}s"
  fi
  if ((SECONDS >= next_report)); then
    echo "  $produced records produced so far"
    next_report=$((SECONDS + 5))
  fi
  sleep 0.5
done
echo "fieldcrypt produced $produced records"

echo "== one encrypted record from $TARGET (decoded with demo-out/customer_cdc.encrypted.avsc; bytes as base64):"
consume_rc=0
"${KT[@]}" consume --bootstrap "$BOOTSTRAP" --topic "$TARGET" --count 1 --timeout-seconds 30 \
  --schema customer_cdc.encrypted.avsc --show 1 --pretty || consume_rc=$?

echo "== metrics (http://$METRICS_ADDR/metrics)"
metrics >metrics.txt 2>/dev/null || echo "(metrics endpoint did not answer)"
grep -E '^(fieldcrypt_records_consumed_total|fieldcrypt_records_produced_total|fieldcrypt_fields_total|fieldcrypt_dead_letters_total|fieldcrypt_dek_cache_|fieldcrypt_kms_requests_total)' \
  metrics.txt || echo "(none of the summary metrics are present)"
((consume_rc == 0)) || die "could not read an encrypted record back from $TARGET (exit $consume_rc)"

echo "== stopping fieldcrypt with SIGTERM (it drains and commits)"
kill -TERM "$FC_PID"
deadline=$((SECONDS + STOP_SECONDS))
while kill -0 "$FC_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
kill -0 "$FC_PID" 2>/dev/null && die "fieldcrypt did not exit within ${STOP_SECONDS}s of SIGTERM"
rc=0
wait "$FC_PID" || rc=$?
FC_PID=""
if ((rc != 0)); then
  log_tail fieldcrypt.log
  die "fieldcrypt exited with status $rc after SIGTERM"
fi
echo "fieldcrypt exited 0"
echo "== done: $COUNT change events encrypted from $SOURCE into $TARGET; files in demo-out/"
