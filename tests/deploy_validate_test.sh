#!/usr/bin/env bash
# deploy/: manifests against the Kubernetes schemas, the conventions lint,
# flags against the binaries' --helpfull, the Dockerfile against
# scripts/setup (deploy/validate/validate.mjs). node_modules is installed in
# the source tree by scripts/setup; runfiles link into it.
set -euo pipefail
runfiles="$TEST_SRCDIR/wq"
validate=$(dirname "$(readlink -f "$runfiles/deploy/validate/package.json")")
root=$(readlink -f "$validate/../..")
if [[ ! -d "$validate/node_modules/kubernetes-models" ]]; then
  echo "deploy/validate/node_modules is missing: run scripts/setup" >&2
  exit 1
fi
exec /usr/bin/node "$validate/validate.mjs" "$root" \
  "$runfiles/quantizer_service/quantizer_service" "$runfiles/inference_service/inference_service"
