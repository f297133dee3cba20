#!/usr/bin/env bash
# procshare's one setup/run script. Installs the Debian 12 packages that are missing,
# builds with meson, and runs what you ask for:
#   bash run.sh demo [ARGS]   the flagship demo (examples/pool_demo), building only it and
#                             procshare-ctl
#   bash run.sh cluster-demo [ARGS]
#                             the search across hosts (examples/cluster_search): a private
#                             redis-server and three host processes on this machine
#   bash run.sh test          every test: suites unit, process and examples
#   bash run.sh asan          every test, built with AddressSanitizer + UBSan
#   bash run.sh bench         the benchmarks (tests/bench), printed as ratios
#   bash run.sh fuzz [SECS]   the segment fuzzer (tests/fuzz, clang + libFuzzer + ASan + UBSan)
#                             for SECS seconds (60) over a copy of tests/fuzz/corpus
#   bash run.sh tsan          the thread-only tests (suite threads) under ThreadSanitizer
# Builds go to build/ (build-asan/, build-bench/, build-fuzz/, build-tsan/ for the others).
# With CI=true, warnings are errors.
set -euo pipefail
cd "$(dirname "$0")"

packages=(g++ libboost1.81-dev libfmt-dev doctest-dev meson ninja-build cmake pkg-config libcli11-dev tmux
          libhiredis-dev redis-server iproute2)

ensure_packages() {
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "run.sh: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  # The tests start their own redis-server: installing the package must not start (or
  # enable) the system's one, so services may not start while apt runs (policy-rc.d 101).
  local policy=/usr/sbin/policy-rc.d added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy"
    added_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" </dev/null || status=$?
  [ -n "$added_policy" ] && $sudo rm -f "$policy"
  return $status
}

# build DIR [MESON OPTIONS...] [-- TARGETS...]: configure DIR once, then compile it (only
# TARGETS, if given).
build() {
  local dir=$1
  shift
  local options=() targets=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do options+=("$1"); shift; done
  [ $# -gt 0 ] && shift && targets=("$@")
  [ "${CI:-}" = "true" ] && options+=(-Dwerror=true)
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "${options[@]}" >/dev/null
  else
    meson setup "$dir" "${options[@]}" >/dev/null
  fi
  meson compile -C "$dir" "${targets[@]}"
}

# run_tests DIR LABEL [MESON TEST OPTIONS...]: runs the meson tests in DIR (every one by
# default), then prints "LABEL: N passed, N failed", counting doctest cases (and each
# example program as one).
run_tests() {
  local dir=$1 label=$2 status=0
  shift 2
  meson test -C "$dir" --print-errorlogs "$@" || status=$?
  python3 - "$dir/meson-logs/testlog.json" "$label" <<'PY'
import json, re, sys
passed = failed = 0
for line in open(sys.argv[1]):
    test = json.loads(line)
    ok = test["result"] in ("OK", "EXPECTEDFAIL")
    # The last summary is the test program's own (a forked child may print one too).
    found = re.findall(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", test.get("stdout") or "")
    m = found[-1] if found else None
    if m:
        passed += int(m[1])
        failed += int(m[2]) or (0 if ok else 1)
    elif ok:
        passed += 1
    else:
        failed += 1
print(f"{sys.argv[2]}: {passed} passed, {failed} failed")
PY
  return $status
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  demo)
    # Only the demo and the controller it tells you to use (not the tests and benchmarks).
    ensure_packages
    build build -- examples/pool_demo examples/ctl/procshare-ctl
    ./build/examples/pool_demo "$@"
    ;;
  cluster-demo)
    # A private redis-server (free loopback port, a random password in a 0600 file, no
    # persistence), stopped on exit whatever happens, and three hosts of one job.
    ensure_packages
    build build -- examples/cluster_search examples/ctl/procshare-ctl
    folder=$(mktemp -d /tmp/procshare-cluster-demo.XXXXXX)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$folder/password"
    chmod 600 "$folder/password"
    (umask 077 && printf 'port %s\nbind 127.0.0.1\nsave ""\nappendonly no\ndir %s\nrequirepass %s\n' \
      "$port" "$folder" "$(cat "$folder/password")" >"$folder/redis.conf")
    redis-server "$folder/redis.conf" >"$folder/redis.log" 2>&1 &
    server=$!
    hosts=()
    # (each step may fail, e.g. a host already gone: || true, or errexit would end the trap)
    trap 'kill "${hosts[@]}" 2>/dev/null || true; kill "$server" 2>/dev/null || true
          wait 2>/dev/null || true; rm -rf "$folder"' EXIT
    trap 'exit 130' INT TERM HUP
    for _ in $(seq 100); do
      REDISCLI_AUTH=$(cat "$folder/password") redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
    job="demo-$$"
    echo "redis-server pid $server on 127.0.0.1:$port; job '$job'. The job's state, from another terminal:"
    echo "  REDISCLI_AUTH=\$(cat $folder/password) redis-cli -p $port HGETALL 'psj:{$job}:meta'"
    export PROCSHARE_REDIS_PASSWORD
    PROCSHARE_REDIS_PASSWORD=$(cat "$folder/password")
    for host in h1 h2 h3; do
      ./build/examples/cluster_search --url "redis://127.0.0.1:$port" --job "$job" --host "$host" \
        --workers 1 "$@" &
      hosts+=($!)
    done
    status=0
    for pid in "${hosts[@]}"; do wait "$pid" || status=$?; done
    exit $status
    ;;
  test)
    ensure_packages
    build build
    run_tests build tests
    ;;
  asan)
    ensure_packages
    build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=false
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      PROCSHARE_STORM_ROUNDS=${PROCSHARE_STORM_ROUNDS:-20} run_tests build-asan "asan tests"
    ;;
  bench)
    ensure_packages
    build build-bench -Dbuildtype=release -Dexamples=false
    for program in build-bench/tests/bench/*_bench; do "$program" "$@"; done
    ;;
  tsan)
    # ThreadSanitizer follows threads, not fork(): only the thread-only suite runs here.
    # -Wno-tsan: GCC warns that TSan does not model atomic_thread_fence. Our fences
    # (mark_dirty, the handle registry's seqlock) order plain stores for a process that
    # dies mid-write, or pair with atomics TSan does see; between threads the object's
    # lock orders everything, which TSan does model.
    ensure_packages
    build build-tsan -Db_sanitize=thread -Db_lundef=false -Dexamples=false -Dbenchmarks=false -Dcpp_args=-Wno-tsan \
      -- tests/threads_test
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
      run_tests build-tsan "tsan tests" --suite threads --no-rebuild
    ;;
  fuzz)
    # Arbitrary bytes as a segment file, then procshare-ctl show's code on it (see
    # tests/fuzz/segment_fuzz.cpp). Passes when the fuzzer finds no crash, no hang (an input
    # over -timeout seconds), no leak and no sanitizer report in the time given.
    seconds=${1:-${PROCSHARE_FUZZ_SECONDS:-60}}
    packages+=(clang libclang-rt-14-dev)
    ensure_packages
    [ -f build-fuzz/build.ninja ] || export CXX=clang++
    build build-fuzz -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false \
      -Dexamples=false -- tests/fuzz/segment_fuzz
    corpus=$(mktemp -d)
    cp tests/fuzz/corpus/* "$corpus/"
    status=0
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      ./build-fuzz/tests/fuzz/segment_fuzz "$corpus" -max_total_time="$seconds" -timeout=10 \
      -max_len=8192 -artifact_prefix=build-fuzz/ -print_final_stats=1 \
      >build-fuzz/fuzz.log 2>&1 &
    fuzzer=$!
    wait $fuzzer || status=$?
    rm -f "/dev/shm/ps-fuzz-$fuzzer"  # the fuzzer's own file, should it have crashed
    rm -rf "$corpus"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' build-fuzz/fuzz.log | tail -1)
    if [ $status -eq 0 ]; then
      echo "fuzz: passed: ${runs:-?} inputs in ${seconds} s, no crash, hang, leak or sanitizer report"
    else
      tail -40 build-fuzz/fuzz.log
      echo "fuzz: FAILED (exit $status): see build-fuzz/fuzz.log and build-fuzz/crash-*, timeout-*, leak-*"
      exit 1
    fi
    ;;
  *)
    echo "usage: bash run.sh demo|test|asan|bench|fuzz|tsan" >&2
    exit 2
    ;;
esac
