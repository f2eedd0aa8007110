#!/usr/bin/env bash
# Re-measure what the repository ships, on a quiet machine (issue 13, item 4), so the
# profiles, fig2, the fidelity tables and the README say the same thing.
#
#   scripts/remeasure.sh            # the real thing (~45 min): rewrites simulator/profiles/
#                                   #   measured-*, results/fig2, results/validation{,/rerun}
#   scripts/remeasure.sh --smoke    # the same commands, tiny, into a temporary folder
#
# Every step is gated by `python -m clipperlab.calibration.quiet --busy refuse`: it waits
# up to SETTLE_S for the machine to quiet down (other processes under 20% of the CPU, the
# 1-minute load average under 1 per core), then stops the script (exit 3) rather than
# record a busy machine's time slices as the models' tail.  The validations themselves run
# with --busy refuse, and record the load they ran under in fidelity.csv/.md.  The fidelity
# table predicts with the host CPU model (--host-cpu: sim+host; sim+frontend, without it,
# is in the same tables over the same runs).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
SETTLE_S=${SETTLE_S:-300}
MODELS=(noop linear-svm logistic-regression random-forest kernel-svm torch-cnn)

gate() {  # $1: what comes next
  echo "== $1"
  python3 -m clipperlab.calibration.quiet --busy refuse --settle-s "$SETTLE_S"
}

if (( SMOKE )); then
  OUT=$(mktemp -d /tmp/clipperlab-remeasure-XXXXXX)
  SETTLE_S=0
  gate() { echo "== $1"; python3 -m clipperlab.calibration.quiet --busy warn; }
  PROFILES=$OUT/profiles; FIG2=$OUT/fig2; VALID=$OUT/validation
  MEASURE=(--budget-s 0.05 --max-batch 4 --samples 20)
  MODELS=(noop)
  FIG2_ARGS=(--quick)
  FIDELITY=(--quick --models noop --batchings aimd --busy warn --host-cpu)
else
  PROFILES=simulator/profiles; FIG2=results/fig2; VALID=results/validation
  MEASURE=()
  FIG2_ARGS=()
  FIDELITY=(--level-s 10 --repeats 3 --busy refuse --host-cpu)
fi

# 1. the shipped in-process profiles, one model at a time, each behind the gate (each
#    file's tags record the load average before and after its timing)
for m in "${MODELS[@]}"; do
  gate "profile $m"
  python3 -m clipperlab.simulator.measure_profiles --out "$PROFILES" --models "$m" \
    "${MEASURE[@]}"
done

# 2. fig2 from the profiles just written (fig2 reads the shipped folder; in --smoke it
#    reads the shipped files, only the command is checked)
gate "fig2"
clipperlab experiment fig2 --out "$FIG2" "${FIG2_ARGS[@]}"

# 3. the fidelity table, twice (the second run is the README's "rerun")
gate "fidelity"
python3 -m clipperlab.calibration.fidelity --out "$VALID" "${FIDELITY[@]}"
if (( ! SMOKE )); then
  gate "fidelity, rerun"
  python3 -m clipperlab.calibration.fidelity --out "$VALID/rerun" "${FIDELITY[@]}"
fi

echo "done: $PROFILES, $FIG2, $VALID"
(( SMOKE )) && echo "(smoke run: nothing in the repository was touched)"
echo "next: update the README's fidelity section and fig2 numbers from $VALID/fidelity.md" \
     "and $FIG2/summary.md"
