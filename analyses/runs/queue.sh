#!/usr/bin/env bash
# Run the at-size studies still unfinished, one after another (nice 5), and commit each run's folder as its jobs
# finish, so that a session that ends mid-run loses at most the unit in flight (traces and recovery jobs save their
# units as they go) and the next session resumes from the commits.
#   bash analyses/runs/queue.sh run6_qwen05_grid run4_qwen05_dense run4_fast_dense     # from the repository root
# Commits only the run folders (git commit -- <folder>), so work in progress elsewhere in the tree is left alone.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PHASELENS_DATA="${PHASELENS_DATA:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
commit_done() {  # $1: a run folder; commits it when it holds a finished job not yet committed
  local d=$1 n total
  n=$(find "$d/.phaselens/study" -name 'row_*.json' 2>/dev/null | wc -l)
  [ -z "$(git status --porcelain -- "$d")" ] && return
  total=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$d/.phaselens/study/plan.json" 2>/dev/null || echo '?')
  git add -- "$d" && git commit -q -m "$(basename "$d"): $n of $total jobs done (finished jobs committed as they complete)" -- "$d"
}
for run in "$@"; do
  spec="analyses/runs/specs/$run.toml"
  [ -f "$spec" ] || { echo "no spec $spec" >&2; exit 2; }
  nice -n 5 phaselens study run "$spec" --out "analyses/runs/$run" > "analyses/runs/.$run.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do sleep 60; commit_done "analyses/runs/$run"; done
  wait "$pid"; echo "$(date -u +%FT%T) $run exited $?"
  commit_done "analyses/runs/$run"
done
