// value_bench: Value<int64_t> and Atomic<int64_t> measured against the raw primitives
// they are built on, and against Python's multiprocessing.Value, in one run.
//
// Workloads (every worker is a forked process; each does K increments of one shared int64):
//   Value<int64_t> `+= 1`        vs a raw robust, process-shared, error-checking pthread
//                                   mutex guarding an int64 in a MAP_SHARED mapping;
//   Atomic<int64_t> fetch_add(1) vs a raw std::atomic<int64_t> in a MAP_SHARED mapping;
//   each with 1 and 2 processes, and the 2-process runs against Python 3 doing
//   `with v.get_lock(): v.value += 1` on a multiprocessing.Value('q', 0) in 2 processes.
// Timing: the workers announce they are ready and spin until the parent takes the start
//   time and raises the go flag; each worker stores its end time (CLOCK_MONOTONIC, the
//   same clock in every process) and the run lasts from the start to the last end. Every
//   run checks the exact final total and the program fails loudly if it is wrong.
// Statistics: every variant runs once per round, rounds repeated (>= 5), and the order of
//   procshare and baseline alternates between rounds. Rates are the median over rounds;
//   a ratio is the median of the per-round ratios (pairs measured back to back), printed
//   with the lowest and highest per-round ratio.
// Output: a table, then one line per target saying "met" or "NOT met". Exit status 0
//   when every run was correct (whether or not the targets were met), 1 on any failure.
// Cleanup: the segment "ps-bench-<pid>" is removed on return, on failure and on
//   SIGINT/SIGTERM/SIGHUP; workers die with the parent (PR_SET_PDEATHSIG).
//
// Usage: value_bench [--quick] [--scale=F] [--rounds=N] [--no-python]
//   --quick       about 5 s: short runs, 5 rounds
//   --scale=F     make every run F times longer (default 1: about 30 s in all)
//   --rounds=N    rounds per variant (at least 5; default 7, 5 with --quick)
//   --no-python   skip the Python comparison
// Each variant's increments per run are calibrated at start-up so that a run lasts about
// 0.35 s (times --scale); Python does 100,000 increments per process per run (30,000
// with --quick).
#include <procshare/segment.hpp>
#include <procshare/value.hpp>

#include "harness.hpp"

#include <fmt/format.h>

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using bench::fail;
using bench::RunResult;

// ---------------------------------------------------------------------------------------
// What the workers share besides the procshare segment: the start barrier, the end times
// and the raw baselines, in an anonymous MAP_SHARED mapping made before any fork.

// The raw mutex and its counter share a cache line, as Value's lock and value do.
struct alignas(64) RawLocked {
  pthread_mutex_t mutex;
  std::int64_t value;
};

struct Control {
  bench::StartLine start;
  RawLocked raw_locked;                               // baseline for Value +=
  alignas(64) std::atomic<std::int64_t> raw_atomic;   // baseline for Atomic fetch_add
  alignas(64) char guard_line[64];                    // nothing shares raw_atomic's line
};

Control* map_control() {
  void* memory = ::mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) fail("cannot map the control block: {}", std::strerror(errno));
  auto* control = ::new (memory) Control{};
  pthread_mutexattr_t attributes;
  int error = ::pthread_mutexattr_init(&attributes);
  if (error == 0) error = ::pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  if (error == 0) error = ::pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
  if (error == 0) error = ::pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_ERRORCHECK);
  if (error == 0) error = ::pthread_mutex_init(&control->raw_locked.mutex, &attributes);
  ::pthread_mutexattr_destroy(&attributes);
  if (error != 0) fail("cannot initialise the raw robust mutex: {}", std::strerror(error));
  return control;
}

// ---------------------------------------------------------------------------------------
// The variants.

enum class Variant { value, raw_mutex, atomic, raw_atomic };

struct Shared {
  Control* control;
  procshare::Value<std::int64_t> value;
  procshare::Atomic<std::int64_t> atomic;
};

// One worker's K increments.
void increment(const Shared& shared, Variant variant, std::int64_t k) {
  switch (variant) {
    case Variant::value: {
      procshare::Value<std::int64_t> value = shared.value;
      for (std::int64_t i = 0; i < k; ++i) value += 1;
      break;
    }
    case Variant::raw_mutex: {
      RawLocked& raw = shared.control->raw_locked;
      for (std::int64_t i = 0; i < k; ++i) {
        if (const int error = ::pthread_mutex_lock(&raw.mutex)) [[unlikely]]
          fail("raw pthread_mutex_lock: {}", std::strerror(error));
        ++raw.value;
        if (const int error = ::pthread_mutex_unlock(&raw.mutex)) [[unlikely]]
          fail("raw pthread_mutex_unlock: {}", std::strerror(error));
      }
      break;
    }
    case Variant::atomic: {
      procshare::Atomic<std::int64_t> atomic = shared.atomic;
      for (std::int64_t i = 0; i < k; ++i) atomic.fetch_add(1);
      break;
    }
    case Variant::raw_atomic: {
      std::atomic<std::int64_t>& raw = shared.control->raw_atomic;
      for (std::int64_t i = 0; i < k; ++i) raw.fetch_add(1);
      break;
    }
  }
}

void reset_counter(Shared& shared, Variant variant) {
  switch (variant) {
    case Variant::value: shared.value.store(0); break;
    case Variant::raw_mutex: shared.control->raw_locked.value = 0; break;
    case Variant::atomic: shared.atomic.store(0); break;
    case Variant::raw_atomic: shared.control->raw_atomic.store(0); break;
  }
}

std::int64_t read_counter(Shared& shared, Variant variant) {
  switch (variant) {
    case Variant::value: return shared.value.load();
    case Variant::raw_mutex: {
      RawLocked& raw = shared.control->raw_locked;
      if (const int error = ::pthread_mutex_lock(&raw.mutex))
        fail("raw pthread_mutex_lock: {}", std::strerror(error));
      const std::int64_t total = raw.value;
      ::pthread_mutex_unlock(&raw.mutex);
      return total;
    }
    case Variant::atomic: return shared.atomic.load();
    case Variant::raw_atomic: return shared.control->raw_atomic.load();
  }
  return -1;
}

std::string_view variant_name(Variant variant) {
  switch (variant) {
    case Variant::value: return "procshare Value +=";
    case Variant::raw_mutex: return "raw robust mutex";
    case Variant::atomic: return "procshare Atomic fetch_add";
    case Variant::raw_atomic: return "raw std::atomic fetch_add";
  }
  return "?";
}

// Runs `variant` in `processes` workers doing `k` increments each.
// Fails if a worker fails, the run times out or the final total is not processes * k.
RunResult run_workers(Shared& shared, Variant variant, int processes, std::int64_t k) {
  reset_counter(shared, variant);
  const bench::Timing timing = bench::run_timed_workers(
      shared.control->start, processes, variant_name(variant),
      [&shared, variant, k](int) { increment(shared, variant, k); });
  const std::int64_t expected = processes * k;
  const std::int64_t total = read_counter(shared, variant);
  if (total != expected)
    fail("WRONG TOTAL: {} with {} processes x {} increments ended at {}, expected {} "
         "(lost {})",
         variant_name(variant), processes, k, total, expected, expected - total);
  return timing.result(static_cast<double>(expected));
}

// ---------------------------------------------------------------------------------------
// Python: multiprocessing.Value('q', 0), `with v.get_lock(): v.value += 1`, same barrier
// and end-time scheme, run in a python3 child; it prints its increments/s.

constexpr const char* python_script = R"(
import multiprocessing as mp
import sys
import time

def work(v, n, ready, go, ends, cpus, index):
    ready.release()
    go.wait()
    cpu = time.process_time()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    ends[index] = time.perf_counter()
    cpus[index] = time.process_time() - cpu

if __name__ == "__main__":
    n, processes = int(sys.argv[1]), int(sys.argv[2])
    ctx = mp.get_context("fork")
    v = ctx.Value("q", 0)
    ready, go = ctx.Semaphore(0), ctx.Event()
    ends = ctx.Array("d", processes, lock=False)
    cpus = ctx.Array("d", processes, lock=False)
    workers = [ctx.Process(target=work, args=(v, n, ready, go, ends, cpus, i))
               for i in range(processes)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for w in workers:
        w.join()
    if any(w.exitcode != 0 for w in workers):
        sys.exit("python worker failed")
    if v.value != n * processes:
        sys.exit(f"WRONG TOTAL: {v.value}, expected {n * processes}")
    seconds = max(ends) - start
    print(f"{n * processes / seconds:.1f} {sum(cpus) / seconds:.3f}")
)";

// Runs the script with `n` increments in each of `processes` processes. Fails if python
// fails or prints no rate.
RunResult run_python(std::int64_t n, int processes) {
  const std::string what = fmt::format("python ({} processes x {})", processes, n);
  const std::string output =
      bench::run_python(python_script, {std::to_string(n), std::to_string(processes)}, what);
  const std::vector<double> numbers = bench::parse_numbers(output);
  if (numbers.size() < 2 || !(numbers[0] > 0)) fail("python printed no rate: '{}'", output);
  return {numbers[0], static_cast<double>(n * processes) / numbers[0], numbers[1]};
}

// ---------------------------------------------------------------------------------------
// Options and the report.

struct Options {
  double run_seconds = 0.35;      // target length of one run
  std::int64_t python_k = 100'000;  // python increments per process per run (~0.1-0.3 s)
  int rounds = 7;
  bool python = true;
};

Options parse_options(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: value_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
      "  --quick      about 5 s: short runs, 5 rounds\n"
      "  --scale=F    make every run F times longer (default: about 30 s in all)\n"
      "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
      "  --no-python  skip the comparison with Python's multiprocessing.Value");
  Options options;
  options.rounds = common.rounds;
  options.python = common.python;
  const double scale = common.scale * (common.quick ? 0.15 : 1.0);
  options.run_seconds *= scale;
  options.python_k = std::max<std::int64_t>(
      1000, std::llround(static_cast<double>(options.python_k) * std::min(1.0, 2 * scale)));
  return options;
}

int run(int argc, char** argv) {
  const Options options = parse_options(argc, argv);

  bench::install_signal_handlers("value_bench");
  const std::string name = fmt::format("ps-bench-{}", bench::parent_pid());
  bench::remember_path(0, name);
  procshare::Segment segment = procshare::Segment::create(name, 256 * 1024);

  Shared shared{map_control(), segment.create_value<std::int64_t>("counter", 0),
                segment.create_atomic<std::int64_t>("atomic", 0)};

  const bool python = options.python && bench::python_available();
  if (options.python && !python)
    std::fprintf(stderr, "value_bench: python3 with multiprocessing not found: skipping it\n");

  auto runner = [&shared](Variant variant, int processes) {
    return [&shared, variant, processes](std::int64_t k) {
      return run_workers(shared, variant, processes, k);
    };
  };
  bench::Pair pairs[] = {
      {runner(Variant::value, 1), runner(Variant::raw_mutex, 1)},
      {runner(Variant::value, 2), runner(Variant::raw_mutex, 2)},
      {runner(Variant::atomic, 1), runner(Variant::raw_atomic, 1)},
      {runner(Variant::atomic, 2), runner(Variant::raw_atomic, 2)},
  };
  bench::Series python_series;
  for (bench::Pair& pair : pairs) pair.calibrate(options.run_seconds);

  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  fmt::print("value_bench: {} rounds, {} CPUs online; increments per process per run: "
             "Value {}/{}, Atomic {}/{} (1/2 processes), python {}\n",
             options.rounds, cpus, pairs[0].k, pairs[1].k, pairs[2].k, pairs[3].k,
             python ? options.python_k : 0);
  if (cpus < 2)
    fmt::print("value_bench: fewer than 2 CPUs: the 2-process runs measure time slicing\n");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fmt::print("value_bench: built with a sanitizer: the ratios below are not meaningful\n");
#endif
  std::fflush(stdout);

  const double elapsed = bench::run_rounds(options.rounds, [&](int round) {
    for (bench::Pair& pair : pairs) pair.run_round(round % 2 == 1);
    if (python) python_series.add(run_python(options.python_k, 2));
  });

  std::vector<bench::RateRow> rows = {
      {"Value += (1 proc) vs robust mutex", &pairs[0].ours_series, &pairs[0].baseline_series,
       0.8},
      {"Value += (2 proc) vs robust mutex", &pairs[1].ours_series, &pairs[1].baseline_series,
       0.8},
      {"Atomic fetch_add (1 proc) vs std::atomic", &pairs[2].ours_series,
       &pairs[2].baseline_series, 0.9},
      {"Atomic fetch_add (2 proc) vs std::atomic", &pairs[3].ours_series,
       &pairs[3].baseline_series, 0.9},
  };
  if (python) {
    rows.push_back({"Value += (2 proc) vs Python Value", &pairs[1].ours_series, &python_series,
                    30.0});
    rows.push_back({"Atomic fetch_add (2 proc) vs Python Value", &pairs[3].ours_series,
                    &python_series, 0.0});
  }
  const std::vector<std::string> verdicts = bench::print_rate_table(rows);
  if (!python) fmt::print("{:<42} {:>12}\n", "Python comparison", "skipped");

  fmt::print("\nrates: median of {} interleaved rounds; ratio: median of per-round ratios; "
             "measured rounds took {:.1f} s\n",
             options.rounds, elapsed);
  fmt::print("2-process runs, CPUs busy (workers' CPU time / wall time, median; 2.00 = side "
             "by side throughout, 1.00 = taking turns):\n  Value {:.2f}, robust mutex {:.2f}, "
             "Atomic {:.2f}, std::atomic {:.2f}{}\n\n",
             pairs[1].ours_series.busy(), pairs[1].baseline_series.busy(),
             pairs[3].ours_series.busy(), pairs[3].baseline_series.busy(),
             python ? fmt::format(", Python {:.2f}", python_series.busy()) : "");
  if (std::min({pairs[1].ours_series.busy(), pairs[1].baseline_series.busy(),
                pairs[3].ours_series.busy(), pairs[3].baseline_series.busy()}) < 1.5)
    fmt::print("WARNING: the 2-process workers mostly took turns on one CPU (other load on the "
               "machine?),\n  so the 2-process rows measure time slicing, not contention.\n\n");
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
