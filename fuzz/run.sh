#!/usr/bin/env bash
# Runs one fuzz target for SECONDS and prints one summary line:
#   TARGET  executions  cov  ft  crashes  seconds
# usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#
# Rust targets (fuzz/fuzz_targets/) run under cargo-fuzz (nightly, ASan, -O); the py_* targets
# (fuzz/python/) under atheris in the test venv. New inputs go to fuzz/target/corpus/TARGET
# (not committed); the committed seeds in fuzz/corpus/TARGET are read, never written. A crash
# is written to fuzz/artifacts/TARGET/ and makes this script fail: minimise it, fix it, add a
# regression test and copy the input to fuzz/corpus/TARGET/regress-NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 seconds=$2
shift 2
work=fuzz/target/corpus/$target artifacts=fuzz/artifacts/$target log=fuzz/target/logs/$target.log
mkdir -p "$work" "$artifacts" fuzz/target/logs
flags=(-max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts/" -timeout=30
       -rss_limit_mb=2048 "$@")
start=$(date +%s)
status=0
case $target in
py_*)
	.venv/bin/python "fuzz/python/fuzz_${target#py_}.py" "$work" "fuzz/corpus/$target" "${flags[@]}" \
		>"$log" 2>&1 || status=$?
	;;
*)
	LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
	cargo +nightly fuzz run -O "$target" "$work" "fuzz/corpus/$target" -- "${flags[@]}" \
		>"$log" 2>&1 || status=$?
	;;
esac
elapsed=$(($(date +%s) - start))
# libFuzzer's last status line carries the coverage: "#N DONE cov: C ft: F corp: ..."
last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
[ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
crashes=$(find "$artifacts" -type f | wc -l)
printf '%-22s execs=%-10s cov=%-6s ft=%-6s crashes=%s seconds=%s\n' \
	"$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes" "$elapsed"
if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
	echo "$target: failed (exit $status); see $log and $artifacts/" >&2
	grep -E 'panicked|ERROR|Error|assert' "$log" | head -n 5 >&2 || true
	exit 1
fi
