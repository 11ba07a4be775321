#!/usr/bin/env bash
# Starts the real inference_service with its HTTP listener and runs the
# official OpenAI Node SDK against it (tests/openai_sdk/sdk_test.mjs).
# node_modules comes from `npm ci` in tests/openai_sdk (scripts/setup).
set -euo pipefail

runfiles="${TEST_SRCDIR:?run under bazel test}/wq"
# Runfiles are symlinks into the source tree, where npm installed the SDK.
sdk_dir="$(dirname "$(readlink -f "$runfiles/tests/openai_sdk/package.json")")"
if [[ ! -d "$sdk_dir/node_modules/openai" ]]; then
  echo "no OpenAI SDK in $sdk_dir/node_modules: run scripts/setup" >&2
  exit 1
fi

work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/openai_sdk.XXXXXX")"
mkdir -p "$work/models/openai-chat"
cp -rL "$runfiles/testdata/models/stories260K" "$work/models/"
for f in config.json model.safetensors tokenizer.model; do
  cp -L "$runfiles/testdata/models/stories260K/$f" "$work/models/openai-chat/"
done
# A template that joins the contents: a chat about a prompt generates what
# its completion does.
cat > "$work/models/openai-chat/tokenizer_config.json" <<'JSON'
{"bos_token": "<s>", "eos_token": "</s>",
 "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}
JSON

"$runfiles/inference_service/inference_service" \
  --model_root="$work/models" --artifact_root="$work/artifacts" --threads=2 \
  --listen=127.0.0.1:0 --port_file="$work/grpc.port" \
  --http_listen=127.0.0.1:0 --http_port_file="$work/http.port" \
  --preload=stories260K,openai-chat 2>"$work/server.log" &
server=$!
trap 'kill -KILL "$server" 2>/dev/null || true; echo "---- server log ----"; cat "$work/server.log"' EXIT

for _ in $(seq 600); do
  [[ -s "$work/grpc.port" ]] && break
  kill -0 "$server" 2>/dev/null || { echo "inference_service exited early" >&2; exit 1; }
  sleep 0.1
done
[[ -s "$work/grpc.port" ]] || { echo "inference_service wrote no port file" >&2; exit 1; }

WQ_OPENAI_BASE_URL="http://127.0.0.1:$(cat "$work/http.port")/v1" \
  /usr/bin/node --test "$sdk_dir/sdk_test.mjs"

# A clean shutdown is part of the contract.
kill -TERM "$server"
wait "$server"
trap - EXIT
