#!/usr/bin/env bash
# test_result_line.sh - scripts/test's last line ("N passed, M failed") and
# exit status, with its steps replaced by fakes: a copy of the script in a
# scratch tree whose scripts/install-deps and tests/fuzz/run are stubs, and
# cmake/ctest on PATH that print canned results (FAKE_* variables choose them).
#   tests/scripts/test_result_line.sh SOURCE_DIR
set -euo pipefail
src=${1:?usage: test_result_line.sh SOURCE_DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tree/scripts" "$tmp/tree/tests/fuzz" "$tmp/tree/build" "$tmp/tree/build-asan" "$tmp/tree/build-aarch64" "$tmp/bin"
cp "$src/scripts/test" "$tmp/tree/scripts/test"
printf '#!/bin/sh\nexit 0\n' > "$tmp/tree/scripts/install-deps"
# shellcheck disable=SC2016  # expanded by the stub, not here
printf '#!/bin/sh\nexit "${FAKE_CROSS_RC:-0}"\n' > "$tmp/tree/scripts/cross-aarch64"
# shellcheck disable=SC2016  # expanded by the stub, not here
printf '#!/bin/sh\necho "fuzz stats: cov 123"\nexit "${FAKE_FUZZ_RC:-0}"\n' > "$tmp/tree/tests/fuzz/run"
# cmake: fails when FAKE_BUILD_FAIL names its build dir ("--build DIR").
cat > "$tmp/bin/cmake" <<'SH'
#!/bin/sh
if [ "$1" = "--build" ] && [ "$2" = "${FAKE_BUILD_FAIL:-none}" ]; then echo "build error" >&2; exit 2; fi
exit 0
SH
# ctest: in build/ FAKE_RELEASE, in build-asan/ FAKE_ASAN, in build-aarch64/ FAKE_ARM (once
# per emulated CPU): "pass N", "fail N NAME...", "crash".
cat > "$tmp/bin/ctest" <<'SH'
#!/bin/bash
case "$PWD" in
  */build-asan) spec=${FAKE_ASAN:-pass 3} ;;
  */build-aarch64) spec=${FAKE_ARM:-pass 2}; [ -n "${QEMU_CPU:-}" ] || spec=crash ;;
  *) spec=${FAKE_RELEASE:-pass 4} ;;
esac
# the sanitizer run must get its options and leave out the no_asan tests
if [ "${PWD##*/}" = build-asan ]; then
  case "$ASAN_OPTIONS $*" in *detect_leaks=1*"-LE no_asan"*) ;; *) spec=crash ;; esac
fi
set -- $spec
case "$1" in
  pass) echo "100% tests passed, 0 tests failed out of $2"; exit 0 ;;
  fail) n=$2; shift 2
        echo "50% tests passed, $# tests failed out of $n"; echo; echo "The following tests FAILED:"
        i=1; for t in "$@"; do printf '\t %d - %s (Failed)\n' "$i" "$t"; i=$((i + 1)); done
        echo "Errors while running CTest"; exit 8 ;;
  crash) echo "ctest: something broke"; exit 1 ;;
esac
SH
chmod +x "$tmp"/tree/scripts/* "$tmp/tree/tests/fuzz/run" "$tmp"/bin/*

fails=0
# expect RC LAST-LINE [VAR=VALUE...]
expect() {
  local want_rc=$1 want_line=$2
  shift 2
  local out rc=0
  out=$(env PATH="$tmp/bin:$PATH" UMG_FUZZ_SECONDS=1 "$@" bash "$tmp/tree/scripts/test" 2>&1) || rc=$?
  local last
  last=$(printf '%s\n' "$out" | tail -n 1)
  if [ "$rc" != "$want_rc" ] || [ "$last" != "$want_line" ]; then
    echo "FAIL ($*): exit $rc, last line '$last'; want exit $want_rc, '$want_line'"
    fails=$((fails + 1))
  else
    echo "ok   ($*): $last"
  fi
}

expect 0 "8 passed, 0 failed"
expect 0 "7 passed, 0 failed" FAKE_RELEASE="pass 3"
expect 1 "5 passed, 3 failed: Release test_cli, ASan test_cli, ASan test_server" \
  FAKE_RELEASE="fail 4 test_cli" FAKE_ASAN="fail 3 test_cli test_server"
expect 1 "7 passed, 1 failed: fuzz" FAKE_FUZZ_RC=1
expect 1 "5 passed, 1 failed: ASan ctest (exit 1, no result)" FAKE_ASAN=crash
expect 2 "0 passed, 1 failed: Release build (exit 2)" FAKE_BUILD_FAIL=build
expect 2 "4 passed, 1 failed: ASan build (exit 2)" FAKE_BUILD_FAIL=build-asan
expect 0 "5 passed, 0 failed" UMG_TEST_SANITIZE=0
expect 0 "7 passed, 0 failed" UMG_TEST_FUZZ=0
# aarch64 (off by default): the suite once per emulated CPU, after everything else
expect 0 "12 passed, 0 failed" UMG_TEST_ARM=1
expect 1 "10 passed, 2 failed: aarch64-max test_model, aarch64-cortex-a72 test_model" UMG_TEST_ARM=1 \
  FAKE_ARM="fail 2 test_model"
expect 3 "8 passed, 1 failed: aarch64 cross build (exit 3)" UMG_TEST_ARM=1 FAKE_CROSS_RC=3
[ "$fails" -eq 0 ] || { echo "$fails case(s) failed"; exit 1; }
