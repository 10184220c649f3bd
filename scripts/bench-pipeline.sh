#!/usr/bin/env bash
# End-to-end throughput of `fieldcrypt run` against a local tansu broker: the same
# records through the same binary, once encrypting and once passing through, so the
# difference is the cost of the field encryption (Avro decode/encode of the
# encrypted fields, AES-GCM/AES-SIV, blind-index HMAC, DEK handling) on top of the
# Kafka consume/produce path.
#
# What is measured, per run:
#   * wall seconds from the first /metrics poll where fieldcrypt_records_consumed_total
#     is > 0 (so start-up and the ~3 s consumer-group join are excluded) to the first
#     poll where fieldcrypt_records_produced_total (summed over topics) reaches
#     BENCH_RECORDS, i.e. every record acknowledged by the broker (acks=all);
#   * records = the records produced inside that window (BENCH_RECORDS minus those
#     already acknowledged when the clock started), and records/s = records / seconds;
#   * CPU seconds = the fieldcrypt process's utime+stime (all threads, from
#     /proc/PID/stat, in clock ticks of `getconf CLK_TCK`) read at the same two
#     polls, so only the measured window counts; CPU s per million records =
#     CPU seconds / records * 1e6. The broker's and this script's CPU are NOT
#     included (they share the machine, though: on a small machine the broker's
#     work also limits records/s).
# /metrics is polled every BENCH_POLL_SECONDS (0.2 s) during the window, so its end
# is known to within one poll interval; until the clock starts it is polled every
# BENCH_START_POLL_SECONDS (0.02 s), because records are consumed in large fetches and
# a 0.2 s poll would let thousands of records be consumed (and their CPU spent)
# before the clock starts. A run whose window is shorter than 25 poll intervals is
# flagged in the output: use more records (BENCH_RECORDS) before trusting it.
#
# Modes:
#   encrypt      the route's value_schema is schemas/customer.avsc (5 sensitive fields,
#                email deterministic + blind index, the others randomized);
#   passthrough  a copy of it with every "sensitive" attribute removed, so the plan
#                encrypts nothing and fieldcrypt forwards the validated Avro bytes.
# Runs alternate encrypt/passthrough for BENCH_ROUNDS rounds, so machine noise hits
# both modes. Every run reads the same source topic from the earliest offset with a
# fresh consumer group and writes to its own output topic.
#
# Environment:
#   BENCH_RECORDS       records in the source topic (default 200000)
#   BENCH_ROUNDS        encrypt+passthrough pairs (default 2)
#   BENCH_PORT          broker port on 127.0.0.1 (default 9192; refused if in use)
#   BENCH_METRICS_PORT  fieldcrypt's /metrics port (default 9474)
#   BENCH_TIMEOUT       seconds allowed per run, from start to all records produced (300)
#   BENCH_POLL_SECONDS  /metrics poll interval during the window (default 0.2)
#   BENCH_START_POLL_SECONDS  poll interval until the clock starts (default 0.02)
#   FIELDCRYPT          the binary (default <repo>/target/release/fieldcrypt; never built here).
#                       It is copied to bench-out/fieldcrypt once, and every run uses
#                       that copy, so a rebuild during the benchmark cannot mix binaries.
# Work files (keys, data, configs, logs, metrics snapshots, results.tsv) go to
# bench-out/, recreated on each invocation. The broker started here is stopped on
# exit, success or not.
set -euo pipefail
# Decimal points in $EPOCHREALTIME and awk's numbers whatever the user's locale.
unset LC_ALL
export LC_NUMERIC=C
# A relative FIELDCRYPT is relative to the directory this script was started from.
if [[ -n "${FIELDCRYPT:-}" ]]; then
  FC_SRC="$(realpath -m -- "$FIELDCRYPT")"
fi
cd "$(dirname "$0")/.."
ROOT="$PWD"

RECORDS="${BENCH_RECORDS:-200000}"
ROUNDS="${BENCH_ROUNDS:-2}"
PORT="${BENCH_PORT:-9192}"
METRICS_PORT="${BENCH_METRICS_PORT:-9474}"
RUN_TIMEOUT="${BENCH_TIMEOUT:-300}"
POLL="${BENCH_POLL_SECONDS:-0.2}"
START_POLL="${BENCH_START_POLL_SECONDS:-0.02}"
FC_SRC="${FC_SRC:-$ROOT/target/release/fieldcrypt}"

OUT="$ROOT/bench-out"
SOURCE="bench.customers"
DLQ="dlq.$SOURCE" # the routes' default dead-letter topic (dlq.${topic})
SCHEMA_ENC="$ROOT/schemas/customer.avsc"
SCHEMA_PASS="$OUT/customer.passthrough.avsc"
STOP_SECONDS=45 # fieldcrypt's drain timeout (30 s) plus margin
BROKER="$ROOT/scripts/broker.sh"
KT=(python3 "$ROOT/scripts/kafka_tool.py")
FC="$OUT/fieldcrypt"

BROKER_STARTED=0
FC_PID=""
FC_LOG=""
COMMANDS=() # every command line this script ran, printed at the end

SCRIPT_NAME=bench-pipeline
# die, log_tail, note_cmd, run
# shellcheck source=scripts/lib/common.sh
source "$ROOT/scripts/lib/common.sh"

# Sends SIGTERM to the running fieldcrypt and waits for it; sets STOP_RC to its exit
# status (not run in $(...): `wait` only works for this shell's own children).
STOP_RC=0
stop_fieldcrypt() {
  local pid="$FC_PID"
  STOP_RC=0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_SECONDS))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "fieldcrypt (pid $pid) still running ${STOP_SECONDS}s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || STOP_RC=$?
  FC_PID=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n "$FC_PID" ]] && kill -0 "$FC_PID" 2>/dev/null; then
    echo "== stopping fieldcrypt (pid $FC_PID)" >&2
    stop_fieldcrypt
  fi
  if ((BROKER_STARTED)); then
    echo "== stopping the broker on port $PORT" >&2
    "$BROKER" stop "$PORT" >&2
  fi
  if ((rc == 130 || rc == 143)); then
    echo "== benchmark interrupted; files are in bench-out/" >&2
  elif ((rc != 0)); then
    echo "== benchmark FAILED (exit $rc); files are in bench-out/" >&2
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
  curl -fsS --max-time 2 "http://$METRICS_ADDR/metrics"
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

# Prints "consumed produced dead_lettered" record totals (stdin: the /metrics text),
# in one process so that a poll stays cheap.
counters() {
  awk '
    function add(name,   rest, f) {
      if (index($0, name) != 1) return 0
      rest = substr($0, length(name) + 1)
      if (rest !~ /^[{ ]/) return 0
      sub(/^\{[^}]*\}/, "", rest)
      split(rest, f, " ")
      return f[1]
    }
    {
      c += add("fieldcrypt_records_consumed_total")
      p += add("fieldcrypt_records_produced_total")
      d += add("fieldcrypt_dead_letters_total")
    }
    END { printf "%d %d %d\n", c, p, d }'
}

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

# check_int NAME VALUE MIN MAX: dies unless VALUE is a decimal integer in [MIN, MAX].
check_int() {
  if ! [[ "$2" =~ ^[0-9]{1,10}$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
    die "$1 must be an integer from $3 to $4 (got '$2')"
  fi
}

# ------------------------------------------------------------------- checks, setup

check_int BENCH_RECORDS "$RECORDS" 1 1000000000
check_int BENCH_ROUNDS "$ROUNDS" 1 1000
check_int BENCH_PORT "$PORT" 1 65535
check_int BENCH_METRICS_PORT "$METRICS_PORT" 1 65535
check_int BENCH_TIMEOUT "$RUN_TIMEOUT" 1 86400
RECORDS=$((10#$RECORDS)) ROUNDS=$((10#$ROUNDS)) PORT=$((10#$PORT))
METRICS_PORT=$((10#$METRICS_PORT)) RUN_TIMEOUT=$((10#$RUN_TIMEOUT))
BOOTSTRAP="127.0.0.1:$PORT"
METRICS_ADDR="127.0.0.1:$METRICS_PORT"
((PORT != METRICS_PORT)) || die "BENCH_PORT and BENCH_METRICS_PORT must differ"
[[ "$POLL" =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_POLL_SECONDS must be a number (got '$POLL')"
[[ "$START_POLL" =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_START_POLL_SECONDS must be a number (got '$START_POLL')"
[[ -x "$FC_SRC" ]] || die "no executable fieldcrypt at $FC_SRC (build it first, or set FIELDCRYPT); this script does not build"
command -v curl >/dev/null || die "curl is needed to read /metrics"
[[ -r /proc/self/stat ]] || die "/proc is needed to read the process CPU time"
CLK_TCK="$(getconf CLK_TCK)"
check_int "getconf CLK_TCK" "$CLK_TCK" 1 1000000
python3 -c 'import confluent_kafka, fastavro' 2>/dev/null \
  || die "python3 needs confluent-kafka and fastavro (python3 -m pip install -r tests/requirements.txt)"

echo "== 1/5 broker on $BOOTSTRAP"
"$BROKER" install
if "$BROKER" status "$PORT" >/dev/null 2>&1; then
  die "a broker started by scripts/broker.sh is already running on $BOOTSTRAP and may hold old records; stop it (scripts/broker.sh stop $PORT) or set BENCH_PORT"
fi
port_open "$PORT" && die "127.0.0.1:$PORT is already in use; set BENCH_PORT"
port_open "$METRICS_PORT" && die "127.0.0.1:$METRICS_PORT (fieldcrypt's metrics listener) is already in use; set BENCH_METRICS_PORT"
# Set before starting, so the trap stops a broker that started but never became ready.
BROKER_STARTED=1
run "$BROKER" start "$PORT"

echo "== 2/5 bench-out/: binary, keys, schemas"
rm -rf "$OUT"
mkdir -p "$OUT"
cd "$OUT"
# One copy of the binary for every run of this session (see FIELDCRYPT above).
cp "$FC_SRC" "$FC"
echo "fieldcrypt: $FC_SRC -> $FC ($("$FC" --version), sha256 $(sha256sum "$FC" | cut -c1-16)...)"
cat >keys.toml <<EOF
# Key paths shared by the key commands and every run config.
[kms]
kek_file = "$OUT/.fieldcrypt/kek.key"

[keyset]
file = "$OUT/.fieldcrypt/keyset.json"
EOF
run "$FC" keys init --config keys.toml
run "$FC" keys create --config keys.toml --purpose deterministic --domain default
run "$FC" keys create --config keys.toml --purpose blind-index --domain email
# Pass-through schema: the same record with every "sensitive" attribute removed.
run python3 - "$SCHEMA_ENC" "$SCHEMA_PASS" <<'PY'
import json, sys
src, dst = sys.argv[1:3]
removed = 0
def strip(node):
    global removed
    if isinstance(node, dict):
        if "sensitive" in node:
            del node["sensitive"]
            removed += 1
        for v in node.values():
            strip(v)
    elif isinstance(node, list):
        for v in node:
            strip(v)
with open(src) as f:
    schema = json.load(f)
strip(schema)
with open(dst, "w") as f:
    json.dump(schema, f, indent=2)
    f.write("\n")
print(f"wrote {dst} ({removed} 'sensitive' attributes removed)")
PY
# Show both plans; the pass-through one must encrypt nothing.
run "$FC" plan --config keys.toml "$SCHEMA_ENC" --output-schema customer.encrypted.avsc
run "$FC" plan --config keys.toml "$SCHEMA_PASS" | tee plan-passthrough.txt
grep -q "no sensitive fields" plan-passthrough.txt \
  || die "the pass-through plan still encrypts fields (see bench-out/plan-passthrough.txt)"

MODES=(${BENCH_MODES:-floor passthrough encrypt})
declare -A SCHEMA_OF=([encrypt]="$SCHEMA_ENC" [passthrough]="$SCHEMA_PASS" [floor]="$SCHEMA_PASS")
declare -A TAG_OF=([encrypt]=enc [passthrough]=pass [floor]=floor)
declare -A CMD_OF=([encrypt]=run [passthrough]=run [floor]=forward)

echo "== 3/5 topics and $RECORDS source records"
targets=()
for ((r = 1; r <= ROUNDS; r++)); do
  for m in "${MODES[@]}"; do targets+=("bench.out.${TAG_OF[$m]}.$r"); done
done
run "${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --partitions 3 \
  --topics "$SOURCE,$(IFS=,; echo "${targets[*]}")"
run "${KT[@]}" create-topics --bootstrap "$BOOTSTRAP" --partitions 1 --topics "$DLQ"
run "$FC" sample --schema "$SCHEMA_ENC" --count "$RECORDS" customers.avro
run "${KT[@]}" produce-file --bootstrap "$BOOTSTRAP" --topic "$SOURCE" --file customers.avro --key-field id

# ------------------------------------------------------------------------ one run

RESULTS="$OUT/results.tsv"
# short = 1 if the window was under 25 poll intervals (numbers rough).
printf 'mode\tround\trecords\tseconds\trecords_per_s\tcpu_s\tcpu_s_per_M\tshort\n' >"$RESULTS"

# bench_run MODE ROUND: one `fieldcrypt run` over the whole source topic.
bench_run() {
  local mode="$1" round="$2"
  local tag="${TAG_OF[$mode]}"
  local name="$tag.$round"
  local cfg="$OUT/run-$name.toml" target="bench.out.$name"
  local group
  group="fieldcrypt-bench-$name-$$-$(date +%s)"
  FC_LOG="$OUT/fieldcrypt-$name.log"
  port_open "$METRICS_PORT" && die "127.0.0.1:$METRICS_PORT is in use before run $name (a previous fieldcrypt still running?)"

  cat >"$cfg" <<EOF
# Written by scripts/bench-pipeline.sh: $mode, round $round.
[kafka]
bootstrap_servers = "$BOOTSTRAP"
group_id = "$group"
client_id = "fieldcrypt-bench"

[kafka.properties]
# tansu completes a group join after half the session timeout.
"session.timeout.ms" = "6000"

[metrics]
listen = "$METRICS_ADDR"

[kms]
kek_file = "$OUT/.fieldcrypt/kek.key"

[keyset]
file = "$OUT/.fieldcrypt/keyset.json"

[[routes]]
source = "$SOURCE"
target = "$target"
value_schema = "${SCHEMA_OF[$mode]}"
EOF

  echo "-- $mode, round $round: $SOURCE -> $target (config bench-out/run-$name.toml, log bench-out/fieldcrypt-$name.log)"
  note_cmd "$FC" "${CMD_OF[$mode]}" --config "$cfg"
  "$FC" "${CMD_OF[$mode]}" --config "$cfg" >"$FC_LOG" 2>&1 &
  FC_PID=$!

  local deadline=$((SECONDS + RUN_TIMEOUT))
  local t0="" t1="" c0="" c1="" p0=0 text consumed produced dead
  while :; do
    if ! kill -0 "$FC_PID" 2>/dev/null; then
      local rc=0
      wait "$FC_PID" || rc=$?
      FC_PID=""
      log_tail "$FC_LOG"
      die "fieldcrypt exited early during $mode round $round (exit $rc)"
    fi
    if text="$(metrics 2>/dev/null)"; then
      # Read the clock and the CPU counter right after the metrics, as one sample.
      local now="$EPOCHREALTIME" ticks
      ticks="$(cpu_ticks "$FC_PID")" || ticks=""
      read -r consumed produced dead < <(counters <<<"$text")
      if ((dead > 0)); then
        echo "$text" >"$OUT/metrics-$name.txt"
        log_tail "$FC_LOG"
        die "$dead records were dead-lettered in $mode round $round (bench-out/metrics-$name.txt); the measurement would be wrong"
      fi
      if [[ -z "$t0" ]] && ((consumed > 0)) && [[ -n "$ticks" ]]; then
        t0="$now" c0="$ticks" p0="$produced"
        echo "   clock started: $consumed consumed, $produced produced at that poll"
      fi
      if [[ -n "$t0" ]] && ((produced >= RECORDS)) && [[ -n "$ticks" ]]; then
        t1="$now" c1="$ticks"
        echo "$text" >"$OUT/metrics-$name.txt"
        break
      fi
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$FC_LOG"
      die "$mode round $round: only ${produced:-0} of $RECORDS records produced within ${RUN_TIMEOUT}s (consumed ${consumed:-0}; metrics answered: $([[ -n "${text:-}" ]] && echo yes || echo no))"
    fi
    if [[ -n "$t0" ]]; then sleep "$POLL"; else sleep "$START_POLL"; fi
  done

  stop_fieldcrypt
  if ((STOP_RC != 0)); then
    log_tail "$FC_LOG"
    die "fieldcrypt exited with status $STOP_RC after SIGTERM ($mode round $round)"
  fi

  # Sanity checks on the final snapshot: nothing duplicated, the mode did what it says.
  local snap="$OUT/metrics-$name.txt" fields bin bout
  consumed="$(sum_metric fieldcrypt_records_consumed_total <"$snap")"
  produced="$(sum_metric fieldcrypt_records_produced_total <"$snap")"
  fields="$(sum_metric fieldcrypt_fields_total <"$snap")"
  bin="$(sum_metric fieldcrypt_bytes_consumed_total <"$snap")"
  bout="$(sum_metric fieldcrypt_bytes_produced_total <"$snap")"
  echo "   final: consumed $consumed, produced $produced, fields transformed $fields, bytes in $bin, bytes out $bout"
  if ((produced != RECORDS || consumed != RECORDS)); then
    echo "   WARNING: expected exactly $RECORDS consumed and produced (redelivery or a stale topic?)" >&2
  fi
  if [[ "$mode" == passthrough ]] && ((fields != 0)); then
    die "pass-through run transformed $fields fields"
  fi
  if [[ "$mode" == passthrough ]] && ((bin != bout)); then
    echo "   WARNING: pass-through changed the byte count ($bin -> $bout)" >&2
  fi
  if [[ "$mode" == encrypt ]] && ((fields == 0)); then
    die "encrypt run transformed no fields"
  fi

  local window=$((RECORDS - p0)) short=0
  if awk -v a="$t0" -v b="$t1" -v p="$POLL" 'BEGIN { exit !(b - a < 25 * p) }'; then
    echo "   WARNING: the measured window is shorter than 25 poll intervals (25 x ${POLL}s); its ends are uncertain by up to one interval each, so this run's numbers are rough (use more BENCH_RECORDS)" >&2
    short=1
  fi
  ((window > 0)) || die "$mode round $round: all records were produced before the clock started; use more BENCH_RECORDS"
  awk -v m="$mode" -v r="$round" -v n="$window" -v t0="$t0" -v t1="$t1" \
    -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v short="$short" 'BEGIN {
      s = t1 - t0; cpu = (c1 - c0) / hz
      if (s <= 0) s = 1e-9
      printf "%s\t%d\t%d\t%.3f\t%.0f\t%.2f\t%.2f\t%d\n", m, r, n, s, n / s, cpu, cpu / n * 1e6, short
    }' | tee -a "$RESULTS" | awk -F'\t' '{ printf "   %s records in %s s = %s records/s; CPU %s s = %s s per million\n", $3, $4, $5, $6, $7 }'
}

echo "== 4/5 $ROUNDS round(s) of encrypt, passthrough (timeout ${RUN_TIMEOUT}s per run)"
for ((r = 1; r <= ROUNDS; r++)); do
  for m in "${MODES[@]}"; do bench_run "$m" "$r"; done
done

echo "== 5/5 results ($RECORDS source records, 3 partitions, tansu in-memory on $BOOTSTRAP, $(nproc) CPUs)"
echo
awk -F'\t' 'NR == 1 {
    printf "%-12s %5s %9s %9s %10s %8s %12s\n", "mode", "round", "records", "seconds", "records/s", "CPU s", "CPU s/M rec"
    next
  }
  {
    printf "%-12s %5s %9s %9s %10s %8s %12s%s\n", $1, $2, $3, $4, $5, $6, $7, ($8 == 1 ? "  *" : "")
    if ($8 == 1) short++
  }
  END {
    if (short) printf "* window under 25 poll intervals (25 x %ss): rough numbers; use more BENCH_RECORDS\n", poll
  }' poll="$POLL" "$RESULTS"
echo
# Per mode: best (highest) records/s, median CPU s per million records; then ratios.
awk -F'\t' '
  NR == 1 { next }
  {
    if (!($1 in best) || $5 > best[$1]) best[$1] = $5
    n[$1]++; cpu[$1, n[$1]] = $7
  }
  function median(m,   k, i, j, t, a) {
    k = n[m]
    for (i = 1; i <= k; i++) a[i] = cpu[m, i]
    for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
  }
  END {
    printf "%-12s %16s %20s\n", "mode", "best records/s", "median CPU s/M rec"
    split("floor passthrough encrypt", ms, " ")
    for (i = 1; i <= 3; i++) {
      m = ms[i]
      if (!(m in best)) continue
      med[m] = median(m)
      printf "%-12s %16.0f %20.2f\n", m, best[m], med[m]
    }
    if (med["floor"] > 0) printf "\npassthrough / floor: CPU s per million records %.3f\n", med["passthrough"] / med["floor"]
    printf "\nencrypt / passthrough: records/s %.3f, CPU s per million records %.3f\n",
      best["encrypt"] / best["passthrough"], (med["passthrough"] > 0 ? med["encrypt"] / med["passthrough"] : 0)
  }' "$RESULTS"
echo
echo "commands used (cwd bench-out/):"
for c in "${COMMANDS[@]}"; do echo "  $c"; done
echo
echo "raw results: bench-out/results.tsv; configs, logs and final metrics per run: bench-out/"
