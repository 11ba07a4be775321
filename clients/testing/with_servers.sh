#!/usr/bin/env bash
# Runs a client test command against the real servers, all on 127.0.0.1 with
# port 0: quantizer_service, inference_service, and a second inference_service
# with --max_running=1 --max_queued=0 (one slot, no waiting line: a request is
# served only once the previous one has given its slot back). They share a
# scratch model root holding stories260K and stories260K-chat (the same model
# with a chat template) and a scratch artifact root.
# The command finds them in WQ_QUANTIZER, WQ_INFERENCE and WQ_INFERENCE_ONE_SLOT;
# afterwards each server is stopped with SIGTERM and must exit 0.
#   usage (as a Bazel sh_test): with_servers.sh COMMAND [ARGS...]
set -euo pipefail

runfiles=${TEST_SRCDIR:?run under bazel test}
scratch=$(mktemp -d "${TEST_TMPDIR:-/tmp}/servers.XXXXXX")
models=$scratch/models
mkdir -p "$models" "$scratch/artifacts"

# Copies, not the runfiles' symlinks: the servers refuse paths leaving their roots.
cp -rL "$runfiles/shared/models/stories260K" "$models/stories260K"
cp -rL "$models/stories260K" "$models/stories260K-chat"
chmod -R u+w "$models"
cat >"$models/stories260K-chat/tokenizer_config.json" <<'JSON'
{"bos_token": "<s>", "eos_token": "</s>",
 "chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"}
JSON

roots=(--model_root="$models" --artifact_root="$scratch/artifacts" --threads=2)
declare -A pids

start() {  # NAME BINARY [FLAGS...]
  local name=$1 binary=$2
  shift 2
  "$binary" --listen=127.0.0.1:0 --port_file="$scratch/$name.port" "${roots[@]}" "$@" \
    2>"$scratch/$name.log" &
  pids[$name]=$!
}

address() {  # NAME: prints 127.0.0.1:PORT once the server has written its port file
  local name=$1 port
  for _ in $(seq 300); do
    port=$(cat "$scratch/$name.port" 2>/dev/null || true)
    if [[ $port =~ ^[0-9]+$ ]] && ((port > 0)); then
      echo "127.0.0.1:$port"
      return
    fi
    if ! kill -0 "${pids[$name]}" 2>/dev/null; then
      echo "$name exited early:" >&2
      cat "$scratch/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$name wrote no port file in 30 s:" >&2
  cat "$scratch/$name.log" >&2
  return 1
}

stop_all() {  # SIGTERM each server; fails unless every one exits 0
  local failed=0 name status
  for name in "${!pids[@]}"; do kill -TERM "${pids[$name]}" 2>/dev/null || true; done
  for name in "${!pids[@]}"; do
    status=0
    wait "${pids[$name]}" || status=$?
    if ((status != 0)); then
      echo "$name exited with status $status on SIGTERM; log:" >&2
      cat "$scratch/$name.log" >&2
      failed=1
    fi
  done
  pids=()
  return $failed
}
trap 'stop_all || true' EXIT

start quantizer "$runfiles/wq/quantizer_service/quantizer_service"
start inference "$runfiles/wq/inference_service/inference_service" --max_new_tokens_cap=256
start inference_one_slot "$runfiles/wq/inference_service/inference_service" \
  --max_running=1 --max_queued=0
WQ_QUANTIZER=$(address quantizer)
WQ_INFERENCE=$(address inference)
WQ_INFERENCE_ONE_SLOT=$(address inference_one_slot)
export WQ_QUANTIZER WQ_INFERENCE WQ_INFERENCE_ONE_SLOT

status=0
"$@" || status=$?
if ((status != 0)); then
  for name in "${!pids[@]}"; do
    echo "---- $name log ----" >&2
    cat "$scratch/$name.log" >&2
  done
fi
stop_all || status=1
exit $status
