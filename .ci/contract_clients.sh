#!/usr/bin/env bash
# The other-language clients of `make contract` against a live demo server: starts
# .ci/contract_server.py, runs the Node (TypeScript) example client against it, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.cache/contract/state.json
log=.cache/contract/server.log
mkdir -p .cache/contract
rm -f "$state"
.venv/bin/python .ci/contract_server.py "$state" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  [ -s "$state" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "the contract demo server exited; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.5
done
if [ ! -s "$state" ]; then
  echo "the contract demo server did not start within 120 s; its log:" >&2
  cat "$log" >&2
  exit 1
fi
node examples/node/dist/client.js "$state"
