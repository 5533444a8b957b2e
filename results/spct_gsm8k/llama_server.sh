#!/usr/bin/env bash
# Serve the embedded judge's GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) with llama.cpp's
# OpenAI-compatible server, for collect and eval through the openai engine (ENGINE.md).
#
#   results/spct_gsm8k/llama_server.sh          # start (or find running); prints the base URL
#   results/spct_gsm8k/llama_server.sh stop     # stop the server this script started
#   grm-plugin eval ITEMS --config JUDGE.yaml ...   # engine {type: openai, base_url: URL,
#                                                   #   model: judge, concurrency: 1}
# concurrency 1: this server runs one request at a time; queued requests of a higher concurrency
# pass the 120 s request deadline and are retried (measured: 8 dropped tries in 6 judgments).
#
# Idempotent: a server already answering /v1/models on PORT is reused, not restarted. Installs
# llama-cpp-python[server] (pinned; compiles from source, ~10-20 min on 2 busy cores) if missing.
# Only the URL goes to stdout; everything else to stderr and $LOG.
# Env: PORT (8090), THREADS (1), N_CTX (4096), GGUF (the embedded judge), LOG, PIDFILE.
set -euo pipefail
LLAMA_CPP_VERSION=0.3.36
PORT=${PORT:-8090}
HOST=127.0.0.1
# 1 thread: on this shared, oversubscribed 2-core machine 2 threads ran 4-5x slower (ENGINE.md)
THREADS=${THREADS:-1}
N_CTX=${N_CTX:-4096}
RUN=${RUN_DIR:-${TMPDIR:-/tmp}/grm-llama-server-$PORT}
LOG=${LOG:-$RUN/server.log}
PIDFILE=${PIDFILE:-$RUN/server.pid}
URL="http://$HOST:$PORT/v1"
mkdir -p "$RUN"

up() { curl -sf -m 5 "$URL/models" > /dev/null 2>&1; }

if [[ ${1:-start} == stop ]]; then
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2> /dev/null; then
    kill "$(cat "$PIDFILE")" && echo "stopped server $(cat "$PIDFILE") on port $PORT" >&2
  else
    echo "no server of ours on port $PORT" >&2
  fi
  rm -f "$PIDFILE"
  exit 0
fi

if up; then
  echo "$URL"
  exit 0
fi

if ! python -c "import llama_cpp.server" 2> /dev/null; then
  echo "installing llama-cpp-python[server]==$LLAMA_CPP_VERSION (compiles llama.cpp)..." >&2
  CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=ON} \
    pip install "llama-cpp-python[server]==$LLAMA_CPP_VERSION" >> "$LOG" 2>&1 \
    || { echo "install failed; see $LOG" >&2; exit 1; }
fi

GGUF=${GGUF:-$(python -c "from grm_plugin.default_judge import default_judge_path as p; print(p())")}

# a server of ours still loading (started by an earlier call): wait for it, do not start another
if ! { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2> /dev/null; }; then
  echo "starting llama_cpp.server on $GGUF (log: $LOG)" >&2
  nohup python -m llama_cpp.server --model "$GGUF" --model_alias judge --host "$HOST" \
    --port "$PORT" --n_ctx "$N_CTX" --n_threads "$THREADS" --n_threads_batch "$THREADS" \
    >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
fi
for _ in $(seq 1 120); do
  if up; then
    echo "$URL"
    exit 0
  fi
  kill -0 "$(cat "$PIDFILE")" 2> /dev/null || { echo "server exited; see $LOG" >&2; exit 1; }
  sleep 1
done
echo "server not answering $URL/models after 120 s; see $LOG" >&2
exit 1
