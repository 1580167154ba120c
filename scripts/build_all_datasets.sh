#!/usr/bin/env bash
# Build the five MergeBench domain datasets and the evaluation repo, optionally pushing them to the Hub.
#
# Usage:
#   scripts/build_all_datasets.sh [--out DIR] [--push-org ORG] [--private] [--fixtures]
#
#   --out DIR       where to write the dataset folders (default: build/datasets); each run replaces them
#   --push-org ORG  push to ORG/mergebench-{instruction,math,multilingual,coding,safety} and ORG/mergebench-eval
#   --private       create pushed repos as private
#   --fixtures      offline: serve the fixture sources (real schemas, planted duplicates/overlaps) from a
#                   loopback Hub under their real repo ids and build against it; pushes go to that loopback Hub
#
# Online, the sources are read from huggingface.co at `main`, resolved to commits that each card records; log in
# first (`hf auth login`) and accept the gated datasets' terms (WildGuardMix, WildJailbreak). Pin revisions for a
# rebuild by calling `mergebench data build DOMAIN --source-revision KEY=SHA` directly (the shas are in each
# card's `mergebench.sources` and in `mergebench_build.json`).
#
# Environment: MERGEBENCH, the CLI to run (default: `.venv/bin/mergebench` when present, else `mergebench`).
set -euo pipefail

OUT=build/datasets
ORG=""
PRIVATE=()
FIXTURES=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --push-org) ORG="$2"; shift 2 ;;
    --private) PRIVATE=(--private); shift ;;
    --fixtures) FIXTURES=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "Unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$HERE/.venv/bin/mergebench" ]]; then MERGEBENCH="${MERGEBENCH:-$HERE/.venv/bin/mergebench}"; fi
MERGEBENCH="${MERGEBENCH:-mergebench}"
DOMAINS=(instruction math multilingual coding safety)
mkdir -p "$OUT"

if [[ $FIXTURES -eq 1 ]]; then
  # Serve the fixture sources from a loopback Hub (our own background process, stopped on exit) and point the
  # client at it, with a private cache: fixtures use the real repo ids and must never mix with a real Hub cache.
  HUB_ROOT="$OUT/loopback-hub"
  $MERGEBENCH data fixtures "$HUB_ROOT" >/dev/null
  $MERGEBENCH hub serve "$HUB_ROOT" --port 0 2>"$OUT/loopback-hub.log" &
  HUB_PID=$!
  trap 'kill "$HUB_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    ENDPOINT="$(sed -n 's/.*export HF_ENDPOINT=\(http[^ ]*\).*/\1/p' "$OUT/loopback-hub.log")"
    [[ -n "$ENDPOINT" ]] && break
    sleep 0.2
  done
  [[ -n "$ENDPOINT" ]] || { echo "The loopback Hub did not start; see $OUT/loopback-hub.log" >&2; exit 1; }
  export HF_ENDPOINT="$ENDPOINT" HF_HUB_DISABLE_XET=1 HF_HOME="$OUT/.hf-home" HF_TOKEN="${HF_TOKEN:-hf_loopback}"
  ORG="${ORG:-mergebench}"
  echo "Loopback Hub at $HF_ENDPOINT serving $HUB_ROOT" >&2
fi

push_args() { if [[ -n "$ORG" ]]; then echo --push-to "$ORG/$1" "${PRIVATE[@]}"; fi; }

# shellcheck disable=SC2046
$MERGEBENCH data eval-sets --out "$OUT/eval" --overwrite $(push_args mergebench-eval)
for domain in "${DOMAINS[@]}"; do
  # shellcheck disable=SC2046
  $MERGEBENCH data build "$domain" --out "$OUT/$domain" --overwrite $(push_args "mergebench-$domain")
done
echo "Built ${#DOMAINS[@]} domain datasets and the evaluation repo in $OUT" >&2
