#!/usr/bin/env bash
# fieldcrypt quick start: the Kafka stream processor end to end on one machine,
# encrypting and then decrypting again.
#
#  1. sets up what is missing (Debian build packages as root, the Python helpers,
#     the tansu broker), builds fieldcrypt and starts tansu (in memory) on
#     127.0.0.1:9092;
#  2. creates a local KEK, a deterministic key and an e-mail blind-index key;
#  3. creates the topics: the source dbserver1.inventory.customers, the encrypted
#     secure.dbserver1.inventory.customers, the decrypted
#     plain.secure.dbserver1.inventory.customers (3 partitions each) and their
#     dead-letter topics;
#  4. writes demo-out/encrypt.toml and demo-out/decrypt.toml and starts one
#     `fieldcrypt run` for each: source -> secure.* (encrypt), secure.* -> plain.*
#     (decrypt, as an authorised consumer would);
#  5. `fieldcrypt loadgen` produces 10,000 coherent Debezium-style change events
#     (inserts, updates whose before is the row's previous after, deletes followed
#     by tombstones) and verifies without keys that every one arrives encrypted;
#  6. prints one source record next to its encrypted form, field by field, and
#     checks that every decrypted record equals its source byte for byte;
#  7. prints the metrics of both instances and stops everything it started.
#
# Keys, configs and logs land in demo-out/ (recreated on each run). On exit,
# success or not (Ctrl-C too), it stops the fieldcrypt instances and the broker.
# Environment: QUICKSTART_PORT (broker port, default 9092), QUICKSTART_METRICS_PORT
# (the encrypting instance's metrics/health listener, default 9464; the decrypting
# one uses the next port), QUICKSTART_COUNT (records, default 10000),
# QUICKSTART_SKIP_BUILD=1 (use the existing target/release/fieldcrypt). The
# file-mode demo is scripts/quickstart-files.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PORT="${QUICKSTART_PORT:-9092}"
METRICS_PORT="${QUICKSTART_METRICS_PORT:-9464}"
DEC_METRICS_PORT=$((METRICS_PORT + 1))
BOOTSTRAP="127.0.0.1:$PORT"
COUNT="${QUICKSTART_COUNT:-10000}"
SOURCE="dbserver1.inventory.customers"
TARGET="secure.$SOURCE"
PLAIN="plain.$TARGET"
WAIT_SECONDS=120
STOP_SECONDS=45 # fieldcrypt's drain timeout (30 s) plus margin
FC="$ROOT/target/release/fieldcrypt"
KT=(python3 "$ROOT/scripts/kafka_tool.py")
SCHEMA="$ROOT/schemas/customer_cdc.avsc"

PIDS=()

SCRIPT_NAME=quickstart
COMMANDS=()
# die, log_tail
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"
# ensure_build_tools, ensure_python_tools, ensure_broker, start_broker, stop_broker
# shellcheck source=scripts/lib/setup.sh
source "$ROOT/scripts/lib/setup.sh"

# Sends SIGTERM to fieldcrypt pid $1 and waits for it to drain and exit; returns
# its exit status (SIGKILL after STOP_SECONDS).
stop_fc() {
  local pid="$1" deadline rc=0
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$((SECONDS + STOP_SECONDS))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "fieldcrypt (pid $pid) still running after ${STOP_SECONDS}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "== stopping fieldcrypt (pid $pid)"
      stop_fc "$pid"
    fi
  done
  if [[ -n "${BROKER_PID:-}" ]]; then
    echo "== stopping the broker"
    stop_broker
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

# Prints the Prometheus metrics served on 127.0.0.1:$1.
metrics() {
  python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
    "http://127.0.0.1:$1/metrics"
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

# Waits until the instance with metrics port $1 (pid $3, log $2) is ready: it has
# joined its consumer group and holds partitions (/health/ready answers 200).
wait_ready() {
  local port="$1" log="$2" pid="$3" deadline
  deadline=$((SECONDS + WAIT_SECONDS))
  until python3 -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)' "http://127.0.0.1:$port/health/ready" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { log_tail "$log"; die "fieldcrypt (pid $pid) exited early"; }
    if ((SECONDS >= deadline)); then
      log_tail "$log"
      die "fieldcrypt on port $port not ready within ${WAIT_SECONDS}s (see demo-out/$log)"
    fi
    sleep 0.3
  done
}

# Waits until the instance with metrics port $2 (pid $4, log $3) has produced $1
# records.
wait_produced() {
  local want="$1" port="$2" log="$3" pid="$4" deadline produced=0
  deadline=$((SECONDS + WAIT_SECONDS))
  while :; do
    kill -0 "$pid" 2>/dev/null || { log_tail "$log"; die "fieldcrypt (pid $pid) exited early"; }
    produced="$(metrics "$port" 2>/dev/null | sum_metric fieldcrypt_records_produced_total || true)"
    ((${produced:-0} >= want)) && break
    if ((SECONDS >= deadline)); then
      log_tail "$log"
      die "only ${produced:-0} of $want records produced within ${WAIT_SECONDS}s (see demo-out/$log)"
    fi
    sleep 0.5
  done
}

# Writes a `fieldcrypt run` config: $1 file, $2 mode, $3 source, $4 target, $5 value
# schema, $6 metrics port, $7 consumer group.
write_config() {
  cat >"$1" <<EOF
# fieldcrypt run configuration written by scripts/quickstart.sh. Keys not set here take
# their embedded defaults (docs/CONFIG.md): local KEK .fieldcrypt/kek.key, keyset
# .fieldcrypt/keyset.json, relative to this directory (demo-out/).

[kafka]
bootstrap_servers = "$BOOTSTRAP"
group_id = "$7"
client_id = "$7"
# tansu completes a group join after half the session timeout (librdkafka's default
# is 45 s); 6 s keeps start-up and rebalances quick on a local broker.
properties = { "session.timeout.ms" = "6000" }

[pipeline]
mode = "$2"
on_error = "dead-letter"

[[routes]]
source = "$3"
target = "$4"
dead_letter = "dlq.\${topic}"
# The writer schema of the source topic's raw Avro values (decrypting: the encrypted
# schema that \`fieldcrypt plan --output-schema\` derived).
value_schema = "$5"

[metrics]
# Prometheus /metrics, /health/live and /health/ready.
listen = "127.0.0.1:$6"
EOF
}

echo "== 1/7 set up, build, start the broker"
if [[ "${QUICKSTART_SKIP_BUILD:-0}" == 1 ]]; then
  [[ -x "$FC" ]] || die "QUICKSTART_SKIP_BUILD=1 but $FC does not exist"
  echo "using the existing $FC"
else
  ensure_build_tools
  echo "building fieldcrypt (release; the first build takes several minutes)"
  cargo build --release --quiet
fi
ensure_python_tools "confluent_kafka, fastavro"
ensure_broker
for p in "$METRICS_PORT" "$DEC_METRICS_PORT"; do
  if port_open "$p"; then
    die "127.0.0.1:$p (a fieldcrypt metrics listener) is already in use; free it or set QUICKSTART_METRICS_PORT"
  fi
done
mkdir -p "$ROOT/.tools/run"
# Refuses a port that another process already listens on (set QUICKSTART_PORT).
start_broker "$PORT" "$ROOT/.tools/run/quickstart-tansu.log"
STARTED_AT=$SECONDS

echo "== 2/7 keys: a local KEK, a deterministic key and an e-mail blind-index key (demo-out/.fieldcrypt/)"
rm -rf demo-out && mkdir -p demo-out && cd demo-out
"$FC" keys init
"$FC" keys create --purpose deterministic --domain default
"$FC" keys create --purpose blind-index --domain email
"$FC" keys list

echo "== 3/7 topics on $BOOTSTRAP"
"${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --topics "$SOURCE,$TARGET,$PLAIN" --partitions 3
"${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --topics "dlq.$SOURCE,dlq.$TARGET" --partitions 1

echo "== 4/7 two fieldcrypt instances: encrypt $SOURCE -> $TARGET, decrypt $TARGET -> $PLAIN"
"$FC" plan "$SCHEMA" --output-schema customer_cdc.encrypted.avsc
write_config encrypt.toml encrypt "$SOURCE" 'secure.${topic}' ../schemas/customer_cdc.avsc \
  "$METRICS_PORT" fieldcrypt-quickstart
write_config decrypt.toml decrypt "$TARGET" 'plain.${topic}' customer_cdc.encrypted.avsc \
  "$DEC_METRICS_PORT" fieldcrypt-quickstart-decrypt
echo "demo-out/encrypt.toml:"
sed 's/^/  /' encrypt.toml
"$FC" run --config encrypt.toml >fieldcrypt-encrypt.log 2>&1 &
ENC_PID=$!
PIDS+=("$ENC_PID")
"$FC" run --config decrypt.toml >fieldcrypt-decrypt.log 2>&1 &
DEC_PID=$!
PIDS+=("$DEC_PID")
echo "started fieldcrypt run --config encrypt.toml (pid $ENC_PID) and --config decrypt.toml (pid $DEC_PID)"
# Produce only once both have joined their groups, so the latency loadgen reports
# is the pipeline's, not a group join's.
wait_ready "$METRICS_PORT" fieldcrypt-encrypt.log "$ENC_PID"
wait_ready "$DEC_METRICS_PORT" fieldcrypt-decrypt.log "$DEC_PID"
echo "both instances joined their groups and hold partitions (/health/ready)"

echo "== 5/7 fieldcrypt loadgen: $COUNT change events -> $SOURCE, verified in $TARGET without keys"
if ! "$FC" loadgen --config encrypt.toml --topic "$SOURCE" --count "$COUNT" --rate 0 --keys 1000 \
  --run-id quickstart --verify --verify-timeout "$WAIT_SECONDS"; then
  log_tail fieldcrypt-encrypt.log
  die "loadgen's verification failed"
fi
echo "waiting for the decrypting instance to write $COUNT records to $PLAIN"
wait_produced "$COUNT" "$DEC_METRICS_PORT" fieldcrypt-decrypt.log "$DEC_PID"

echo "== 6/7 source, encrypted and decrypted records"
"${KT[@]}" compare --bootstrap "$BOOTSTRAP" --source "$SOURCE" --encrypted "$TARGET" --decrypted "$PLAIN" \
  --schema "$SCHEMA" --encrypted-schema customer_cdc.encrypted.avsc --count "$COUNT" --timeout-seconds 60

echo "== 7/7 metrics, then a clean stop"
for side in encrypt:"$METRICS_PORT" decrypt:"$DEC_METRICS_PORT"; do
  echo "-- ${side%%:*} instance (http://127.0.0.1:${side#*:}/metrics)"
  metrics "${side#*:}" >"metrics-${side%%:*}.txt" 2>/dev/null || echo "(metrics endpoint did not answer)"
  grep -E '^(fieldcrypt_records_consumed_total|fieldcrypt_records_produced_total|fieldcrypt_fields_total|fieldcrypt_dead_letters_total|fieldcrypt_dek_cache_|fieldcrypt_kms_requests_total)' \
    "metrics-${side%%:*}.txt" || echo "(none of the summary metrics are present)"
done
ELAPSED=$((SECONDS - STARTED_AT))
for pid in "$ENC_PID" "$DEC_PID"; do
  rc=0
  stop_fc "$pid" || rc=$?
  if ((rc != 0)); then
    log_tail fieldcrypt-encrypt.log
    log_tail fieldcrypt-decrypt.log
    die "fieldcrypt (pid $pid) exited with status $rc after SIGTERM"
  fi
done
PIDS=()
echo "both fieldcrypt instances drained, committed and exited 0"
echo "== done in ${ELAPSED}s after the build: $COUNT change events encrypted into $TARGET, decrypted into $PLAIN and equal to their source; files in demo-out/"
