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
using Clock = std::chrono::steady_clock;

constexpr int max_workers = 2;
// How long one run may take before its workers are killed and the benchmark fails.
constexpr std::chrono::seconds run_timeout{120};
// The map workload's keys: 0 .. map_keys - 1.
constexpr std::int64_t map_keys = 1000;
// Each container's arena (procshare) and the Boost segment: far more than the 1000 map
// nodes and the vector's few elements need.
constexpr std::size_t container_capacity = 1 << 20;

// ---------------------------------------------------------------------------------------
// Failure: a message on stderr and a non-zero exit, after the segments have been removed.

struct BenchFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw BenchFailure(fmt::format(format, std::forward<Args>(args)...));
}

// ---------------------------------------------------------------------------------------
// Signals: remove the segments and kill the workers, then die of the signal.

char shm_path[128];      // "/dev/shm/ps-bench-containers-<pid>", set before any signal
char raw_shm_path[128];  // "/dev/shm/ps-bench-containers-raw-<pid>"
// Pids of running workers (a negative pid names a process group), for the signal handler.
volatile sig_atomic_t live_workers[max_workers] = {};
pid_t parent_pid = 0;

extern "C" void on_fatal_signal(int signal_number) {
  if (::getpid() == parent_pid) {
    for (const sig_atomic_t pid : live_workers)
      if (pid != 0) ::kill(static_cast<pid_t>(pid), SIGKILL);
    if (shm_path[0] != '\0') ::unlink(shm_path);
    if (raw_shm_path[0] != '\0') ::unlink(raw_shm_path);
  }
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number);
}

constexpr int fatal_signals[] = {SIGINT, SIGTERM, SIGHUP};

void install_signal_handlers() {
  for (const int s : fatal_signals) ::signal(s, on_fatal_signal);
}

void reset_signal_handlers() {
  for (const int s : fatal_signals) ::signal(s, SIG_DFL);
}

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
    if (created_ && ::getpid() == parent_pid) bip::shared_memory_object::remove(name_.c_str());
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
  alignas(64) std::atomic<int> ready;  // workers that are waiting for go
  alignas(64) std::atomic<int> go;     // 1: start now
  alignas(64) std::atomic<std::int64_t> end_ns[max_workers];  // steady_clock, per worker
  std::atomic<std::int64_t> cpu_ns[max_workers];  // CPU time each worker spent after go
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

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// CPU time this process has used.
std::int64_t cpu_now_ns() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

// ---------------------------------------------------------------------------------------
// Worker processes.

// Forks a worker that waits for go, does its iterations, stores its end time and _exits
// (0, or 1 with a message on stderr). It never returns from main, so never runs the
// Segment or RawSegment destructor.
pid_t fork_worker(const Shared& shared, Variant variant, int index, std::int64_t k) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid > 0) return pid;
  int code = 0;
  try {
    reset_signal_handlers();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent_pid) ::_exit(3);
    Control& control = *shared.control;
    control.ready.fetch_add(1);
    while (control.go.load(std::memory_order_acquire) == 0) ::sched_yield();
    const std::int64_t cpu_start = cpu_now_ns();
    work(shared, variant, index, k);
    control.end_ns[index].store(now_ns());
    control.cpu_ns[index].store(cpu_now_ns() - cpu_start);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "containers_bench: worker %d (%s): %s\n", static_cast<int>(::getpid()),
                 std::string(variant_name(variant)).c_str(), error.what());
    code = 1;
  } catch (...) {
    code = 1;
  }
  ::_exit(code);
}

// Waits for `pid` until `deadline`; returns its wait status, or nullopt on timeout.
std::optional<int> wait_until(pid_t pid, Clock::time_point deadline) {
  const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
  if (pidfd >= 0) {
    for (;;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd watched{static_cast<int>(pidfd), POLLIN, 0};
      const int ready = ::poll(&watched, 1, static_cast<int>(std::max<long>(0, left.count())));
      if (ready > 0) break;
      if (ready == 0) {
        ::close(static_cast<int>(pidfd));
        return std::nullopt;
      }
      if (errno != EINTR) break;  // fall back to a plain waitpid
    }
    ::close(static_cast<int>(pidfd));
  } else {
    // No pidfd here: poll the child every millisecond.
    for (;;) {
      int status = 0;
      const pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done == pid) return status;
      if (done < 0 && errno != EINTR) fail("waitpid: {}", std::strerror(errno));
      if (Clock::now() >= deadline) return std::nullopt;
      ::usleep(1000);
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waitpid: {}", std::strerror(errno));
  return status;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("ended with wait status {}", status);
}

void kill_workers(const std::vector<pid_t>& pids) {
  for (const pid_t pid : pids) {
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  }
  for (auto& slot : live_workers) slot = 0;
}

// What one run measured.
struct RunResult {
  double rate;         // operations per second, all workers together
  double seconds;      // from go to the last worker's end
  double parallelism;  // the workers' CPU time over the wall time: 2.0 when two workers
                       // ran side by side throughout, 1.0 when they took turns on one CPU
};

// Runs `variant` in `processes` workers doing `k` iterations each. Fails if a worker
// fails, the run times out or the result is not exactly right (check_result).
RunResult run_workers(Shared& shared, Variant variant, int processes, std::int64_t k) {
  Control& control = *shared.control;
  reset_container(shared, variant);
  control.ready.store(0);
  control.go.store(0);
  for (auto& end : control.end_ns) end.store(0);
  for (auto& cpu : control.cpu_ns) cpu.store(0);

  std::vector<pid_t> pids;
  for (int i = 0; i < processes; ++i) {
    pids.push_back(fork_worker(shared, variant, i, k));
    live_workers[i] = pids.back();
  }
  const auto deadline = Clock::now() + run_timeout;
  while (control.ready.load() < processes) {
    for (const pid_t pid : pids) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        std::erase(pids, pid);
        kill_workers(pids);
        fail("{} worker {} {} before starting", variant_name(variant), pid,
             describe_status(status));
      }
    }
    if (Clock::now() > deadline) {
      kill_workers(pids);
      fail("{}: workers did not start within {} s", variant_name(variant), run_timeout.count());
    }
    ::sched_yield();
  }
  const std::int64_t start = now_ns();
  control.go.store(1, std::memory_order_release);

  std::string failures;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    const std::optional<int> status = wait_until(pids[i], deadline);
    if (!status) {
      kill_workers(pids);
      fail("{} with {} processes: no result within {} s (hung?)", variant_name(variant),
           processes, run_timeout.count());
    }
    live_workers[i] = 0;
    if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
      failures += fmt::format(" worker {} {};", pids[i], describe_status(*status));
  }
  if (!failures.empty()) fail("{} with {} processes:{}", variant_name(variant), processes, failures);

  check_result(shared, variant, processes, k);

  std::int64_t end = 0;
  std::int64_t cpu = 0;
  for (int i = 0; i < processes; ++i) {
    end = std::max(end, control.end_ns[i].load());
    cpu += control.cpu_ns[i].load();
  }
  if (end <= start) fail("{}: a worker did not record its end time", variant_name(variant));
  const double seconds = static_cast<double>(end - start) * 1e-9;
  const std::int64_t operations = processes * k * (is_vector(variant) ? 2 : 1);
  return {static_cast<double>(operations) / seconds, seconds,
          static_cast<double>(cpu) * 1e-9 / seconds};
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

// Whether python3 runs here at all.
bool python_available() {
  return std::system("python3 -c 'import multiprocessing' >/dev/null 2>&1") == 0;
}

// Runs the script on `kind` ("dict" or "list") with `n` iterations in each of `processes`
// processes. Fails if python fails or prints no rate.
RunResult run_python(std::string_view kind, std::int64_t n, int processes) {
  int out[2];
  if (::pipe(out) != 0) fail("pipe: {}", std::strerror(errno));
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid == 0) {
    reset_signal_handlers();
    ::setpgid(0, 0);  // its own group, so that python's workers can be killed with it
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    const std::string kind_arg(kind);
    const std::string n_arg = std::to_string(n);
    const std::string processes_arg = std::to_string(processes);
    ::execlp("python3", "python3", "-c", python_script, kind_arg.c_str(), n_arg.c_str(),
             processes_arg.c_str(), static_cast<char*>(nullptr));
    std::fprintf(stderr, "containers_bench: cannot run python3: %s\n", std::strerror(errno));
    ::_exit(127);
  }
  live_workers[0] = -pid;  // the signal handler kills the whole group
  ::close(out[1]);
  std::string output;
  char buffer[256];
  for (;;) {
    const ssize_t got = ::read(out[0], buffer, sizeof buffer);
    if (got > 0) {
      output.append(buffer, static_cast<std::size_t>(got));
    } else if (got == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(out[0]);
  const std::optional<int> status = wait_until(pid, Clock::now() + run_timeout);
  live_workers[0] = 0;
  if (!status) {
    ::kill(-pid, SIGKILL);
    kill_workers({pid});
    fail("python {}: no result within {} s", kind, run_timeout.count());
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
    fail("python {} ({} processes x {}) {}", kind, processes, n, describe_status(*status));
  char* rate_end = nullptr;
  const double rate = std::strtod(output.c_str(), &rate_end);
  char* parallelism_end = nullptr;
  const double parallelism = std::strtod(rate_end, &parallelism_end);
  if (rate_end == output.c_str() || parallelism_end == rate_end || !(rate > 0))
    fail("python {} printed no rate: '{}'", kind, output);
  const double operations = static_cast<double>(n * processes * (kind == "list" ? 2 : 1));
  return {rate, operations / rate, parallelism};
}

// ---------------------------------------------------------------------------------------
// Statistics and the table.

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Rates of one variant over the rounds.
struct Series {
  std::vector<double> rates;
  std::vector<double> parallelism;
  double median_rate() const { return median(rates); }
  void add(const RunResult& result) {
    rates.push_back(result.rate);
    parallelism.push_back(result.parallelism);
  }
};

struct Row {
  std::string name;
  const Series* ours;
  const Series* baseline;
  double target;  // ratio to reach; 0: none
};

std::string rate_text(double rate) {
  if (rate >= 1e6) return fmt::format("{:.2f} M/s", rate / 1e6);
  return fmt::format("{:.1f} k/s", rate / 1e3);
}

std::string ratio_text(double ratio) {
  return ratio >= 10 ? fmt::format("{:.0f}x", ratio) : fmt::format("{:.2f}x", ratio);
}

struct Options {
  double run_seconds = 0.35;          // target length of one run
  std::int64_t python_dict_k = 1'500;  // python increments per process per run (~0.5-1 s)
  std::int64_t python_list_k = 5'000;  // python push/pop pairs per process per run (~0.5 s)
  int rounds = 7;
  bool python = true;
};

Options parse_options(int argc, char** argv) {
  Options options;
  bool rounds_given = false;
  double scale = 1.0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--quick") {
      scale *= 0.15;
      if (!rounds_given) options.rounds = 5;
    } else if (arg.starts_with("--scale=")) {
      char* end = nullptr;
      const double value = std::strtod(argv[i] + 8, &end);
      if (end == argv[i] + 8 || *end != '\0' || !(value > 0) || !std::isfinite(value))
        fail("--scale wants a positive number, got '{}'", argv[i] + 8);
      scale *= value;
    } else if (arg.starts_with("--rounds=")) {
      char* end = nullptr;
      const long rounds = std::strtol(argv[i] + 9, &end, 10);
      if (end == argv[i] + 9 || *end != '\0' || rounds < 5 || rounds > 1000)
        fail("--rounds wants a whole number from 5 to 1000, got '{}'", argv[i] + 9);
      options.rounds = static_cast<int>(rounds);
      rounds_given = true;
    } else if (arg == "--no-python") {
      options.python = false;
    } else if (arg == "--help" || arg == "-h") {
      std::puts("usage: containers_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
                "  --quick      about 10 s: short runs, 5 rounds\n"
                "  --scale=F    make every run F times longer (default: about 30 s in all)\n"
                "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
                "  --no-python  skip the comparison with Python's Manager().dict() and .list()");
      std::exit(0);
    } else {
      fail("unknown argument '{}' (try --help)", arg);
    }
  }
  options.run_seconds *= scale;
  const double python_scale = std::min(1.0, 2 * scale);
  options.python_dict_k = std::max<std::int64_t>(
      100, std::llround(static_cast<double>(options.python_dict_k) * python_scale));
  options.python_list_k = std::max<std::int64_t>(
      100, std::llround(static_cast<double>(options.python_list_k) * python_scale));
  return options;
}

// procshare's variant and the raw one it is compared with, in `processes` workers.
struct Pair {
  Variant ours;
  Variant baseline;
  int processes;
  std::int64_t k = 0;  // iterations per worker per run, from calibrate()
  Series ours_series{};
  Series baseline_series{};
};

// Chooses the pair's k so that the slower of the two runs lasts about `run_seconds`
// (also warming up the mappings, containers and code: these runs are not counted).
void calibrate(Shared& shared, Pair& pair, double run_seconds) {
  std::int64_t k = 10'000;
  for (;;) {
    const RunResult ours = run_workers(shared, pair.ours, pair.processes, k);
    const RunResult baseline = run_workers(shared, pair.baseline, pair.processes, k);
    const double seconds = std::max(ours.seconds, baseline.seconds);
    // Short runs overstate 2-process rates (the second worker may start after the first
    // is done), so the run measured here must itself be long enough to overlap.
    if (seconds >= 0.1 || k >= (std::int64_t{1} << 40)) {
      pair.k = std::max<std::int64_t>(
          1000, std::llround(static_cast<double>(k) * run_seconds / seconds));
      return;
    }
    k *= 4;
  }
}

int run(int argc, char** argv) {
  const Options options = parse_options(argc, argv);

  parent_pid = ::getpid();
  const std::string name = fmt::format("ps-bench-containers-{}", parent_pid);
  const std::string raw_name = fmt::format("ps-bench-containers-raw-{}", parent_pid);
  fmt::format_to_n(shm_path, sizeof shm_path - 1, "/dev/shm/{}", name);
  fmt::format_to_n(raw_shm_path, sizeof raw_shm_path - 1, "/dev/shm/{}", raw_name);
  install_signal_handlers();
  procshare::Segment segment = procshare::Segment::create(name, 4 * container_capacity);
  RawSegment raw_segment(raw_name);

  bip::managed_shared_memory& raw = raw_segment.get();
  Shared shared{map_control(),
                segment.create_map<std::int64_t, std::int64_t>("counts", container_capacity),
                segment.create_vector<std::int64_t>("stack", container_capacity),
                raw.construct<RawMap>("counts")(raw.get_segment_manager()),
                raw.construct<RawVector>("stack")(raw.get_segment_manager())};

  const bool python = options.python && python_available();
  if (options.python && !python)
    std::fprintf(stderr, "containers_bench: python3 with multiprocessing not found: skipping it\n");
  const bool progress = ::isatty(STDERR_FILENO) != 0;

  Pair pairs[] = {
      {Variant::map, Variant::raw_map, 1},
      {Variant::map, Variant::raw_map, 2},
      {Variant::vector, Variant::raw_vector, 1},
      {Variant::vector, Variant::raw_vector, 2},
  };
  Series python_dict_series;
  Series python_list_series;
  for (Pair& pair : pairs) calibrate(shared, pair, options.run_seconds);

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

  const auto started = Clock::now();
  for (int round = 0; round < options.rounds; ++round) {
    const bool baseline_first = round % 2 == 1;
    for (Pair& pair : pairs) {
      if (baseline_first)
        pair.baseline_series.add(run_workers(shared, pair.baseline, pair.processes, pair.k));
      pair.ours_series.add(run_workers(shared, pair.ours, pair.processes, pair.k));
      if (!baseline_first)
        pair.baseline_series.add(run_workers(shared, pair.baseline, pair.processes, pair.k));
    }
    if (python) {
      python_dict_series.add(run_python("dict", options.python_dict_k, 2));
      python_list_series.add(run_python("list", options.python_list_k, 2));
    }
    if (progress) std::fprintf(stderr, "\rround %d/%d done", round + 1, options.rounds);
  }
  if (progress) std::fprintf(stderr, "\r%40s\r", "");
  const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();

  const std::vector<Row> rows = [&] {
    std::vector<Row> r = {
        {"Map increment (1 proc) vs Boost map", &pairs[0].ours_series,
         &pairs[0].baseline_series, 0.0},
        {"Map increment (2 proc) vs Boost map", &pairs[1].ours_series,
         &pairs[1].baseline_series, 0.7},
        {"Vector push/pop (1 proc) vs Boost vector", &pairs[2].ours_series,
         &pairs[2].baseline_series, 0.0},
        {"Vector push/pop (2 proc) vs Boost vector", &pairs[3].ours_series,
         &pairs[3].baseline_series, 0.7},
    };
    if (python) {
      r.push_back({"Map increment (2 proc) vs Python dict", &pairs[1].ours_series,
                   &python_dict_series, 100.0});
      r.push_back({"Vector push/pop (2 proc) vs Python list", &pairs[3].ours_series,
                   &python_list_series, 100.0});
    }
    return r;
  }();

  fmt::print("\n{:<42} {:>12} {:>12} {:>8}  {:<15} {}\n", "benchmark", "procshare", "baseline",
             "ratio", "(round range)", "target");
  std::vector<std::string> verdicts;
  for (const Row& row : rows) {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < row.ours->rates.size(); ++i)
      ratios.push_back(row.ours->rates[i] / row.baseline->rates[i]);
    const double ratio = median(ratios);
    const auto [low, high] = std::minmax_element(ratios.begin(), ratios.end());
    const std::string target =
        row.target > 0 ? fmt::format(">= {}", ratio_text(row.target)) : std::string("-");
    fmt::print("{:<42} {:>12} {:>12} {:>8}  {:<15} {}\n", row.name,
               rate_text(row.ours->median_rate()), rate_text(row.baseline->median_rate()),
               ratio_text(ratio), fmt::format("({}-{})", ratio_text(*low), ratio_text(*high)),
               target);
    if (row.target > 0) {
      const bool met = ratio >= row.target;
      verdicts.push_back(fmt::format(
          "{:<42} {} ({} vs target {}{})", row.name, met ? "met" : "NOT met", ratio_text(ratio),
          target, met ? "" : fmt::format(", {:.0f}% short", 100 * (1 - ratio / row.target))));
    }
  }
  if (!python) fmt::print("{:<42} {:>12}\n", "Python comparison", "skipped");

  fmt::print("\nrates: operations/s (an increment; a push_back or a pop_back), median of {} "
             "interleaved rounds;\nratio: median of per-round ratios; measured rounds took "
             "{:.1f} s\n",
             options.rounds, elapsed);
  // A worker with a CPU of its own is busy throughout (1.00 per worker). Two workers
  // taking turns at a contended lock are not: the waiter sleeps in the kernel while the
  // holder runs, so about 1.00 in all is expected there even on an idle machine.
  const auto busy = [](const Series& series) { return median(series.parallelism); };
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
  for (const Pair& pair : pairs)
    least_busy = std::min({least_busy, busy(pair.ours_series), busy(pair.baseline_series)});
  if (least_busy < 0.9)
    fmt::print("WARNING: the workers did not have a CPU's worth of time throughout (other load "
               "on the machine?),\n  so the rates above measure time slicing as well as the "
               "containers.\n\n");
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "\ncontainers_bench: FAILED: %s\n", error.what());
    return 1;
  }
}
