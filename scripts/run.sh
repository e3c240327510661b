#!/usr/bin/env bash
# `make run`: start the bot with whatever is configured, filling the gaps for a first try:
# no OPENAI_API_KEY → a local OpenAI sandbox; no TELOXIDE_TOKEN → a terminal chat.
set -euo pipefail
cd "$(dirname "$0")/.."

# A setting counts as given when the environment or .env has it (the binary reads .env itself).
given() {
  [[ -n "${!1:-}" ]] || { [[ -f .env ]] && grep -qE "^[[:space:]]*$1[[:space:]]*=[[:space:]]*[^[:space:]#]" .env; }
}

if ! given OPENAI_API_KEY; then
  log=$(mktemp)
  target/release/swapbot-sandbox --port 0 >"$log" 2>&1 &
  sandbox_pid=$!
  trap 'kill $sandbox_pid 2>/dev/null || true' EXIT INT TERM
  for _ in $(seq 1 100); do grep -q OPENAI_BASE_URL "$log" && break; sleep 0.05; done
  eval "$(grep '^export ' "$log")"
  export ASSISTANT_ID="${ASSISTANT_ID:-asst_sandbox}"
  echo "no OPENAI_API_KEY: answering from the local OpenAI sandbox at $OPENAI_BASE_URL (offline, deterministic)" >&2
fi
if ! given TELOXIDE_TOKEN; then
  echo "no TELOXIDE_TOKEN: opening a terminal chat through the same pipeline (router, plugins, storage, logs)" >&2
fi
# A first run shows retrieval working: an empty knowledge base is seeded from the sample.
export KB_SEED_DIR="${KB_SEED_DIR:-kb-sample}"
target/release/swapbot run
