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

using Clock = std::chrono::steady_clock;

constexpr int max_workers = 2;
// How long one run may take before its workers are killed and the benchmark fails.
constexpr std::chrono::seconds run_timeout{120};

// ---------------------------------------------------------------------------------------
// Failure: a message on stderr and a non-zero exit, after the segment has been removed.

struct BenchFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw BenchFailure(fmt::format(format, std::forward<Args>(args)...));
}

// ---------------------------------------------------------------------------------------
// Signals: remove the segment and kill the workers, then die of the signal.

char shm_path[128];                      // "/dev/shm/ps-bench-<pid>", set before any signal
// Pids of running workers (a negative pid names a process group), for the signal handler.
volatile sig_atomic_t live_workers[max_workers] = {};
pid_t parent_pid = 0;

extern "C" void on_fatal_signal(int signal_number) {
  if (::getpid() == parent_pid) {
    for (const sig_atomic_t pid : live_workers)
      if (pid != 0) ::kill(static_cast<pid_t>(pid), SIGKILL);
    if (shm_path[0] != '\0') ::unlink(shm_path);
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
// What the workers share besides the procshare segment: the start barrier, the end times
// and the raw baselines, in an anonymous MAP_SHARED mapping made before any fork.

// The raw mutex and its counter share a cache line, as Value's lock and value do.
struct alignas(64) RawLocked {
  pthread_mutex_t mutex;
  std::int64_t value;
};

struct Control {
  alignas(64) std::atomic<int> ready;  // workers that are waiting for go
  alignas(64) std::atomic<int> go;     // 1: start now
  alignas(64) std::atomic<std::int64_t> end_ns[max_workers];  // steady_clock, per worker
  std::atomic<std::int64_t> cpu_ns[max_workers];  // CPU time each worker spent after go
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

// Forks a worker that waits for go, does its increments, stores its end time and _exits
// (0, or 1 with a message on stderr). It never returns from main, so never runs the
// Segment destructor.
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
    increment(shared, variant, k);
    control.end_ns[index].store(now_ns());
    control.cpu_ns[index].store(cpu_now_ns() - cpu_start);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "value_bench: worker %d (%s): %s\n", static_cast<int>(::getpid()),
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
  double rate;         // increments per second, all workers together
  double seconds;      // from go to the last worker's end
  double parallelism;  // the workers' CPU time over the wall time: 2.0 when two workers
                       // ran side by side throughout, 1.0 when they took turns on one CPU
};

// Runs `variant` in `processes` workers doing `k` increments each.
// Fails if a worker fails, the run times out or the final total is not processes * k.
RunResult run_workers(Shared& shared, Variant variant, int processes, std::int64_t k) {
  Control& control = *shared.control;
  reset_counter(shared, variant);
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

  const std::int64_t expected = processes * k;
  const std::int64_t total = read_counter(shared, variant);
  if (total != expected)
    fail("WRONG TOTAL: {} with {} processes x {} increments ended at {}, expected {} "
         "(lost {})",
         variant_name(variant), processes, k, total, expected, expected - total);

  std::int64_t end = 0;
  std::int64_t cpu = 0;
  for (int i = 0; i < processes; ++i) {
    end = std::max(end, control.end_ns[i].load());
    cpu += control.cpu_ns[i].load();
  }
  if (end <= start) fail("{}: a worker did not record its end time", variant_name(variant));
  const double seconds = static_cast<double>(end - start) * 1e-9;
  return {static_cast<double>(expected) / seconds, seconds, static_cast<double>(cpu) * 1e-9 / seconds};
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

// Whether python3 runs here at all.
bool python_available() {
  return std::system("python3 -c 'import multiprocessing' >/dev/null 2>&1") == 0;
}

// Runs the script with `n` increments in each of `processes` processes. Fails if python
// fails or prints no rate.
RunResult run_python(std::int64_t n, int processes) {
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
    const std::string n_arg = std::to_string(n);
    const std::string processes_arg = std::to_string(processes);
    ::execlp("python3", "python3", "-c", python_script, n_arg.c_str(), processes_arg.c_str(),
             static_cast<char*>(nullptr));
    std::fprintf(stderr, "value_bench: cannot run python3: %s\n", std::strerror(errno));
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
    fail("python: no result within {} s", run_timeout.count());
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
    fail("python ({} processes x {}) {}", processes, n, describe_status(*status));
  char* rate_end = nullptr;
  const double rate = std::strtod(output.c_str(), &rate_end);
  char* parallelism_end = nullptr;
  const double parallelism = std::strtod(rate_end, &parallelism_end);
  if (rate_end == output.c_str() || parallelism_end == rate_end || !(rate > 0))
    fail("python printed no rate: '{}'", output);
  return {rate, static_cast<double>(n * processes) / rate, parallelism};
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
  double run_seconds = 0.35;      // target length of one run
  std::int64_t python_k = 100'000;  // python increments per process per run (~0.1-0.3 s)
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
      std::puts("usage: value_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
                "  --quick      about 5 s: short runs, 5 rounds\n"
                "  --scale=F    make every run F times longer (default: about 30 s in all)\n"
                "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
                "  --no-python  skip the comparison with Python's multiprocessing.Value");
      std::exit(0);
    } else {
      fail("unknown argument '{}' (try --help)", arg);
    }
  }
  options.run_seconds *= scale;
  options.python_k = std::max<std::int64_t>(
      1000, std::llround(static_cast<double>(options.python_k) * std::min(1.0, 2 * scale)));
  return options;
}

// procshare's variant and the raw one it is compared with, in `processes` workers.
struct Pair {
  Variant ours;
  Variant baseline;
  int processes;
  std::int64_t k = 0;  // increments per worker per run, from calibrate()
  Series ours_series{};
  Series baseline_series{};
};

// Chooses the pair's k so that the slower of the two runs lasts about `run_seconds`
// (also warming up the mappings and code: these runs are not counted).
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
  const std::string name = fmt::format("ps-bench-{}", parent_pid);
  fmt::format_to_n(shm_path, sizeof shm_path - 1, "/dev/shm/{}", name);
  install_signal_handlers();
  procshare::Segment segment = procshare::Segment::create(name, 256 * 1024);

  Shared shared{map_control(), segment.create_value<std::int64_t>("counter", 0),
                segment.create_atomic<std::int64_t>("atomic", 0)};

  const bool python = options.python && python_available();
  if (options.python && !python)
    std::fprintf(stderr, "value_bench: python3 with multiprocessing not found: skipping it\n");
  const bool progress = ::isatty(STDERR_FILENO) != 0;

  Pair pairs[] = {
      {Variant::value, Variant::raw_mutex, 1},
      {Variant::value, Variant::raw_mutex, 2},
      {Variant::atomic, Variant::raw_atomic, 1},
      {Variant::atomic, Variant::raw_atomic, 2},
  };
  Series python_series;
  for (Pair& pair : pairs) calibrate(shared, pair, options.run_seconds);

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
    if (python) python_series.add(run_python(options.python_k, 2));
    if (progress) std::fprintf(stderr, "\rround %d/%d done", round + 1, options.rounds);
  }
  if (progress) std::fprintf(stderr, "\r%40s\r", "");
  const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();

  const std::vector<Row> rows = [&] {
    std::vector<Row> r = {
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
      r.push_back({"Value += (2 proc) vs Python Value", &pairs[1].ours_series, &python_series,
                   30.0});
      r.push_back({"Atomic fetch_add (2 proc) vs Python Value", &pairs[3].ours_series,
                   &python_series, 0.0});
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

  fmt::print("\nrates: median of {} interleaved rounds; ratio: median of per-round ratios; "
             "measured rounds took {:.1f} s\n",
             options.rounds, elapsed);
  fmt::print("2-process runs, CPUs busy (workers' CPU time / wall time, median; 2.00 = side "
             "by side throughout, 1.00 = taking turns):\n  Value {:.2f}, robust mutex {:.2f}, "
             "Atomic {:.2f}, std::atomic {:.2f}{}\n\n",
             median(pairs[1].ours_series.parallelism),
             median(pairs[1].baseline_series.parallelism),
             median(pairs[3].ours_series.parallelism),
             median(pairs[3].baseline_series.parallelism),
             python ? fmt::format(", Python {:.2f}", median(python_series.parallelism)) : "");
  if (std::min({median(pairs[1].ours_series.parallelism),
                median(pairs[1].baseline_series.parallelism),
                median(pairs[3].ours_series.parallelism),
                median(pairs[3].baseline_series.parallelism)}) < 1.5)
    fmt::print("WARNING: the 2-process workers mostly took turns on one CPU (other load on the "
               "machine?),\n  so the 2-process rows measure time slicing, not contention.\n\n");
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "\nvalue_bench: FAILED: %s\n", error.what());
    return 1;
  }
}
