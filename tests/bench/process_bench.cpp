// process_bench: Process start + join measured against a raw fork + waitpid, and against
// Python's multiprocessing.Process, in one run.
//
// Workload: start a process that runs a trivial callable and wait for it, one at a time.
//   procshare: Process::spawn(f) then join(), where f increments a std::atomic counter in
//   a MAP_SHARED page (so each child's run is checked). Raw baseline: fork(); the child
//   increments the same counter and _exit(0)s; the parent waitpid()s it (what Process is
//   built on, without the outcome page, the pidfd, the stream flushes and the thread
//   check). Python: ctx = multiprocessing.get_context("fork");
//   p = ctx.Process(target=f); p.start(); p.join(), f doing nothing, in a fresh
//   interpreter, after 5 unmeasured warm-up processes.
// Checks: every child's exit code (0) and the counter's exact total; Python checks its
//   exitcodes. The program fails loudly if one is wrong.
// Statistics: rounds repeated (>= 5); in each, procshare and the raw baseline run back to
//   back, the order alternating between rounds, then Python. Rates are processes started
//   and joined per second, the median over rounds; a ratio is the median of the per-round
//   ratios, printed with the lowest and highest.
// Output: a table, then one line per target saying "met" or "NOT met". Exit status 0
//   when every run was correct (whether or not the targets were met), 1 on any failure.
// Cleanup: nothing in /dev/shm; children end by themselves, python dies with the parent.
//
// Usage: process_bench [--quick] [--scale=F] [--rounds=N] [--no-python]
//   --quick       about 3 s: 5 rounds, 300 processes per run (Python 60)
//   --scale=F     F times more processes per run (default: 1,500, Python 300; about 10 s)
//   --rounds=N    rounds (at least 5; default 7, 5 with --quick)
//   --no-python   skip the Python comparison
#include <procshare/process.hpp>

#include "harness.hpp"

#include <fmt/format.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

using bench::Clock;
using bench::fail;

std::atomic<std::int64_t>* counter = nullptr;  // in a MAP_SHARED page, made before any fork

void count_one() { counter->fetch_add(1, std::memory_order_relaxed); }

// n Process::spawn + join, one at a time.
bench::RunResult run_procshare(std::int64_t n) {
  const std::int64_t before = counter->load();
  const auto start = Clock::now();
  for (std::int64_t i = 0; i < n; ++i) {
    auto process = procshare::Process::spawn(count_one);
    process.join();
    if (process.exitcode() != 0) fail("a Process ended with exit code {}", process.exitcode().value_or(-1000));
  }
  const double seconds = bench::seconds_since(start);
  if (counter->load() - before != n) fail("WRONG TOTAL: {} Processes counted {}", n, counter->load() - before);
  return {static_cast<double>(n) / seconds, seconds, 1.0};
}

// n raw fork + _exit + waitpid, one at a time.
bench::RunResult run_raw(std::int64_t n) {
  const std::int64_t before = counter->load();
  const auto start = Clock::now();
  for (std::int64_t i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) fail("fork: {}", std::strerror(errno));
    if (pid == 0) {
      count_one();
      ::_exit(0);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("a raw child {}", bench::describe_status(status));
  }
  const double seconds = bench::seconds_since(start);
  if (counter->load() - before != n) fail("WRONG TOTAL: {} raw children counted {}", n, counter->load() - before);
  return {static_cast<double>(n) / seconds, seconds, 1.0};
}

constexpr const char* python_script = R"(
import multiprocessing as mp
import sys
import time

def f():
    pass

if __name__ == "__main__":
    n = int(sys.argv[1])
    ctx = mp.get_context("fork")
    for _ in range(5):  # warm-up: imports, the first forks
        p = ctx.Process(target=f)
        p.start()
        p.join()
    start = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=f)
        p.start()
        p.join()
        if p.exitcode != 0:
            sys.exit(f"a Process ended with exit code {p.exitcode}")
    print(f"{n / (time.perf_counter() - start):.1f}")
)";

bench::RunResult run_python(std::int64_t n) {
  const std::string output = bench::run_python(python_script, {std::to_string(n)},
                                               fmt::format("python Process x {}", n));
  const std::vector<double> numbers = bench::parse_numbers(output);
  if (numbers.empty() || !(numbers[0] > 0) || !std::isfinite(numbers[0]))
    fail("python printed no rate: '{}'", output);
  return {numbers[0], static_cast<double>(n) / numbers[0], 1.0};
}

int run(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: process_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
      "  --quick      about 3 s: 5 rounds, 300 processes per run (Python 60)\n"
      "  --scale=F    F times more processes per run (default 1,500, Python 300)\n"
      "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
      "  --no-python  skip the comparison with Python's multiprocessing.Process",
      100);
  const double scale = common.scale * (common.quick ? 0.2 : 1.0);
  const auto ours_n = std::max<std::int64_t>(20, std::llround(1500 * scale));
  const auto python_n = std::max<std::int64_t>(10, std::llround(300 * scale));

  bench::install_signal_handlers("process_bench");
  void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) fail("mmap: {}", std::strerror(errno));
  counter = ::new (page) std::atomic<std::int64_t>(0);

  const bool python = common.python && bench::python_available();
  if (common.python && !python)
    std::fprintf(stderr, "process_bench: python3 with multiprocessing not found: skipping it\n");
  fmt::print("process_bench: {} rounds; processes per run: procshare and raw {}, python {}\n",
             common.rounds, ours_n, python ? python_n : 0);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fmt::print("process_bench: built with a sanitizer: the ratios below are not meaningful\n");
#endif
  std::fflush(stdout);

  run_procshare(std::max<std::int64_t>(10, ours_n / 10));  // warm-up, not counted
  run_raw(std::max<std::int64_t>(10, ours_n / 10));

  bench::Series ours, raw, python_series;
  const double elapsed = bench::run_rounds(common.rounds, [&](int round) {
    if (round % 2 == 1) raw.add(run_raw(ours_n));
    ours.add(run_procshare(ours_n));
    if (round % 2 == 0) raw.add(run_raw(ours_n));
    if (python) python_series.add(run_python(python_n));
  });

  std::vector<bench::RateRow> rows = {
      {"start+join: Process vs raw fork+waitpid", &ours, &raw, 0},
  };
  if (python)
    rows.push_back({"start+join: Process vs Python Process", &ours, &python_series, 5.0});
  const std::vector<std::string> verdicts = bench::print_rate_table(rows);
  if (!python) fmt::print("{:<42} {:>12}\n", "Python comparison", "skipped");
  fmt::print("\nrates: processes started and joined per second (median over rounds); one "
             "process takes {:.0f} us (procshare), {:.0f} us (raw){}.\nratio: median of "
             "per-round ratios. Measured rounds took {:.1f} s.\n\n",
             1e6 / ours.median_rate(), 1e6 / raw.median_rate(),
             python ? fmt::format(", {:.0f} us (Python)", 1e6 / python_series.median_rate())
                    : std::string(),
             elapsed);
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
  ::munmap(page, 4096);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
