// containers_bench: Map<int64_t, int64_t> and Vector<int64_t> measured against the raw
// Boost.Interprocess containers they are built on, and against Python's Manager().dict()
// and Manager().list(), in one run.
//
// Workloads (every worker is a forked process doing K iterations on one shared container):
//   Map increment: key = i % 1000, then under the map's lock
//     `auto g = map.lock(); g.insert_or_assign(key, g.get(key).value_or(0) + 1);`
//     (Map has no single-call read-modify-write, so the Guard is the way to do it) vs a
//     raw boost::interprocess::map<int64, int64> in a managed_shared_memory segment
//     guarded by a raw robust, process-shared, error-checking pthread mutex, doing the
//     same two steps (find, then insert_or_assign) under it;
//   Vector push/pop: push_back(x) then pop_back(), each one call under the vector's lock,
//     vs a raw boost::interprocess::vector<int64> in the same managed_shared_memory
//     segment under its own raw robust mutex, locked once per push and once per pop;
//   each with 1 and 2 processes, and the 2-process runs against Python 3 with 2
//   processes doing `with lock: d[k] = d.get(k, 0) + 1` on a Manager().dict() under a
//   Manager().Lock(), and `l.append(x); l.pop()` on a Manager().list().
// Rates count operations: one increment for the map; one push_back or one pop_back for
//   the vector (so one iteration is two operations).
// Timing: the workers announce they are ready and spin until the parent takes the start
//   time and raises the go flag; each worker stores its end time (CLOCK_MONOTONIC, the
//   same clock in every process) and the run lasts from the start to the last end.
// Checks: every run checks the exact result and the program fails loudly if it is wrong:
//   the map holds exactly the keys used, each with the count of increments made to it;
//   the vector ends empty, no pop_back found it empty, the pops add up to the pushes and
//   the popped values sum to the pushed ones.
// Statistics: every variant runs once per round, rounds repeated (>= 5), and the order of
//   procshare and baseline alternates between rounds. Rates are the median over rounds;
//   a ratio is the median of the per-round ratios (pairs measured back to back), printed
//   with the lowest and highest per-round ratio.
// Output: a table, then one line per target saying "met" or "NOT met". Exit status 0
//   when every run was correct (whether or not the targets were met), 1 on any failure.
// Cleanup: the segments "ps-bench-containers-<pid>" (procshare) and
//   "ps-bench-containers-raw-<pid>" (Boost) are removed on return, on failure and on
//   SIGINT/SIGTERM/SIGHUP; workers die with the parent (PR_SET_PDEATHSIG).
//
// Usage: containers_bench [--quick] [--scale=F] [--rounds=N] [--no-python]
//   --quick       about 10 s: short runs, 5 rounds
//   --scale=F     make every run F times longer (default 1: about 30 s in all)
//   --rounds=N    rounds per variant (at least 5; default 7, 5 with --quick)
//   --no-python   skip the Python comparison
// Each variant's iterations per run are calibrated at start-up so that a run lasts about
// 0.35 s (times --scale); Python does 1,500 increments and 5,000 push/pop pairs per
// process per run (30% of that with --quick): a Manager call is a round trip to the
// manager process, tens of microseconds.
#include <procshare/containers.hpp>
#include <procshare/segment.hpp>

#include "harness.hpp"

#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/containers/map.hpp>
#include <boost/interprocess/containers/vector.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

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
#include <functional>
#include <map>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

namespace bip = boost::interprocess;
using bench::fail;
using bench::max_workers;
using bench::RunResult;

// The map workload's keys: 0 .. map_keys - 1.
constexpr std::int64_t map_keys = 1000;
// Each container's arena (procshare) and the Boost segment: far more than the 1000 map
// nodes and the vector's few elements need.
constexpr std::size_t container_capacity = 1 << 20;

// ---------------------------------------------------------------------------------------
// The raw baseline: Boost containers in a managed_shared_memory segment, each under a raw
// robust mutex. The segment is made before any fork, so the workers inherit its mapping
// at the same address and use the parent's pointers into it.

using RawManager = bip::managed_shared_memory::segment_manager;
using RawMap = bip::map<std::int64_t, std::int64_t, std::less<std::int64_t>,
                        bip::allocator<std::pair<const std::int64_t, std::int64_t>, RawManager>>;
using RawVector = bip::vector<std::int64_t, bip::allocator<std::int64_t, RawManager>>;

// Creates the Boost segment `name` and removes it when destroyed (only in the process that
// created it: a forked worker _exits and never runs this destructor anyway).
class RawSegment {
public:
  explicit RawSegment(const std::string& name) : name_(name) {
    try {
      segment_ = bip::managed_shared_memory(bip::create_only, name_.c_str(), 4 * container_capacity);
    } catch (const bip::interprocess_exception& error) {
      fail("cannot create the Boost segment '{}': {}", name_, error.what());
    }
    created_ = true;
  }
  ~RawSegment() {
    if (created_ && ::getpid() == bench::parent_pid()) bip::shared_memory_object::remove(name_.c_str());
  }
  RawSegment(const RawSegment&) = delete;
  RawSegment& operator=(const RawSegment&) = delete;
  bip::managed_shared_memory& get() { return segment_; }

private:
  std::string name_;
  bip::managed_shared_memory segment_;
  bool created_ = false;
};

// ---------------------------------------------------------------------------------------
// What the workers share besides the two segments: the start barrier, the end times, the
// vector checks and the raw mutexes, in an anonymous MAP_SHARED mapping made before any
// fork. Each raw mutex has its own cache line, as each procshare container's lock does.

struct alignas(64) RawMutex {
  pthread_mutex_t mutex;
};

struct Control {
  bench::StartLine start;
  std::atomic<std::uint64_t> popped_sum[max_workers];  // vector: sum of the values popped
  std::atomic<std::int64_t> pops[max_workers];         // vector: pop_back()s that got one
  std::atomic<std::int64_t> empty_pops[max_workers];   // vector: pop_back()s that found none
  RawMutex raw_map_mutex;     // guards the RawMap
  RawMutex raw_vector_mutex;  // guards the RawVector
};

void init_raw_mutex(pthread_mutex_t& mutex, std::string_view what) {
  pthread_mutexattr_t attributes;
  int error = ::pthread_mutexattr_init(&attributes);
  if (error == 0) error = ::pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  if (error == 0) error = ::pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
  if (error == 0) error = ::pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_ERRORCHECK);
  if (error == 0) error = ::pthread_mutex_init(&mutex, &attributes);
  ::pthread_mutexattr_destroy(&attributes);
  if (error != 0) fail("cannot initialise the raw robust mutex of the {}: {}", what, std::strerror(error));
}

Control* map_control() {
  void* memory = ::mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) fail("cannot map the control block: {}", std::strerror(errno));
  auto* control = ::new (memory) Control{};
  init_raw_mutex(control->raw_map_mutex.mutex, "Boost map");
  init_raw_mutex(control->raw_vector_mutex.mutex, "Boost vector");
  return control;
}

void raw_lock(pthread_mutex_t& mutex) {
  if (const int error = ::pthread_mutex_lock(&mutex)) [[unlikely]]
    fail("raw pthread_mutex_lock: {}", std::strerror(error));
}

void raw_unlock(pthread_mutex_t& mutex) {
  if (const int error = ::pthread_mutex_unlock(&mutex)) [[unlikely]]
    fail("raw pthread_mutex_unlock: {}", std::strerror(error));
}

// ---------------------------------------------------------------------------------------
// The variants.

enum class Variant { map, raw_map, vector, raw_vector };

bool is_vector(Variant variant) { return variant == Variant::vector || variant == Variant::raw_vector; }

struct Shared {
  Control* control;
  procshare::Map<std::int64_t, std::int64_t> map;
  procshare::Vector<std::int64_t> vector;
  RawMap* raw_map;
  RawVector* raw_vector;
};

// One worker's K iterations; `index` is the worker's number (its vector values start at
// index * k, so that every pushed value is distinct).
void work(const Shared& shared, Variant variant, int index, std::int64_t k) {
  Control& control = *shared.control;
  switch (variant) {
    case Variant::map: {
      procshare::Map<std::int64_t, std::int64_t> map = shared.map;
      for (std::int64_t i = 0; i < k; ++i) {
        const std::int64_t key = i % map_keys;
        auto g = map.lock();
        g.insert_or_assign(key, g.get(key).value_or(0) + 1);
      }
      break;
    }
    case Variant::raw_map: {
      RawMap& map = *shared.raw_map;
      pthread_mutex_t& mutex = control.raw_map_mutex.mutex;
      for (std::int64_t i = 0; i < k; ++i) {
        const std::int64_t key = i % map_keys;
        raw_lock(mutex);
        const auto found = map.find(key);
        const std::int64_t old = found == map.end() ? 0 : found->second;
        map.insert_or_assign(key, old + 1);
        raw_unlock(mutex);
      }
      break;
    }
    case Variant::vector: {
      procshare::Vector<std::int64_t> vector = shared.vector;
      std::uint64_t sum = 0;
      std::int64_t pops = 0;
      std::int64_t empty = 0;
      for (std::int64_t i = 0; i < k; ++i) {
        vector.push_back(index * k + i);
        if (const std::optional<std::int64_t> popped = vector.pop_back()) {
          sum += static_cast<std::uint64_t>(*popped);
          ++pops;
        } else {
          ++empty;
        }
      }
      control.popped_sum[index].store(sum);
      control.pops[index].store(pops);
      control.empty_pops[index].store(empty);
      break;
    }
    case Variant::raw_vector: {
      RawVector& vector = *shared.raw_vector;
      pthread_mutex_t& mutex = control.raw_vector_mutex.mutex;
      std::uint64_t sum = 0;
      std::int64_t pops = 0;
      std::int64_t empty = 0;
      for (std::int64_t i = 0; i < k; ++i) {
        raw_lock(mutex);
        vector.push_back(index * k + i);
        raw_unlock(mutex);
        raw_lock(mutex);
        std::optional<std::int64_t> popped;
        if (!vector.empty()) {
          popped = vector.back();
          vector.pop_back();
        }
        raw_unlock(mutex);
        if (popped) {
          sum += static_cast<std::uint64_t>(*popped);
          ++pops;
        } else {
          ++empty;
        }
      }
      control.popped_sum[index].store(sum);
      control.pops[index].store(pops);
      control.empty_pops[index].store(empty);
      break;
    }
  }
}

// Empties the variant's container (no worker runs).
void reset_container(Shared& shared, Variant variant) {
  Control& control = *shared.control;
  switch (variant) {
    case Variant::map: shared.map.clear(); break;
    case Variant::raw_map:
      raw_lock(control.raw_map_mutex.mutex);
      shared.raw_map->clear();
      raw_unlock(control.raw_map_mutex.mutex);
      break;
    case Variant::vector: shared.vector.clear(); break;
    case Variant::raw_vector:
      raw_lock(control.raw_vector_mutex.mutex);
      shared.raw_vector->clear();
      raw_unlock(control.raw_vector_mutex.mutex);
      break;
  }
  for (int i = 0; i < max_workers; ++i) {
    control.popped_sum[i].store(0);
    control.pops[i].store(0);
    control.empty_pops[i].store(0);
  }
}

std::string_view variant_name(Variant variant) {
  switch (variant) {
    case Variant::map: return "procshare Map increment";
    case Variant::raw_map: return "Boost map + robust mutex";
    case Variant::vector: return "procshare Vector push/pop";
    case Variant::raw_vector: return "Boost vector + robust mutex";
  }
  return "?";
}

// The map's entries, copied (under its lock).
std::map<std::int64_t, std::int64_t> map_entries(Shared& shared, Variant variant) {
  if (variant == Variant::map) return shared.map.snapshot();
  pthread_mutex_t& mutex = shared.control->raw_map_mutex.mutex;
  raw_lock(mutex);
  std::map<std::int64_t, std::int64_t> entries(shared.raw_map->begin(), shared.raw_map->end());
  raw_unlock(mutex);
  return entries;
}

std::size_t vector_size(Shared& shared, Variant variant) {
  if (variant == Variant::vector) return shared.vector.size();
  pthread_mutex_t& mutex = shared.control->raw_vector_mutex.mutex;
  raw_lock(mutex);
  const std::size_t size = shared.raw_vector->size();
  raw_unlock(mutex);
  return size;
}

// Fails unless the container holds exactly what `processes` workers of `k` iterations
// leave behind (see "Checks" at the top).
void check_result(Shared& shared, Variant variant, int processes, std::int64_t k) {
  const std::string_view name = variant_name(variant);
  if (!is_vector(variant)) {
    const std::map<std::int64_t, std::int64_t> entries = map_entries(shared, variant);
    const std::int64_t keys = std::min(k, map_keys);
    if (static_cast<std::int64_t>(entries.size()) != keys)
      fail("WRONG RESULT: {} with {} processes x {} increments: {} keys, expected {}", name,
           processes, k, entries.size(), keys);
    std::int64_t total = 0;
    for (const auto& [key, count] : entries) {
      const std::int64_t expected = processes * (k / map_keys + (key < k % map_keys ? 1 : 0));
      if (key < 0 || key >= keys || count != expected)
        fail("WRONG RESULT: {} with {} processes x {} increments: key {} counted {}, "
             "expected {}",
             name, processes, k, key, count, key < 0 || key >= keys ? 0 : expected);
      total += count;
    }
    if (total != processes * k)
      fail("WRONG TOTAL: {} with {} processes x {} increments ended at {}, expected {}", name,
           processes, k, total, processes * k);
    return;
  }
  const Control& control = *shared.control;
  std::int64_t pops = 0;
  std::int64_t empty = 0;
  std::uint64_t popped_sum = 0;
  std::uint64_t pushed_sum = 0;  // modulo 2^64, as popped_sum
  for (int w = 0; w < processes; ++w) {
    pops += control.pops[w].load();
    empty += control.empty_pops[w].load();
    popped_sum += control.popped_sum[w].load();
    for (std::int64_t i = 0; i < k; ++i) pushed_sum += static_cast<std::uint64_t>(w * k + i);
  }
  const std::size_t size = vector_size(shared, variant);
  if (size != 0 || empty != 0 || pops != processes * k || popped_sum != pushed_sum)
    fail("WRONG RESULT: {} with {} processes x {} push/pop: final size {} (expected 0), "
         "{} pops (expected {}), {} found it empty (expected 0), popped values {} the pushed "
         "ones",
         name, processes, k, size, pops, processes * k, empty,
         popped_sum == pushed_sum ? "sum to" : "do NOT sum to");
}

// Runs `variant` in `processes` workers doing `k` iterations each. Fails if a worker
// fails, the run times out or the result is not exactly right (check_result).
RunResult run_workers(Shared& shared, Variant variant, int processes, std::int64_t k) {
  reset_container(shared, variant);
  const bench::Timing timing = bench::run_timed_workers(
      shared.control->start, processes, variant_name(variant),
      [&shared, variant, k](int index) { work(shared, variant, index, k); });
  check_result(shared, variant, processes, k);
  const std::int64_t operations = processes * k * (is_vector(variant) ? 2 : 1);
  return timing.result(static_cast<double>(operations));
}

// ---------------------------------------------------------------------------------------
// Python: Manager().dict() under a Manager().Lock(), and Manager().list(), same barrier
// and end-time scheme and the same checks, run in a python3 child; it prints its
// operations/s and the workers' CPU time over the wall time (the manager process's own
// CPU time not included).

constexpr const char* python_script = R"py(
import multiprocessing as mp
import sys
import time

KEYS = 1000

def work(kind, shared, lock, n, ready, go, ends, cpus, sums, index):
    # A proxy connects to the manager on first use: do that before the start.
    with lock:
        len(shared)
    ready.release()
    go.wait()
    cpu = time.process_time()
    if kind == "dict":
        for i in range(n):
            k = i % KEYS
            with lock:
                shared[k] = shared.get(k, 0) + 1
    else:
        total = 0
        for i in range(n):
            shared.append(index * n + i)
            total += shared.pop()
        sums[index] = total
    ends[index] = time.perf_counter()
    cpus[index] = time.process_time() - cpu

if __name__ == "__main__":
    kind, n, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        shared = manager.dict() if kind == "dict" else manager.list()
        lock = manager.Lock()
        ready, go = ctx.Semaphore(0), ctx.Event()
        ends = ctx.Array("d", processes, lock=False)
        cpus = ctx.Array("d", processes, lock=False)
        sums = ctx.Array("q", processes, lock=False)
        workers = [ctx.Process(target=work, args=(kind, shared, lock, n, ready, go, ends,
                                                  cpus, sums, i))
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
        if kind == "dict":
            got = dict(shared)
            expected = {k: processes * (n // KEYS + (1 if k < n % KEYS else 0))
                        for k in range(min(n, KEYS))}
            if got != expected:
                sys.exit(f"WRONG RESULT: dict total {sum(got.values())}, "
                         f"expected {n * processes}")
            operations = n * processes
        else:
            pushed = sum(w * n + i for w in range(processes) for i in range(n))
            if len(shared) != 0 or sum(sums) != pushed:
                sys.exit(f"WRONG RESULT: list size {len(shared)} (expected 0), popped sum "
                         f"{sum(sums)} (expected {pushed})")
            operations = 2 * n * processes
        seconds = max(ends) - start
        print(f"{operations / seconds:.1f} {sum(cpus) / seconds:.3f}")
)py";

// Runs the script on `kind` ("dict" or "list") with `n` iterations in each of `processes`
// processes. Fails if python fails or prints no rate.
RunResult run_python(std::string_view kind, std::int64_t n, int processes) {
  const std::string what = fmt::format("python {} ({} processes x {})", kind, processes, n);
  const std::string output = bench::run_python(
      python_script, {std::string(kind), std::to_string(n), std::to_string(processes)}, what);
  const std::vector<double> numbers = bench::parse_numbers(output);
  if (numbers.size() < 2 || !(numbers[0] > 0))
    fail("python {} printed no rate: '{}'", kind, output);
  const double operations = static_cast<double>(n * processes * (kind == "list" ? 2 : 1));
  return {numbers[0], operations / numbers[0], numbers[1]};
}

// ---------------------------------------------------------------------------------------
// Options and the report.

struct Options {
  double run_seconds = 0.35;          // target length of one run
  std::int64_t python_dict_k = 1'500;  // python increments per process per run (~0.5-1 s)
  std::int64_t python_list_k = 5'000;  // python push/pop pairs per process per run (~0.5 s)
  int rounds = 7;
  bool python = true;
};

Options parse_options(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: containers_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
      "  --quick      about 10 s: short runs, 5 rounds\n"
      "  --scale=F    make every run F times longer (default: about 30 s in all)\n"
      "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
      "  --no-python  skip the comparison with Python's Manager().dict() and .list()");
  Options options;
  options.rounds = common.rounds;
  options.python = common.python;
  const double scale = common.scale * (common.quick ? 0.15 : 1.0);
  options.run_seconds *= scale;
  const double python_scale = std::min(1.0, 2 * scale);
  options.python_dict_k = std::max<std::int64_t>(
      100, std::llround(static_cast<double>(options.python_dict_k) * python_scale));
  options.python_list_k = std::max<std::int64_t>(
      100, std::llround(static_cast<double>(options.python_list_k) * python_scale));
  return options;
}

int run(int argc, char** argv) {
  const Options options = parse_options(argc, argv);

  bench::install_signal_handlers("containers_bench");
  const std::string name = fmt::format("ps-bench-containers-{}", bench::parent_pid());
  const std::string raw_name = fmt::format("ps-bench-containers-raw-{}", bench::parent_pid());
  bench::remember_path(0, name);
  bench::remember_path(1, raw_name);
  procshare::Segment segment = procshare::Segment::create(name, 4 * container_capacity);
  RawSegment raw_segment(raw_name);

  bip::managed_shared_memory& raw = raw_segment.get();
  Shared shared{map_control(),
                segment.create_map<std::int64_t, std::int64_t>("counts", container_capacity),
                segment.create_vector<std::int64_t>("stack", container_capacity),
                raw.construct<RawMap>("counts")(raw.get_segment_manager()),
                raw.construct<RawVector>("stack")(raw.get_segment_manager())};

  const bool python = options.python && bench::python_available();
  if (options.python && !python)
    std::fprintf(stderr, "containers_bench: python3 with multiprocessing not found: skipping it\n");

  auto runner = [&shared](Variant variant, int processes) {
    return [&shared, variant, processes](std::int64_t k) {
      return run_workers(shared, variant, processes, k);
    };
  };
  bench::Pair pairs[] = {
      {runner(Variant::map, 1), runner(Variant::raw_map, 1)},
      {runner(Variant::map, 2), runner(Variant::raw_map, 2)},
      {runner(Variant::vector, 1), runner(Variant::raw_vector, 1)},
      {runner(Variant::vector, 2), runner(Variant::raw_vector, 2)},
  };
  bench::Series python_dict_series;
  bench::Series python_list_series;
  for (bench::Pair& pair : pairs) pair.calibrate(options.run_seconds);

  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  fmt::print("containers_bench: {} rounds, {} CPUs online; iterations per process per run: "
             "Map {}/{}, Vector {}/{} (1/2 processes), python dict {}, list {}\n",
             options.rounds, cpus, pairs[0].k, pairs[1].k, pairs[2].k, pairs[3].k,
             python ? options.python_dict_k : 0, python ? options.python_list_k : 0);
  if (cpus < 2)
    fmt::print("containers_bench: fewer than 2 CPUs: the 2-process runs measure time slicing\n");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fmt::print("containers_bench: built with a sanitizer: the ratios below are not meaningful\n");
#endif
  std::fflush(stdout);

  const double elapsed = bench::run_rounds(options.rounds, [&](int round) {
    for (bench::Pair& pair : pairs) pair.run_round(round % 2 == 1);
    if (python) {
      python_dict_series.add(run_python("dict", options.python_dict_k, 2));
      python_list_series.add(run_python("list", options.python_list_k, 2));
    }
  });

  std::vector<bench::RateRow> rows = {
      {"Map increment (1 proc) vs Boost map", &pairs[0].ours_series, &pairs[0].baseline_series,
       0.0},
      {"Map increment (2 proc) vs Boost map", &pairs[1].ours_series, &pairs[1].baseline_series,
       0.7},
      {"Vector push/pop (1 proc) vs Boost vector", &pairs[2].ours_series,
       &pairs[2].baseline_series, 0.0},
      {"Vector push/pop (2 proc) vs Boost vector", &pairs[3].ours_series,
       &pairs[3].baseline_series, 0.7},
  };
  if (python) {
    rows.push_back({"Map increment (2 proc) vs Python dict", &pairs[1].ours_series,
                    &python_dict_series, 100.0});
    rows.push_back({"Vector push/pop (2 proc) vs Python list", &pairs[3].ours_series,
                    &python_list_series, 100.0});
  }
  const std::vector<std::string> verdicts = bench::print_rate_table(rows);
  if (!python) fmt::print("{:<42} {:>12}\n", "Python comparison", "skipped");

  fmt::print("\nrates: operations/s (an increment; a push_back or a pop_back), median of {} "
             "interleaved rounds;\nratio: median of per-round ratios; measured rounds took "
             "{:.1f} s\n",
             options.rounds, elapsed);
  // A worker with a CPU of its own is busy throughout (1.00 per worker). Two workers
  // taking turns at a contended lock are not: the waiter sleeps in the kernel while the
  // holder runs, so about 1.00 in all is expected there even on an idle machine.
  const auto busy = [](const bench::Series& series) { return series.busy(); };
  fmt::print("CPUs busy (workers' CPU time / wall time, median):\n  1 process (1.00 = a CPU of "
             "its own throughout): Map {:.2f}, Boost map {:.2f}, Vector {:.2f}, Boost vector "
             "{:.2f}\n  2 processes (about 1.00 expected: the waiter sleeps on the contended "
             "lock): Map {:.2f}, Boost map {:.2f},\n    Vector {:.2f}, Boost vector {:.2f}{}\n\n",
             busy(pairs[0].ours_series), busy(pairs[0].baseline_series),
             busy(pairs[2].ours_series), busy(pairs[2].baseline_series),
             busy(pairs[1].ours_series), busy(pairs[1].baseline_series),
             busy(pairs[3].ours_series), busy(pairs[3].baseline_series),
             python ? fmt::format("\n  Python 2 processes: dict {:.2f}, list {:.2f} (its workers "
                                  "only: they mostly wait for the manager process)",
                                  busy(python_dict_series), busy(python_list_series))
                    : "");
  double least_busy = 2.0;
  for (const bench::Pair& pair : pairs)
    least_busy = std::min({least_busy, busy(pair.ours_series), busy(pair.baseline_series)});
  if (least_busy < 0.9)
    fmt::print("WARNING: the workers did not have a CPU's worth of time throughout (other load "
               "on the machine?),\n  so the rates above measure time slicing as well as the "
               "containers.\n\n");
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
