#!/bin/bash
# Step-bench binaries run alternately, REPS rounds; for each benchmark and binary, the
# fastest criterion sample (time / iterations, us) of every round: for comparing kernel
# builds on a shared machine, where medians move by more than the change.
#
#   benches/step_alternate.sh REPS FILTER BINARY...
#
# Binaries: copies of the step bench of each build (`cargo bench --bench step --no-run`
# prints its path, target/release/deps/step-HASH). Example, a scratch build against HEAD's:
#   benches/step_alternate.sh 3 "lstm_step/h128/64|gru_step/h128/64" /tmp/step_head /tmp/step_new
set -euo pipefail
reps=$1 filt=$2
shift 2
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
for _ in $(seq "$reps"); do
    for b in "$@"; do
        rm -rf "$home/criterion"
        CRITERION_HOME="$home/criterion" "$b" --bench "$filt" --warm-up-time 0.3 \
            --measurement-time 1 --noplot >/dev/null 2>&1
        find "$home/criterion" -path '*/new/sample.json' | while read -r f; do
            id=${f#"$home/criterion/"}
            python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], "%.2f" % (min(t / i for t, i in zip(d["times"], d["iters"])) / 1000))' \
                "$f" "${id%/new/sample.json}" "$(basename "$b")"
        done
    done
done | awk '{k = $1 " " $2; a[k] = a[k] " " $3} END {for (k in a) print k ":" a[k]}' | sort
