#!/usr/bin/env bash
# Post-deploy smoke test of a deployed stack: the operator runbook's checklist
# over HTTP, against the API URL only. Not part of the test suite (it needs a
# live deployment and a real user token); see infra/DEPLOY.md.
#
#   API_URL=https://abc123.execute-api.us-east-1.amazonaws.com \
#   TOKEN=<a user JWT from the pool> \
#   [TEAM_GATEWAY=yes|no] [STACK_NAME=byok-gateway-dev] \
#   infra/scripts/smoke.sh
#
# TEAM_GATEWAY says whether the stack has a team gateway secret
# (TeamGatewayKeySecretArn); if unset and STACK_NAME is set, it is read from
# the stack's parameters with the AWS CLI; if still unknown, either outcome
# of the team fallback step is accepted and reported.
#
# Use a dedicated test user: the script refuses to run if that user already
# has a gateway or openai key (it would replace them). It stores fake keys
# (no upstream is ever called), deletes them again, and puts the user's
# allowGatewayFallback setting back as it found it. The token is never
# printed and is passed to curl in a private header file, not on its command
# line. Prints PASS/FAIL per step; exits non-zero if any step failed.
set -euo pipefail

if [ -z "${API_URL:-}" ] || [ -z "${TOKEN:-}" ]; then
  echo "usage: API_URL=https://<api-id>.execute-api.<region>.amazonaws.com TOKEN=<user JWT> $0" >&2
  echo "(TOKEN: e.g. the IdToken or AccessToken from 'aws cognito-idp initiate-auth')" >&2
  exit 2
fi
API_URL=${API_URL%/}
case "$API_URL" in
  https://*) ;;
  http://*)
    if [ "${SMOKE_ALLOW_HTTP:-}" != 1 ]; then
      echo "API_URL must be https (set SMOKE_ALLOW_HTTP=1 for a local byok-local)" >&2
      exit 2
    fi ;;
  *) echo "API_URL must be an http(s) URL" >&2; exit 2 ;;
esac
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }

WORK=$(mktemp -d)
chmod 700 "$WORK"
HDR="$WORK/auth.header"
(umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" > "$HDR")
unset TOKEN
BODY="$WORK/body.json"

# ------------------------------------------------------------- helpers ----

if command -v jq >/dev/null; then
  # json_get FILE .a.b  -> the value as text (false included), empty if absent
  json_get() { jq -r "($2) | select(. != null)" "$1" 2>/dev/null || true; }
  # has_key FILE service -> 0 if {"keys":[...]} lists the service
  has_key() { jq -e --arg s "$2" 'any(.keys[]?; .service == $s)' "$1" >/dev/null 2>&1; }
else
  command -v python3 >/dev/null || { echo "jq or python3 is required" >&2; exit 2; }
  json_get() {
    python3 - "$1" "$2" <<'PY' 2>/dev/null || true
import json, sys
try:
    v = json.load(open(sys.argv[1]))
    for part in sys.argv[2].strip(".").split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if v is not None:
        print(json.dumps(v) if isinstance(v, (bool, dict, list)) else v)
except Exception:
    pass
PY
  }
  has_key() {
    python3 - "$1" "$2" <<'PY' 2>/dev/null
import json, sys
keys = json.load(open(sys.argv[1])).get("keys", [])
sys.exit(0 if any(k.get("service") == sys.argv[2] for k in keys) else 1)
PY
  }
fi

# call METHOD PATH [JSON BODY] -> sets STATUS, response body in $BODY
call() {
  local args=(-sS --max-time 30 -o "$BODY" -w '%{http_code}' -H @"$HDR" -X "$1")
  if [ $# -ge 3 ]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$3")
  fi
  STATUS=$(curl "${args[@]}" "$API_URL$2" 2>"$WORK/curl.err") || STATUS="curl-error: $(head -c 200 "$WORK/curl.err")"
}

FAILED=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s: %s\n' "$1" "$2"; FAILED=$((FAILED + 1)); }
# The response, for a failure message: at most 300 characters.
got() { printf 'HTTP %s %s' "$STATUS" "$(head -c 300 "$BODY" 2>/dev/null | tr -d '\n')"; }

# expect_status STEP CODE...
expect_status() {
  local step=$1; shift
  for code in "$@"; do
    if [ "$STATUS" = "$code" ]; then pass "$step"; return 0; fi
  done
  fail "$step" "expected HTTP $*, got $(got)"
  return 1
}

# expect_path STEP MODEL PATH [PROVIDER]
expect_path() {
  call GET "/api/resolve?model=$2"
  local path provider
  path=$(json_get "$BODY" .path)
  provider=$(json_get "$BODY" .provider)
  if [ "$STATUS" = 200 ] && [ "$path" = "$3" ] && { [ -z "${4:-}" ] || [ "$provider" = "$4" ]; }; then
    pass "$1 (path $path, provider $provider)"
  else
    fail "$1" "expected path $3${4:+ provider $4}, got $(got)"
  fi
}

# Fake keys, unique per run; also canaries: no response may contain them.
RUN=$(date +%s)$$
GATEWAY_KEY="vck_smoke_${RUN}_0000000001"
OPENAI_KEY="sk-proj-smoke_${RUN}_00000001"
no_key_in_body() {
  if grep -qF -e "$GATEWAY_KEY" -e "$OPENAI_KEY" "$BODY"; then
    fail "$1" "the response contains a stored key in clear"
  fi
}

# What this run changed, so that an interrupted run still leaves the user
# as it found them (and never touches what it did not create).
CREATED=""
ORIGINAL_CONSENT=""
CONSENT_CHANGED=""
cleanup() {
  local service
  for service in $CREATED; do
    curl -sS --max-time 15 -o /dev/null -H @"$HDR" -X DELETE "$API_URL/api/keys/$service" 2>/dev/null || true
  done
  if [ -n "$CONSENT_CHANGED" ]; then
    curl -sS --max-time 15 -o /dev/null -H @"$HDR" -H 'Content-Type: application/json' \
      --data-binary "{\"allowGatewayFallback\":$ORIGINAL_CONSENT}" "$API_URL/api/user-settings" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Does the stack have a team gateway key?
TEAM_GATEWAY=${TEAM_GATEWAY:-}
if [ -z "$TEAM_GATEWAY" ] && [ -n "${STACK_NAME:-}" ] && command -v aws >/dev/null; then
  arn=$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query "Stacks[0].Parameters[?ParameterKey=='TeamGatewayKeySecretArn'].ParameterValue" \
    --output text 2>/dev/null || true)
  case "$arn" in
    arn:*) TEAM_GATEWAY=yes ;;
    ""|None) TEAM_GATEWAY=no ;;
  esac
fi
echo "smoke test of $API_URL (team gateway: ${TEAM_GATEWAY:-unknown})"

# --------------------------------------------------------------- steps ----

# 0. Token accepted, and the user is safe to test with.
call GET /api/keys
if [ "$STATUS" != 200 ]; then
  fail "GET /api/keys with the token" "$(got)"
  echo "stopping: the token is not accepted (expired, wrong pool or audience?)"
  exit 1
fi
if has_key "$BODY" gateway || has_key "$BODY" openai; then
  echo "refusing: this user already has a gateway or openai key; use a dedicated test user" >&2
  exit 2
fi
pass "GET /api/keys (token accepted, no keys in the way)"

call GET /api/user-settings
ORIGINAL_CONSENT=$(json_get "$BODY" .allowGatewayFallback)
case "$ORIGINAL_CONSENT" in true|false) ;; *) ORIGINAL_CONSENT=true ;; esac
expect_status "GET /api/user-settings" 200 || true

# 1. Providers.
call GET /api/providers
expect_status "GET /api/providers" 200 || true

# 2. A user gateway key -> user-gateway.
CREATED="gateway"
call POST /api/keys "{\"service\":\"gateway\",\"apiKey\":\"$GATEWAY_KEY\"}"
expect_status "POST /api/keys gateway" 201 200 || true
no_key_in_body "POST /api/keys gateway"
expect_path "resolve with a user gateway key" openai/gpt-4o-mini user-gateway gateway
call GET /api/keys
no_key_in_body "GET /api/keys (masked)"
call DELETE /api/keys/gateway
expect_status "DELETE /api/keys/gateway" 204 && CREATED=""

# 3. A user OpenAI key -> user-provider.
CREATED="$CREATED openai"
call POST /api/keys "{\"service\":\"openai\",\"apiKey\":\"$OPENAI_KEY\"}"
expect_status "POST /api/keys openai" 201 200 || true
no_key_in_body "POST /api/keys openai"
expect_path "resolve with a user openai key" gpt-4o-mini user-provider openai
call DELETE /api/keys/openai
expect_status "DELETE /api/keys/openai" 204 && CREATED=${CREATED% openai}

# 4. No user keys, consent on -> team-gateway if the stack has one.
CONSENT_CHANGED=1
call POST /api/user-settings '{"allowGatewayFallback":true}'
expect_status "POST /api/user-settings consent true" 200 || true
call GET "/api/resolve?model=gpt-4o-mini"
path=$(json_get "$BODY" .path)
code=$(json_get "$BODY" .error.code)
step="resolve with consent on"
case "$TEAM_GATEWAY:$STATUS:$path$code" in
  yes:200:team-gateway) pass "$step (team-gateway)" ;;
  no:403:no_credential) pass "$step (no_credential: no team key)" ;;
  no:200:team-provider) pass "$step (team-provider: an operator provider key)" ;;
  :200:team-gateway | :200:team-provider | :403:no_credential) pass "$step ($path$code)" ;;
  *) fail "$step" "team gateway ${TEAM_GATEWAY:-unknown}, got $(got)" ;;
esac

# 5. Consent off -> 403 consent_required (or no_credential without team keys).
call POST /api/user-settings '{"allowGatewayFallback":false}'
expect_status "POST /api/user-settings consent false" 200 || true
call GET "/api/resolve?model=gpt-4o-mini"
code=$(json_get "$BODY" .error.code)
step="resolve with consent off"
if [ "$STATUS" = 403 ] && { [ "$code" = consent_required ] || { [ "$code" = no_credential ] && [ "$TEAM_GATEWAY" != yes ]; }; }; then
  pass "$step (403 $code)"
else
  want="403 consent_required"
  [ "$TEAM_GATEWAY" = yes ] || want="$want or no_credential"
  fail "$step" "expected $want, got $(got)"
fi

# 6. Consent back as it was (true unless the user had turned it off).
call POST /api/user-settings "{\"allowGatewayFallback\":$ORIGINAL_CONSENT}"
expect_status "POST /api/user-settings restore consent $ORIGINAL_CONSENT" 200 && CONSENT_CHANGED=""

echo
if [ "$FAILED" -gt 0 ]; then
  echo "smoke test FAILED: $FAILED step(s)"
  exit 1
fi
echo "smoke test PASSED"
