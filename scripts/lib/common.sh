# Shell helpers of scripts/quickstart.sh (the benchmarks and the load test are
# Rust: cargo xtask); sourced, not run. The sourcing script sets SCRIPT_NAME (for messages) and
# declares COMMANDS=() (every command line it ran, for its summary).

die() {
  echo "$SCRIPT_NAME: $*" >&2
  exit 1
}

# Prints the last 40 lines of a log file to stderr, if it has any.
log_tail() {
  if [[ -s "$1" ]]; then
    echo "---- last lines of $1 ----" >&2
    tail -n 40 "$1" >&2
    echo "----" >&2
  fi
}

# Records a command line (shell-quoted) for the summary and echoes it.
note_cmd() {
  local line
  line="$(printf '%q ' "$@")"
  line="${line% }"
  COMMANDS+=("$line")
  echo "+ $line"
}

# Runs a command after recording it.
run() {
  note_cmd "$@"
  "$@"
}
