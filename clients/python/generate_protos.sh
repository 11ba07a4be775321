#!/usr/bin/env bash
# Generates the Python package wq.v1 (messages: *_pb2.py, stubs: *_pb2_grpc.py)
# from the protos with Debian's protoc and grpc_python_plugin, matching
# Debian's python3-protobuf and python3-grpcio.
#   usage: generate_protos.sh [PROTO_ROOT [OUT_DIR]]
# Defaults: the repository's proto/ and this folder, so that after one run
# `PYTHONPATH=clients/python /usr/bin/python3` imports wq.v1 and wq_client.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
proto_root=${1:-$here/../../proto}
out=${2:-$here}
mkdir -p "$out/wq/v1"
/usr/bin/protoc --proto_path="$proto_root" \
  --python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin --grpc_python_out="$out" \
  "$proto_root"/wq/v1/*.proto
# Regular packages rather than namespace ones: `wq` is ours alone.
touch "$out/wq/__init__.py" "$out/wq/v1/__init__.py"
