#!/usr/bin/env bash
# Train the MergeBench experts: every base × every domain, plus the multi-task baseline (domain `all`),
# with the paper's recipe, through `accelerate launch` (DeepSpeed ZeRO-3 on 8 GPUs by default), pushing each
# expert to ORG/{base-name}_{domain} with its card.
#
# Usage:
#   scripts/train_experts.sh --org ORG [--data-org ORG] [--bases "A B"] [--domains "math all"] [--out DIR]
#                            [--config paper|tiny|FILE.yaml] [--set KEY=VALUE]... [--accelerate-config FILE]
#                            [--num-processes N] [--no-push] [--dry-run]
#
#   --org ORG             push experts to ORG/{base-name}_{domain} (e.g. ORG/Llama-3.2-3B_math, ORG/gemma-2-2b_all)
#   --data-org ORG        the training sets: ORG/mergebench-{domain} (built by scripts/build_all_datasets.sh;
#                         default: --org)
#   --bases "A B"         default: the paper's 8 bases (Llama-3.2-3B(-Instruct), Llama-3.1-8B(-Instruct),
#                         gemma-2-2b(-it), gemma-2-9b(-it))
#   --domains "A B"       default: instruction math multilingual coding safety all   (`all` = multi-task baseline)
#   --out DIR             expert folders go to DIR/{base-name}_{domain} (default: build/experts); a folder that
#                         already holds a trained expert is skipped, so re-running the script resumes the grid
#   --config C            the recipe (default: paper); --set overrides single keys, e.g. --set chat_template=chatml
#   --accelerate-config   default: configs/accelerate/deepspeed_zero3.yaml
#   --num-processes N     GPUs per machine (default: the config's 8); the effective batch of 160 is kept by raising
#                         gradient accumulation (160 must divide by per_device_batch_size × all processes)
#   --no-push             train and save only      --dry-run   print the commands, run nothing
#
# Several machines: run the script on each, with the same arguments and these variables (accelerate's flags):
#   NUM_MACHINES=2 MACHINE_RANK=0 MAIN_PROCESS_IP=10.0.0.1 [MAIN_PROCESS_PORT=29500] scripts/train_experts.sh ...
# (MACHINE_RANK=1 on the second machine), passed on as --num_machines/--machine_rank/--main_process_ip/
# --main_process_port with --num_processes = NUM_MACHINES × --num-processes. Set all of the first three or none
# (none: one machine, as above). --out must be a folder every machine sees (a shared file system): the skip of
# trained experts and the resumable checkpoints are read from it on each machine. With 16 processes, 160 needs
# --set per_device_batch_size=5 (or 10, 2, 1). Experts as Hugging Face Jobs instead: `mergebench train-experts`.
#
# Cost (paper recipe, 2 epochs): 48 runs (8 bases × 5 experts + 8 multi-task baselines; an estimate per expert is
# in docs/training.md); the 9B multi-task baseline is the longest. Within a run, the paper recipe writes a
# resumable checkpoint every 500 steps beside the output folder, picked up by the next launch.
# Log in first (`hf auth login`) and accept the Llama and Gemma licences. The GPU environment is the CPU one with
# a CUDA build of torch 2.13.0 and DeepSpeed: `pip install torch==2.13.0 && pip install -r requirements.txt
# deepspeed==0.19.8 && pip install --no-deps -e .`.
#
# Environment: ACCELERATE, the launcher (default: `.venv/bin/accelerate` when present, else `accelerate`);
# NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT for several machines (above).
set -euo pipefail

ORG=""
DATA_ORG=""
BASES=(meta-llama/Llama-3.2-3B meta-llama/Llama-3.2-3B-Instruct meta-llama/Llama-3.1-8B
       meta-llama/Llama-3.1-8B-Instruct google/gemma-2-2b google/gemma-2-2b-it google/gemma-2-9b google/gemma-2-9b-it)
DOMAINS=(instruction math multilingual coding safety all)
OUT=build/experts
CONFIG=paper
SETS=()
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ACC_CONFIG="$HERE/configs/accelerate/deepspeed_zero3.yaml"
PER_MACHINE=""
PUSH=1
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --org) ORG="$2"; shift 2 ;;
    --data-org) DATA_ORG="$2"; shift 2 ;;
    --bases) read -r -a BASES <<<"$2"; shift 2 ;;
    --domains) read -r -a DOMAINS <<<"$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    --accelerate-config) ACC_CONFIG="$2"; shift 2 ;;
    --num-processes) PER_MACHINE="$2"; shift 2 ;;
    --no-push) PUSH=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
    *) echo "Unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$ORG" || $PUSH -eq 0 ]] || { echo "Give --org ORG (where experts are pushed) or --no-push." >&2; exit 2; }
DATA_ORG="${DATA_ORG:-$ORG}"
[[ -n "$DATA_ORG" ]] || { echo "Give --data-org ORG (where ORG/mergebench-{domain} live)." >&2; exit 2; }
[[ -z "$PER_MACHINE" || "$PER_MACHINE" =~ ^[1-9][0-9]*$ ]] || {
  echo "--num-processes must be a positive integer, got '$PER_MACHINE'." >&2; exit 2; }

# accelerate's multi-node settings, checked before any work: all three set, or none
fail() { echo "Multi-node training: $1 Set NUM_MACHINES, MACHINE_RANK and MAIN_PROCESS_IP (and optionally" \
              "MAIN_PROCESS_PORT) on every machine, or none of them for one machine." >&2; exit 2; }
NPROC=()
MULTI=()
if [[ -n "${NUM_MACHINES:-}${MACHINE_RANK:-}${MAIN_PROCESS_IP:-}${MAIN_PROCESS_PORT:-}" ]]; then
  for var in NUM_MACHINES MACHINE_RANK MAIN_PROCESS_IP; do
    [[ -n "${!var:-}" ]] || fail "$var is not set."
  done
  [[ "$NUM_MACHINES" =~ ^[1-9][0-9]*$ ]] || fail "NUM_MACHINES must be a positive integer, got '$NUM_MACHINES'."
  [[ "$MACHINE_RANK" =~ ^[0-9]+$ ]] && (( MACHINE_RANK < NUM_MACHINES )) ||
    fail "MACHINE_RANK must be 0 to $((NUM_MACHINES - 1)), got '$MACHINE_RANK'."
  [[ "${MAIN_PROCESS_PORT:-0}" =~ ^[0-9]+$ ]] || fail "MAIN_PROCESS_PORT must be a port number, got '$MAIN_PROCESS_PORT'."
  MULTI=(--num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP")
  if [[ -n "${MAIN_PROCESS_PORT:-}" ]]; then MULTI+=(--main_process_port "$MAIN_PROCESS_PORT"); fi
  NPROC=(--num_processes "$((NUM_MACHINES * ${PER_MACHINE:-8}))")
elif [[ -n "$PER_MACHINE" ]]; then
  NPROC=(--num_processes "$PER_MACHINE")
fi

if [[ -x "$HERE/.venv/bin/accelerate" ]]; then ACCELERATE="${ACCELERATE:-$HERE/.venv/bin/accelerate}"; fi
ACCELERATE="${ACCELERATE:-accelerate}"

run() { if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

for base in "${BASES[@]}"; do
  name="${base##*/}"
  for domain in "${DOMAINS[@]}"; do
    out="$OUT/${name}_${domain}"
    if [[ -f "$out/mergebench_train.yaml" ]]; then
      echo "skip $out (already trained)" >&2
      continue
    fi
    push=()
    if [[ $PUSH -eq 1 ]]; then push=(--push-to "$ORG/${name}_${domain}"); fi
    run "$ACCELERATE" launch --config_file "$ACC_CONFIG" "${NPROC[@]}" "${MULTI[@]}" -m mergebench.cli train \
      --base "$base" --domain "$domain" --data "$DATA_ORG/mergebench-{domain}" --out "$out" \
      --config "$CONFIG" "${SETS[@]}" "${push[@]}"
  done
done
