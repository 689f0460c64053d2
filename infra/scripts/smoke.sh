#!/usr/bin/env bash
# Post-deploy smoke test of a deployed stack: the operator runbook's checklist
# over HTTP, against the API URL only. Not part of the test suite (it needs a
# live deployment and a real user token); see infra/DEPLOY.md.
#
#   API_URL=https://abc123.execute-api.us-east-1.amazonaws.com \
#   TOKEN=<a user ID token from the pool> \
#   [TEAM_GATEWAY=yes|no] [STACK_NAME=byok-gateway-dev] \
#   [STREAMING_API_URL=https://def456.execute-api.us-east-1.amazonaws.com/dev] \
#   [SMOKE_COMPLETION_MODEL=gpt-4o-mini [SMOKE_OPENAI_KEY=sk-...]] \
#   infra/scripts/smoke.sh
#
# TEAM_GATEWAY says whether the stack has a team gateway secret
# (TeamGatewayKeySecretArn); if unset and STACK_NAME is set, it is read from
# the stack's parameters with the AWS CLI; if still unknown, either outcome
# of the team fallback step is accepted and reported.
#
# The streaming REST API (POST /v1/chat/completions; stack output
# StreamingApiUrl, read from the stack when STACK_NAME is set) gets its own
# steps: refused without a token, 404 off its one route, 403 when no
# credential may pay (no upstream call in any of these). TOKEN must then be
# an ID token: the REST API's Cognito authorizer takes no access tokens. A
# real streamed completion runs only with SMOKE_COMPLETION_MODEL set: it
# calls the upstream (a few tokens, max_tokens 16) with SMOKE_OPENAI_KEY
# stored as the user's openai key for that step (never printed; deleted
# after), else with the stack's team credential (consent turned on for the
# step, then put back).
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
  echo "(TOKEN: e.g. the IdToken from 'aws cognito-idp initiate-auth'; the streaming API needs an ID token)" >&2
  exit 2
fi
check_url() {
  case "$2" in
    https://*) ;;
    http://*)
      if [ "${SMOKE_ALLOW_HTTP:-}" != 1 ]; then
        echo "$1 must be https (set SMOKE_ALLOW_HTTP=1 for a local byok-local)" >&2
        exit 2
      fi ;;
    *) echo "$1 must be an http(s) URL" >&2; exit 2 ;;
  esac
}
API_URL=${API_URL%/}
check_url API_URL "$API_URL"
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }

# The streaming REST API: given, or the stack's StreamingApiUrl output.
STREAMING_API_URL=${STREAMING_API_URL:-}
if [ -z "$STREAMING_API_URL" ] && [ -n "${STACK_NAME:-}" ] && command -v aws >/dev/null; then
  STREAMING_API_URL=$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='StreamingApiUrl'].OutputValue" \
    --output text 2>/dev/null || true)
  [ "$STREAMING_API_URL" = None ] && STREAMING_API_URL=""
fi
STREAMING_API_URL=${STREAMING_API_URL%/}
[ -z "$STREAMING_API_URL" ] || check_url STREAMING_API_URL "$STREAMING_API_URL"
SMOKE_COMPLETION_MODEL=${SMOKE_COMPLETION_MODEL:-}
SMOKE_OPENAI_KEY=${SMOKE_OPENAI_KEY:-}

WORK=$(mktemp -d)
chmod 700 "$WORK"
HDR="$WORK/auth.header"
(umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" > "$HDR")
unset TOKEN
BODY="$WORK/body.json"
HEADERS="$WORK/headers.txt"

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

# stream_call PATH [JSON BODY] [noauth] -> POST to the streaming API; sets
# STATUS, TIMES ("first-byte total" seconds); body in $BODY, headers in $HEADERS.
stream_call() {
  local args=(-sS -N --max-time 120 -o "$BODY" -D "$HEADERS"
    -w '%{http_code} %{time_starttransfer} %{time_total}' -X POST)
  [ "${3:-}" = noauth ] || args+=(-H @"$HDR")
  if [ -n "${2:-}" ]; then
    args+=(-H 'Content-Type: application/json' -H 'Accept: text/event-stream' --data-binary "$2")
  fi
  local out
  out=$(curl "${args[@]}" "$STREAMING_API_URL$1" 2>"$WORK/curl.err") || out="curl-error: $(head -c 200 "$WORK/curl.err")"
  STATUS=${out%% *}
  TIMES=${out#* }
}
# header NAME -> the value of a response header of the last stream_call
header() { grep -i "^$1:" "$HEADERS" 2>/dev/null | tail -1 | cut -d: -f2- | tr -d ' \r' || true; }

# Fake keys, unique per run; also canaries: no response may contain them.
RUN=$(date +%s)$$
GATEWAY_KEY="vck_smoke_${RUN}_0000000001"
OPENAI_KEY="sk-proj-smoke_${RUN}_00000001"
no_key_in_body() {
  if grep -qF -e "$GATEWAY_KEY" -e "$OPENAI_KEY" "$BODY" ||
     { [ -n "$SMOKE_OPENAI_KEY" ] && grep -qF -e "$SMOKE_OPENAI_KEY" "$BODY"; }; then
    fail "$1" "the response contains a stored key in clear"
  fi
}
CHAT_BODY='{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hi."}]}'

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
[ -z "$STREAMING_API_URL" ] || echo "streaming API: $STREAMING_API_URL"

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

# 5b. The streaming REST API, still with no user key and consent off: the
# authorizer, the route and the function answer, and no upstream is called.
if [ -n "$STREAMING_API_URL" ]; then
  stream_call /v1/chat/completions "$CHAT_BODY" noauth
  code=$(json_get "$BODY" .error.code)
  if [ "$STATUS" = 401 ] && [ "$code" = unauthorized ]; then
    pass "streaming: POST /v1/chat/completions without a token (401 unauthorized)"
  else
    fail "streaming: POST /v1/chat/completions without a token" "expected 401 unauthorized, got $(got)"
  fi
  stream_call /v1/nope "$CHAT_BODY"
  code=$(json_get "$BODY" .error.code)
  if [ "$STATUS" = 404 ] && [ "$code" = not_found ]; then
    pass "streaming: an unknown route (404 not_found)"
  else
    fail "streaming: an unknown route" "expected 404 not_found, got $(got)"
  fi
  stream_call /v1/chat/completions "$CHAT_BODY"
  code=$(json_get "$BODY" .error.code)
  step="streaming: POST /v1/chat/completions, consent off"
  if [ "$STATUS" = 403 ] && { [ "$code" = consent_required ] || [ "$code" = no_credential ]; }; then
    pass "$step (403 $code: token, stage path and function OK)"
  elif [ "$STATUS" = 401 ]; then
    fail "$step" "401: the REST API's Cognito authorizer refused the token (an ID token of the UserPoolArn pool is needed, not an access token)"
  else
    fail "$step" "expected 403 consent_required or no_credential, got $(got)"
  fi
fi

# 6. Consent back as it was (true unless the user had turned it off).
call POST /api/user-settings "{\"allowGatewayFallback\":$ORIGINAL_CONSENT}"
expect_status "POST /api/user-settings restore consent $ORIGINAL_CONSENT" 200 && CONSENT_CHANGED=""

# 7. A real streamed completion (calls the upstream; only when asked for).
if [ -n "$STREAMING_API_URL" ] && [ -n "$SMOKE_COMPLETION_MODEL" ]; then
  if [ -n "$SMOKE_OPENAI_KEY" ]; then
    CREATED="$CREATED openai"
    call POST /api/keys "{\"service\":\"openai\",\"apiKey\":\"$SMOKE_OPENAI_KEY\"}"
    expect_status "POST /api/keys openai (SMOKE_OPENAI_KEY)" 201 200 || true
    want_path=user-provider
  else
    CONSENT_CHANGED=1
    call POST /api/user-settings '{"allowGatewayFallback":true}'
    expect_status "POST /api/user-settings consent true (team credential)" 200 || true
    want_path=team-
  fi
  stream_call /v1/chat/completions "{\"model\":\"$SMOKE_COMPLETION_MODEL\",\"stream\":true,\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Say hi.\"}]}"
  step="streaming: a streamed completion of $SMOKE_COMPLETION_MODEL"
  path=$(header x-byok-path)
  ctype=$(header content-type)
  last=$(grep -v '^[[:space:]]*$' "$BODY" 2>/dev/null | tail -1 | tr -d '\r' || true)
  if [ "$STATUS" = 200 ] && [ "${ctype%%;*}" = text/event-stream ] && [ "${path#"$want_path"}" != "$path" ] &&
     grep -q '"chat.completion.chunk"' "$BODY" && [ "$last" = "data: [DONE]" ]; then
    pass "$step (path $path, provider $(header x-byok-provider); first byte/total ${TIMES/ /s \/ }s)"
  else
    fail "$step" "expected 200 text/event-stream, x-byok-path $want_path*, chunks and data: [DONE]; got $(got) (content-type $ctype, path $path)"
  fi
  no_key_in_body "$step"
  if [ -n "$SMOKE_OPENAI_KEY" ]; then
    call DELETE /api/keys/openai
    expect_status "DELETE /api/keys/openai" 204 && CREATED=${CREATED% openai}
  else
    call POST /api/user-settings "{\"allowGatewayFallback\":$ORIGINAL_CONSENT}"
    expect_status "POST /api/user-settings restore consent $ORIGINAL_CONSENT" 200 && CONSENT_CHANGED=""
  fi
fi

# 7. The usage ledger: the caller's own report answers (any completion
# above is in it), and the operator's report is refused to a non-admin.
call GET "/api/usage?groupBy=path"
if [ "$STATUS" = 200 ] && [ -n "$(json_get "$BODY" .totals.requests)" ]; then
  pass "GET /api/usage ($(json_get "$BODY" .totals.requests) request(s) in the last 30 days)"
else
  fail "GET /api/usage" "expected 200 with totals, got $(got)"
fi
call GET "/api/usage?from=2026-02-30"
expect_status "GET /api/usage with a bad day (400)" 400
call GET "/api/usage/requests?limit=5"
expect_status "GET /api/usage/requests (the caller's recent attempts)" 200
call GET "/api/admin/usage?groupBy=user"
expect_status "GET /api/admin/usage (403 for a non-admin, 200 for an admin)" 403 200

# 8. Budgets: the caller's view answers (an empty list when none applies),
# and the operator's list is refused to a non-admin.
call GET "/api/budget"
if [ "$STATUS" = 200 ] && [ -n "$(json_get "$BODY" .budgets)" ]; then
  pass "GET /api/budget"
else
  fail "GET /api/budget" "expected 200 with budgets, got $(got)"
fi
call GET "/api/admin/budgets?limit=1"
expect_status "GET /api/admin/budgets (403 for a non-admin, 200 for an admin)" 403 200

# 9. Personal API keys: made (shown once), usable on /v1/models as the
# user, refused on /api/keys, refused once revoked. The key is never printed.
call POST /api/tokens '{"name":"smoke test","expiresInDays":1}'
if expect_status "POST /api/tokens" 201; then
  TOKEN_ID=$(json_get "$BODY" .id)
  PERSONAL_KEY=$(json_get "$BODY" .key)
  : >"$BODY"
  with_key() {  # METHOD PATH -> STATUS, the personal key as bearer (in a private header file)
    printf 'Authorization: Bearer %s\n' "$PERSONAL_KEY" >"$WORK/key-header"
    STATUS=$(curl -sS --max-time 30 -o "$BODY" -w '%{http_code}' -H @"$WORK/key-header" -X "$1" "$API_URL$2" \
      2>"$WORK/curl.err") || STATUS="curl-error"
    rm -f "$WORK/key-header"
  }
  with_key GET /v1/models
  expect_status "GET /v1/models with a personal API key" 200
  with_key GET /api/keys
  expect_status "GET /api/keys with a personal API key (401)" 401
  call DELETE "/api/tokens/$TOKEN_ID"
  expect_status "DELETE /api/tokens/{id}" 204
  with_key GET /v1/models
  expect_status "GET /v1/models with the revoked key (401)" 401
  PERSONAL_KEY=""
fi

echo
if [ "$FAILED" -gt 0 ]; then
  echo "smoke test FAILED: $FAILED step(s)"
  exit 1
fi
echo "smoke test PASSED"
