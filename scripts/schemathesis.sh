#!/usr/bin/env bash
# The long schemathesis run against both OpenAPI documents (tests/real/test_openapi.py runs
# a short one): `clipperlab serve` on ephemeral loopback ports with no containers started
# (schemathesis registers models with random replica counts), then `schemathesis run` on
# /openapi.json of the query port and of the admin port with the four checks the suite
# uses.  501 and 503 are documented answers (a Triton call with nothing to act on,
# readiness); any other 5xx fails.  Usage: scripts/schemathesis.sh [MAX_EXAMPLES] (500).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-500}"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/deploy.toml" <<'TOML'
[server]
containers = "none"
grpc = false
TOML
cat > "$work/schemathesis.toml" <<'TOML'
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "501", "503"]
TOML
python3 -m clipperlab serve --config "$work/deploy.toml" --query-port 0 --admin-port 0 \
    --rpc-port 0 --store "$work/store" --ports-file "$work/ports.json" \
    --log-level ERROR >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$work/ports.json" ] && break; sleep 0.1; done
[ -s "$work/ports.json" ] || { cat "$work/serve.log"; exit 1; }
port() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ports"][sys.argv[2]])' \
        "$work/ports.json" "$1"
}
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
status=0
for which in query admin; do
    echo "== $which port"
    schemathesis --config-file "$work/schemathesis.toml" run \
        "http://127.0.0.1:$(port "$which")/openapi.json" \
        --checks "$checks" --max-examples "$n" --generation-deterministic || status=1
done
exit "$status"
