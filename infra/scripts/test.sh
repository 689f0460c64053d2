#!/usr/bin/env bash
# The whole test suite, from a fresh clone: lints, offline checks of the API
# description and the SAM template, then every Rust test (unit, store
# contract, end-to-end against the real byok-local binary).
# Installs what it needs (Python tools into target/py); fails loudly if it cannot.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n==> %s\n' "$*"; }

step "tools: Python virtualenv with the offline checkers"
PY_ENV=target/py
if [ ! -x "$PY_ENV/bin/python" ]; then
  python3 -m venv "$PY_ENV"
fi
"$PY_ENV/bin/pip" install --quiet --disable-pip-version-check -r infra/scripts/requirements-test.txt

step "tools: the real clients the end-to-end tests drive (openai SDK above, Vercel AI SDK from npm)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node and npm are needed (Node 18 or newer) for tests/clients/node; install Node.js" >&2
  exit 1
fi
# Exact versions from tests/clients/node/package-lock.json (`ai` 6 and
# `@ai-sdk/openai-compatible` 2: Node 18 or newer).
npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error
export BYOK_TEST_PYTHON="$PWD/$PY_ENV/bin/python" BYOK_TEST_NODE_CLIENT_DIR="$PWD/tests/clients/node"

step "tools: a headless browser for the console's tests (the system's Chromium, driven by puppeteer-core)"
if [ -z "${BYOK_TEST_CHROMIUM:-}" ]; then
  for candidate in chromium chromium-browser; do
    if command -v "$candidate" >/dev/null; then
      BYOK_TEST_CHROMIUM="$(command -v "$candidate")"
      break
    fi
  done
fi
if [ -z "${BYOK_TEST_CHROMIUM:-}" ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
      || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    BYOK_TEST_CHROMIUM="$(command -v chromium)"
  else
    echo "Chromium is needed for the console's browser test: install it, or set BYOK_TEST_CHROMIUM" >&2
    exit 1
  fi
fi
export BYOK_TEST_CHROMIUM
echo "browser: $BYOK_TEST_CHROMIUM"

step "format"
cargo fmt --all -- --check
# Provider modules are declared by shared/build.rs, out of cargo fmt's sight.
find shared/src/domain/provider -name '*.rs' ! -name mod.rs -print0 \
  | xargs -0 rustfmt --edition 2024 --check

step "lint"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

step "OpenAPI description is valid OpenAPI 3.1"
"$PY_ENV/bin/openapi-spec-validator" infra/openapi.json

if [ -f infra/scripts/check_template.py ]; then
  step "SAM template: transform offline and cfn-lint the result"
  "$PY_ENV/bin/python" infra/scripts/check_template.py template.yaml
fi

step "build binaries (the end-to-end tests run them)"
cargo build --workspace --bins --quiet

step "local AWS API emulator: moto_server on 127.0.0.1 (stopped by pid on exit)"
MOTO_PORT=$("$PY_ENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY_ENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true' EXIT
if ! "$PY_ENV/bin/python" - "$MOTO_PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/moto-api/"
for _ in range(150):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PY
then
  echo "moto_server did not start; its log:" >&2
  cat target/moto.log >&2
  exit 1
fi
export BYOK_TEST_AWS_ENDPOINT="http://127.0.0.1:$MOTO_PORT" AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

step "tests"
log=target/test-output.log
set +e
cargo test --workspace --all-features --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, s; if (p == 0) exit 1 }' "$log"
exit "$status"
