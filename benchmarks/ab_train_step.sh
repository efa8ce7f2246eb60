#!/usr/bin/env bash
# A/B of the 2B train step (agibot_jax.bench --mode train) between this tree and an older copy of the package,
# alternating on one GPU in one call: `bash benchmarks/ab_train_step.sh OLD_TREE [bench flags...]`.
# OLD_TREE holds agibot_jax/, configs/ (e.g. copied from `git worktree add DIR <commit>`); each run prints the bench's
# JSON line prefixed by the tree's name. Default: 432x768, 3 timed steps after one warm-up, ROUNDS (1) rounds.
set -uo pipefail
old=$1; shift
for round in $(seq "${ROUNDS:-1}"); do
  for tree in new old; do
    dir=$PWD; [ "$tree" = old ] && dir=$old
    line=$(cd "$dir" && PYTHONPATH="$dir:${EXTRA_PYTHONPATH:-}" python3 -m agibot_jax.bench --config configs/edge.py \
           --mode train --steps 3 "$@" 2>&1 | tail -n 1)
    echo "$tree round $round: $line"
  done
done
