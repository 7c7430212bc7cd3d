#!/bin/sh
# Runs every test binary in BUILD/tests and (unless "unit" is given) every
# end-to-end script tests/e2e_*.py against BUILD/retune; or only the tests
# named after BUILD (binaries and .py scripts, e.g. make tsan-test). Each
# prints its own "N passed, N failed" line; the last line here is the sum.
BUILD=${1:-build}
MODE=${2:-all}
ONLY=""
if [ "$MODE" != all ] && [ "$MODE" != unit ]; then
    shift; ONLY="$*"; MODE=only
fi
passed=0; failed=0; broken=""
tally() { # $1 = name, $2 = exit status, $3 = output file
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$3" | tail -n 1)
    if [ -z "$line" ]; then
        failed=$((failed + 1)); broken="$broken $1"; return
    fi
    p=$(echo "$line" | sed 's/ passed.*//'); f=$(echo "$line" | sed 's/.* passed, \([0-9]*\) failed.*/\1/')
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$2" != 0 ] && [ "$f" = 0 ]; then failed=$((failed + 1)); broken="$broken $1"; fi
}
out=$(mktemp)
run_one() { # $1 = a test binary or an e2e script
    echo "== $1"
    t0=$(date +%s)
    case "$1" in
        *.py) RETUNE_BIN="$BUILD/retune" python3 "$1" > "$out" 2>&1 ;;
        *) "$1" > "$out" 2>&1 ;;
    esac
    rc=$?
    cat "$out"; tally "$1" $rc "$out"
    echo "   ($1: $(($(date +%s) - t0)) s)"
}
if [ "$MODE" = only ]; then
    for t in $ONLY; do run_one "$t"; done
else
    for t in "$BUILD"/tests/test_*; do
        [ -x "$t" ] && run_one "$t"
    done
    if [ "$MODE" = all ]; then
        for t in tests/e2e_*.py; do
            [ -f "$t" ] && run_one "$t"
        done
    fi
fi
rm -f "$out"
[ -z "$broken" ] || echo "broken (crashed or no summary):$broken"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
