#!/bin/bash
# Runs commands alternately, REPS rounds, and prints each one's wall-clock and CPU seconds
# (user + system), sorted: for side-by-side comparisons on a shared machine, where a
# change's effect is a few percent and the noise between minutes is as large.
#
#   benches/alternate.sh DIR REPS "label:command" ["label:command" ...]
#
# Commands run in DIR; name binaries by absolute path. Example, in the folder ort_compare.py
# writes, with the build before in /tmp/old:
#   benches/alternate.sh /tmp/seqflow_ort_XXXX 9 \
#     "before:/tmp/old/seqflow run lstm128_head.pipeline.toml -w 2" \
#     "after:$PWD/target/release/seqflow run lstm128_head.pipeline.toml -w 2"
set -euo pipefail
dir=$1 reps=$2
shift 2
declare -A res
t=$(mktemp)
trap 'rm -f "$t"' EXIT
for _ in $(seq "$reps"); do
    for spec in "$@"; do
        label=${spec%%:*}
        cmd=${spec#*:}
        (cd "$dir" && /usr/bin/time -o "$t" -f '%e %U %S' bash -c "$cmd" >/dev/null 2>&1)
        res[$label]="${res[$label]:-} $(awk '{printf "%.2f/%.2f", $1, $2 + $3}' "$t")"
    done
done
for spec in "$@"; do
    label=${spec%%:*}
    echo "$label (wall/CPU s): $(echo ${res[$label]} | tr ' ' '\n' | sort -n | tr '\n' ' ')"
done
