#!/usr/bin/env bash
# The long crash test: tests/checkpoints.rs's kill-and-resume trials, many more of them, on
# the release build. Each trial SIGKILLs a checkpointed run at a random moment, then resumes
# it (on -w 1, -w 2, -n 2, -w 3 in turn), killing every other resume too, until it completes;
# the final output, rejects and counters must equal the uninterrupted run's bit for bit.
#
#   benches/crash.sh [TRIALS_PER_MODE] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export SEQFLOW_CRASH_TRIALS="${1:-60}" SEQFLOW_CRASH_SEED="${2:-1}"
cargo test --release --test checkpoints killed_ -- --nocapture --test-threads 1 2>&1 \
  | grep -E "trials|test result|panicked|FAILED"
