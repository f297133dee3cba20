// pool_bench: Pool (2 workers) measured against hand-written fork + shared-memory versions
// of the same work, and against Python's multiprocessing, in one run.
//
// Workloads (every worker is a forked process; procshare's run in one Pool of 2 workers,
// the raw baselines in 2 workers forked once at start-up that sleep on a futex between
// commands):
//   map: x -> 2x + 1 over 2,000,000 int64s, each call timed from the input vector to the
//     returned vector (copies in and out included). procshare: Pool::map(std::vector) with
//     automatic chunks (the target), and with Chunk{250000}, Python's default chunk size
//     here (shown, no target). Baseline: copy the input into a MAP_SHARED anonymous
//     mapping, wake the 2 pre-forked workers (futex), each computes its half into an
//     output array in the mapping, the last one wakes the parent (futex), copy the output
//     into a new vector. Python: multiprocessing.Pool(2).map(f, range(2_000_000)), default
//     chunks (250,000 items).
//   submit: 20,000 Pool::submit calls, then get() on every Future; tasks per second.
//     Python: concurrent.futures.ProcessPoolExecutor(2), 5,000 submits then result().
//   round trip: submit(f, i).get() one at a time (latency of each). Baseline: a raw futex
//     ping-pong with one pre-forked worker (shared words, FUTEX_WAIT / FUTEX_WAKE both
//     ways, no spinning).
//   early stop: map_async over 1,000 items whose tasks spin until
//     procshare::stop_requested(); once both workers are inside a task (and the parent
//     has slept 2 ms so that they own the CPUs), the time from job.cancel() until the
//     parent knows every worker is idle: wait_for() returns true, every worker having left
//     its task and settled its chunk (the issue's "stop raised -> every worker idle"; the
//     target). Also shown: until get() has thrown Stopped as well (a C++ throw and catch
//     costs 1.5-4.5 us here on its own). Baseline:
//     both pre-forked workers spin on a raw flag word in a MAP_SHARED mapping; the time
//     from storing the flag until the parent, asleep on a futex, is woken by the second
//     worker's acknowledgement. Also shown: until both tasks (workers) saw the stop, from
//     their own clock readings. Python: 2 processes polling multiprocessing.Event().is_set(),
//     from set() until the parent has acquired both workers' acknowledgements (Semaphore).
//   start + join: Pool(2 workers), one trivial submit().get(), ~Pool (close + join), in a
//     small helper process forked before the big buffers exist (as Python's run in a fresh
//     interpreter). Python: Pool(2), apply(f), close(), join(). Also shown (no target): the
//     same Pool with PoolOptions::arena_bytes = 1 MiB instead of the default 64 MiB, and
//     the three phases' medians.
// Checks: every map result, every Future's value, every ping-pong reply, each stopped job's
//   counts (2 items done, 998 dropped) and every Python result are checked exactly; the
//   program fails loudly if one is wrong.
// Statistics: rounds repeated (>= 5), the order of procshare and baseline alternating
//   between rounds (and between calls within a round). A round's figure is the median of
//   its calls or samples; the value shown is the median over all calls or samples (at
//   least 20 map calls and 20 early-stop trials); a ratio is the median of the per-round
//   ratios, printed with the lowest and highest. "x faster" ratios are baseline time over
//   procshare time (higher is better); "time" ratios are procshare time over baseline time
//   (lower is better). Latencies are also shown as median and 99th percentile.
// Load: the baseline map workers record their CPU time while computing (2.00 = both
//   CPUs busy throughout), and procshare's workers' CPU time per map call is read through
//   clock_getcpuclockid; a warning is printed when the workers mostly took turns. The
//   load average is printed at the start and the end.
// Output: a table, then one line per target saying "met" or "NOT met". Exit status 0
//   when every run was correct (whether or not the targets were met), 1 on any failure.
// Cleanup: the pools' control segments "ps-pool-bench-<pid>[-start-<n>]" are removed on
//   return, on failure (the pool is terminated first) and on SIGINT/SIGTERM/SIGHUP; the
//   raw workers and python die with the parent (PR_SET_PDEATHSIG), pool workers with
//   their supervisor, which watches the parent.
//
// Usage: pool_bench [--quick] [--scale=F] [--rounds=N] [--no-python]
//   --quick       about 10 s: 5 rounds, fewer samples, smaller Python runs, and a round
//                 stops calling map after 1.5 s of calls (so fewer than 20 if map is slow)
//   --scale=F     F times more calls, tasks and samples per round (default 1: about 20 s)
//   --rounds=N    rounds (at least 5; default 7, 5 with --quick)
//   --no-python   skip the Python comparisons
// (While Pool::map's automatic chunks stay at one item, a map call takes seconds: the
// default run then takes about 100 s, --quick about 25 s.)
#include <procshare/error.hpp>
#include <procshare/pool.hpp>

#include "harness.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
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

constexpr int worker_count = 2;
constexpr std::size_t map_items = 2'000'000;
constexpr std::uint64_t stop_items = 1000;

using bench::describe_status;
using bench::fail;
using bench::median;
using bench::now_ns;
using bench::percentile;
using bench::rate_text;
using bench::ratio_text;
using bench::reset_signal_handlers;
using bench::run_timeout;
using bench::seconds_since;
using bench::wait_until;
using bench::live_children;  // [0, 1]: raw workers; [2]: the start-trial helper

// The remembered shared-memory slots: the main pool, and the start/join pool alive now.
constexpr int main_pool_slot = 0;
constexpr int start_pool_slot = 1;
constexpr int helper_slot = worker_count;

// ---------------------------------------------------------------------------------------
// Time, CPU time and futexes.

std::int64_t clock_ns(clockid_t clock) {
  timespec t{};
  if (::clock_gettime(clock, &t) != 0) return -1;
  return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

// CPU time process `pid` has used (any process of ours: clock_getcpuclockid), or -1.
std::int64_t process_cpu_ns(pid_t pid) {
  clockid_t clock{};
  if (::clock_getcpuclockid(pid, &clock) != 0) return -1;
  return clock_ns(clock);
}

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Raw shared futex calls on a word in a MAP_SHARED mapping (what the baselines use).
// futex_sleep returns false when `timeout` passed (nullopt: no timeout).
bool futex_sleep(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                 std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
  timespec relative{};
  if (timeout) {
    relative.tv_sec = static_cast<time_t>(timeout->count() / 1'000'000'000);
    relative.tv_nsec = static_cast<long>(timeout->count() % 1'000'000'000);
  }
  const long result = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT,
                                expected, timeout ? &relative : nullptr, nullptr, 0);
  return !(result == -1 && errno == ETIMEDOUT);
}

void futex_wake_up(std::atomic<std::uint32_t>& word, int count = INT_MAX) {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr,
            nullptr, 0);
}

void sleep_for(std::chrono::microseconds duration) {
  timespec t{static_cast<time_t>(duration.count() / 1'000'000),
             static_cast<long>(duration.count() % 1'000'000) * 1000};
  while (::nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

// ---------------------------------------------------------------------------------------
// What the raw workers (and the pool's spinning tasks) share with the parent: an
// anonymous MAP_SHARED mapping made before any fork, so every worker (pool workers too)
// sees it at the same address. Each word the parent and workers hand to and fro sits on
// its own cache line.

enum class Command : std::uint32_t { none = 0, map_half = 1, spin_until_flag = 2, pong = 3 };

struct Control {
  alignas(64) std::atomic<std::uint32_t> command_sequence;  // futex: bumped per command
  std::atomic<std::uint32_t> command;                        // Command
  std::atomic<std::int64_t> argument;                        // items (map), round trips (pong)
  alignas(64) std::atomic<std::uint32_t> finished;  // futex: workers done with the command
  alignas(64) std::atomic<std::uint32_t> spinning;  // raw workers spinning on stop_flag
  alignas(64) std::atomic<std::uint32_t> stop_flag;  // the raw spin flag
  alignas(64) std::atomic<std::uint32_t> ping;       // futex: parent -> worker 0
  alignas(64) std::atomic<std::uint32_t> pong;       // futex: worker 0 -> parent
  alignas(64) std::atomic<std::uint32_t> tasks_spinning;  // pool tasks inside spin_task
  std::atomic<std::uint32_t> tasks_stopped;                // pool tasks that saw the stop
  std::atomic<std::int64_t> task_seen_ns[worker_count];    // when they saw it
  alignas(64) std::atomic<std::int64_t> begin_ns[worker_count];  // map: compute phase
  std::atomic<std::int64_t> end_ns[worker_count];
  std::atomic<std::int64_t> cpu_ns[worker_count];
  std::atomic<std::int64_t> seen_ns[worker_count];  // spin: when the worker saw the flag
  alignas(64) char guard_line[64];
};

Control* control = nullptr;  // set before any fork, never changed
std::int64_t* raw_input = nullptr;   // map_items int64s in a MAP_SHARED mapping
std::int64_t* raw_output = nullptr;  // likewise
pid_t raw_pids[worker_count] = {};

void* map_shared(std::size_t bytes, const char* what) {
  void* memory =
      ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) fail("cannot map {}: {}", what, std::strerror(errno));
  return memory;
}

// One raw worker: sleeps until the parent posts a command, runs its part, counts itself
// finished (the second one wakes the parent). Never returns; _exits 1 on an error.
[[noreturn]] void raw_worker_main(int index) {
  reset_signal_handlers();
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != bench::parent_pid()) ::_exit(3);
  Control& c = *control;
  std::uint32_t seen = 0;
  for (;;) {
    std::uint32_t sequence;
    while ((sequence = c.command_sequence.load(std::memory_order_acquire)) == seen)
      futex_sleep(c.command_sequence, seen);
    seen = sequence;
    switch (static_cast<Command>(c.command.load(std::memory_order_relaxed))) {
      case Command::map_half: {
        const auto n = static_cast<std::size_t>(c.argument.load(std::memory_order_relaxed));
        const std::size_t first = n * static_cast<std::size_t>(index) / worker_count;
        const std::size_t end = n * static_cast<std::size_t>(index + 1) / worker_count;
        const std::int64_t cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        c.begin_ns[index].store(now_ns(), std::memory_order_relaxed);
        const std::int64_t* in = raw_input;
        std::int64_t* out = raw_output;
        for (std::size_t i = first; i < end; ++i) out[i] = in[i] * 2 + 1;
        c.end_ns[index].store(now_ns(), std::memory_order_relaxed);
        c.cpu_ns[index].store(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu, std::memory_order_relaxed);
        break;
      }
      case Command::spin_until_flag: {
        c.spinning.fetch_add(1, std::memory_order_acq_rel);
        while (c.stop_flag.load(std::memory_order_acquire) == 0) cpu_relax();
        c.seen_ns[index].store(now_ns(), std::memory_order_relaxed);
        break;  // the acknowledgement is `finished` below
      }
      case Command::pong: {
        if (index != 0) break;
        const std::int64_t n = c.argument.load(std::memory_order_relaxed);
        std::uint32_t last = 0;
        for (std::int64_t k = 0; k < n; ++k) {
          std::uint32_t value;
          while ((value = c.ping.load(std::memory_order_acquire)) == last)
            futex_sleep(c.ping, last);
          if (value != last + 1) {
            std::fprintf(stderr, "pool_bench: raw ponger got ping %u after %u\n", value, last);
            ::_exit(1);
          }
          last = value;
          c.pong.store(value, std::memory_order_release);
          futex_wake_up(c.pong, 1);
        }
        break;
      }
      case Command::none: break;
    }
    if (c.finished.fetch_add(1, std::memory_order_acq_rel) + 1 == worker_count)
      futex_wake_up(c.finished);
  }
}

void start_raw_workers() {
  for (int i = 0; i < worker_count; ++i) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) fail("fork: {}", std::strerror(errno));
    if (pid == 0) raw_worker_main(i);
    raw_pids[i] = pid;
    live_children[i] = pid;
  }
}

void stop_raw_workers() {
  for (int i = 0; i < worker_count; ++i) {
    if (raw_pids[i] <= 0) continue;
    ::kill(raw_pids[i], SIGKILL);
    int status = 0;
    while (::waitpid(raw_pids[i], &status, 0) < 0 && errno == EINTR) {
    }
    raw_pids[i] = 0;
    live_children[i] = 0;
  }
}

// Fails if a raw worker has exited.
void check_raw_workers() {
  for (const pid_t pid : raw_pids) {
    int status = 0;
    if (pid > 0 && ::waitpid(pid, &status, WNOHANG) == pid) {
      for (auto& p : raw_pids)
        if (p == pid) p = 0;
      fail("raw worker {} {}", pid, describe_status(status));
    }
  }
}

// Posts a command to both raw workers (they are asleep on command_sequence).
void post_command(Command command, std::int64_t argument) {
  Control& c = *control;
  c.finished.store(0, std::memory_order_relaxed);
  c.command.store(static_cast<std::uint32_t>(command), std::memory_order_relaxed);
  c.argument.store(argument, std::memory_order_relaxed);
  c.command_sequence.fetch_add(1, std::memory_order_release);
  futex_wake_up(c.command_sequence);
}

// Sleeps until both raw workers have finished the command.
void wait_finished(const char* what) {
  Control& c = *control;
  const auto deadline = Clock::now() + run_timeout;
  for (;;) {
    const std::uint32_t finished = c.finished.load(std::memory_order_acquire);
    if (finished >= worker_count) return;
    if (!futex_sleep(c.finished, finished, std::chrono::milliseconds(200))) {
      check_raw_workers();
      if (Clock::now() > deadline)
        fail("{}: the raw workers did not finish within {} s", what, run_timeout.count());
    }
  }
}

// ---------------------------------------------------------------------------------------
// The tasks (capture-less lambdas; the spinning one reads the global `control`, which
// pool workers inherited: they are forks of this process made after it was set).

constexpr auto twice_plus_one = [](std::int64_t x) { return x * 2 + 1; };
constexpr auto triple_plus_one = [](std::int64_t x) { return x * 3 + 1; };
constexpr auto spin_task = [](std::int64_t item) {
  control->tasks_spinning.fetch_add(1, std::memory_order_acq_rel);
  while (!procshare::stop_requested()) cpu_relax();
  const std::int64_t seen = now_ns();
  const std::uint32_t slot = control->tasks_stopped.fetch_add(1, std::memory_order_acq_rel);
  if (slot < worker_count) control->task_seen_ns[slot].store(seen, std::memory_order_relaxed);
  return item;
};

// ---------------------------------------------------------------------------------------
// 1. map.

struct MapCall {
  double rate;         // items per second, copies in and out included
  double parallelism;  // workers' CPU time over the time they had (see each caller)
};

void check_map(const std::vector<std::int64_t>& input, const std::vector<std::int64_t>& output,
               const char* who) {
  if (output.size() != input.size())
    fail("WRONG MAP: {} returned {} results for {} items", who, output.size(), input.size());
  for (std::size_t i = 0; i < input.size(); ++i)
    if (output[i] != input[i] * 2 + 1)
      fail("WRONG MAP: {}: item {} ({}) gave {}, expected {}", who, i, input[i], output[i],
           input[i] * 2 + 1);
}

// Pool::map over `input`; parallelism: the workers' CPU time over the call's wall time.
MapCall map_procshare(procshare::Pool& pool, const std::vector<std::int64_t>& input) {
  const std::vector<int> pids = pool.worker_pids();
  std::int64_t cpu = 0;
  for (const int pid : pids) cpu -= process_cpu_ns(pid);
  const auto start = Clock::now();
  const std::vector<std::int64_t> output = pool.map(input, twice_plus_one);
  const double seconds = seconds_since(start);
  for (const int pid : pids) cpu += process_cpu_ns(pid);
  check_map(input, output, "Pool::map");
  return {static_cast<double>(input.size()) / seconds,
          static_cast<double>(cpu) * 1e-9 / seconds};
}

// Pool::imap_unordered / imap over the same items: items per second, every result
// consumed and checked (each item's outcome lands at its index).
double stream_procshare(procshare::Pool& pool, const std::vector<std::int64_t>& input, bool ordered) {
  std::vector<std::int64_t> output(input.size());
  const auto start = Clock::now();
  std::size_t count = 0;
  auto consume = [&](auto&& stream) {
    for (const auto& o : stream) {
      output[o.index()] = o.value();
      ++count;
    }
  };
  if (ordered)
    consume(pool.imap(input, twice_plus_one));
  else
    consume(pool.imap_unordered(input, twice_plus_one));
  const double seconds = seconds_since(start);
  if (count != input.size()) bench::fail("a stream yielded {} of {} items", count, input.size());
  check_map(input, output, ordered ? "Pool::imap" : "Pool::imap_unordered");
  return static_cast<double>(input.size()) / seconds;
}

// Pool::map with Chunk{chunk} (no automatic chunks); same measure.
MapCall map_procshare_chunked(procshare::Pool& pool, const std::vector<std::int64_t>& input,
                              std::uint64_t chunk) {
  const std::vector<int> pids = pool.worker_pids();
  std::int64_t cpu = 0;
  for (const int pid : pids) cpu -= process_cpu_ns(pid);
  const auto start = Clock::now();
  const std::vector<std::int64_t> output = pool.map(procshare::Chunk{chunk}, input, twice_plus_one);
  const double seconds = seconds_since(start);
  for (const int pid : pids) cpu += process_cpu_ns(pid);
  check_map(input, output, "Pool::map with Chunk");
  return {static_cast<double>(input.size()) / seconds,
          static_cast<double>(cpu) * 1e-9 / seconds};
}

// The hand-written version; parallelism: the workers' CPU time over their compute phase
// (from the first start to the last end: 2.00 when both computed side by side).
MapCall map_raw(const std::vector<std::int64_t>& input) {
  const std::size_t n = input.size();
  const auto start = Clock::now();
  std::memcpy(raw_input, input.data(), n * sizeof(std::int64_t));
  post_command(Command::map_half, static_cast<std::int64_t>(n));
  wait_finished("raw map");
  std::vector<std::int64_t> output(raw_output, raw_output + n);
  const double seconds = seconds_since(start);
  check_map(input, output, "the raw fork + shared array map");
  const Control& c = *control;
  std::int64_t begin = INT64_MAX, end = 0, cpu = 0;
  for (int i = 0; i < worker_count; ++i) {
    begin = std::min(begin, c.begin_ns[i].load());
    end = std::max(end, c.end_ns[i].load());
    cpu += c.cpu_ns[i].load();
  }
  return {static_cast<double>(n) / seconds,
          end > begin ? static_cast<double>(cpu) / static_cast<double>(end - begin) : 0.0};
}

// ---------------------------------------------------------------------------------------
// 2. submit: throughput and one-at-a-time round trips.

// `n` submits, then get() on each; tasks per second.
double submit_procshare(procshare::Pool& pool, std::int64_t n) {
  const auto start = Clock::now();
  std::vector<procshare::Future<std::int64_t>> futures;
  futures.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) futures.push_back(pool.submit(triple_plus_one, i));
  std::vector<std::int64_t> results;
  results.reserve(futures.size());
  for (auto& future : futures) results.push_back(future.get());
  const double seconds = seconds_since(start);
  for (std::int64_t i = 0; i < n; ++i)
    if (results[static_cast<std::size_t>(i)] != i * 3 + 1)
      fail("WRONG RESULT: submit #{} returned {}, expected {}", i,
           results[static_cast<std::size_t>(i)], i * 3 + 1);
  return static_cast<double>(n) / seconds;
}

// `n` round trips submit(f, i).get(); the seconds each took.
std::vector<double> round_trips_procshare(procshare::Pool& pool, std::int64_t n) {
  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const auto start = Clock::now();
    const std::int64_t result = pool.submit(triple_plus_one, i).get();
    samples.push_back(seconds_since(start));
    if (result != i * 3 + 1)
      fail("WRONG RESULT: round trip #{} returned {}, expected {}", i, result, i * 3 + 1);
  }
  return samples;
}

// `n` raw futex ping-pongs with raw worker 0; the seconds each took.
std::vector<double> round_trips_raw(std::int64_t n) {
  Control& c = *control;
  c.ping.store(0);
  c.pong.store(0);
  post_command(Command::pong, n);
  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(n));
  const auto deadline = Clock::now() + run_timeout;
  for (std::int64_t i = 1; i <= n; ++i) {
    const auto value = static_cast<std::uint32_t>(i);
    const auto start = Clock::now();
    c.ping.store(value, std::memory_order_release);
    futex_wake_up(c.ping, 1);
    std::uint32_t seen;
    while ((seen = c.pong.load(std::memory_order_acquire)) != value) {
      if (seen != value - 1) fail("WRONG REPLY: raw ping {} got pong {}", value, seen);
      if (!futex_sleep(c.pong, seen, std::chrono::milliseconds(200))) {
        check_raw_workers();
        if (Clock::now() > deadline) fail("raw ping-pong: no reply within {} s", run_timeout.count());
      }
    }
    samples.push_back(seconds_since(start));
  }
  wait_finished("raw ping-pong");
  return samples;
}

// ---------------------------------------------------------------------------------------
// 3. early stop.

// Waits (sleeping) until `count` reaches 2, then 2 ms more, so that the spinning workers
// own the CPUs when the stop is measured.
void wait_spinning(const std::atomic<std::uint32_t>& count, const char* what) {
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (count.load(std::memory_order_acquire) < worker_count) {
    if (Clock::now() > deadline) fail("{}: the workers did not start spinning within 20 s", what);
    sleep_for(std::chrono::microseconds(100));
  }
  sleep_for(std::chrono::microseconds(2000));
}

// One trial, timed like the raw one (below): from job.cancel() until wait_for() returns
// true (`woken`: every worker is idle), until get() has thrown Stopped too (`thrown`), and
// until the later of the two tasks saw stop_requested() (`seen`).
struct StopTimes {
  double woken;
  double seen;
  double thrown = 0;
};

StopTimes stop_procshare(procshare::Pool& pool, const std::vector<std::int64_t>& items) {
  control->tasks_spinning.store(0);
  control->tasks_stopped.store(0);
  for (auto& t : control->task_seen_ns) t.store(0);
  auto job = pool.map_async(items, spin_task);
  wait_spinning(control->tasks_spinning, "procshare early stop");
  const auto start = Clock::now();
  const std::int64_t start_ns = now_ns();
  job.cancel();
  if (!job.wait_for(std::chrono::seconds(20))) fail("early stop: the job did not end within 20 s of cancel()");
  const double idle = seconds_since(start);
  double seconds = 0;
  try {
    job.get();
    fail("early stop: get() returned after cancel() instead of throwing Stopped");
  } catch (const procshare::Stopped&) {
    seconds = seconds_since(start);
  }
  const auto progress = job.progress();
  if (progress.done != worker_count || progress.failed != 0 ||
      progress.skipped != items.size() - worker_count || progress.total != items.size())
    fail("WRONG COUNTS: a stopped job reports {} done, {} failed, {} skipped of {}; expected "
         "{} done and {} skipped",
         progress.done, progress.failed, progress.skipped, progress.total, worker_count,
         items.size() - worker_count);
  std::int64_t seen = 0;
  for (const auto& t : control->task_seen_ns) seen = std::max(seen, t.load());
  if (control->tasks_stopped.load() != worker_count || seen < start_ns)
    fail("early stop: {} tasks saw the stop, expected {}", control->tasks_stopped.load(),
         worker_count);
  return {idle, static_cast<double>(seen - start_ns) * 1e-9, seconds};
}

// One raw trial: seconds from storing the flag until the parent (asleep on a futex) is
// woken by the second worker's acknowledgement; `seen`: until the later of the two
// workers saw the flag (their own clock readings).
StopTimes stop_raw() {
  Control& c = *control;
  c.stop_flag.store(0);
  c.spinning.store(0);
  for (auto& t : c.seen_ns) t.store(0);
  post_command(Command::spin_until_flag, 0);
  wait_spinning(c.spinning, "raw early stop");
  const auto start = Clock::now();
  const std::int64_t start_ns = now_ns();
  c.stop_flag.store(1, std::memory_order_release);
  wait_finished("raw early stop");
  const double woken = seconds_since(start);
  std::int64_t seen = 0;
  for (const auto& t : c.seen_ns) seen = std::max(seen, t.load());
  if (seen < start_ns) fail("raw early stop: a worker acknowledged before the flag was set");
  return {woken, static_cast<double>(seen - start_ns) * 1e-9};
}

// ---------------------------------------------------------------------------------------
// 4. start + join, in a small helper process forked at start-up, before the big buffers
// exist: a Pool forks its supervisor and workers from the process that makes it, and
// forking this benchmark's parent (~100 MB mapped) would add its own page-table copying
// to the figures. Python is likewise measured in a fresh interpreter.

struct StartTimes {
  double total, construct, first_task, destroy;
};

struct StartRequest {
  std::uint64_t arena_bytes;
  char name[96];
};

struct StartReply {
  StartTimes times;
  std::int32_t ok;
  char error[400];
};

int start_requests = -1;  // the parent's ends of the helper's pipes
int start_replies = -1;
pid_t start_helper = 0;
int start_pools = 0;

bool write_all(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t wrote = ::write(fd, p, size);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) return false;
    p += wrote;
    size -= static_cast<std::size_t>(wrote);
  }
  return true;
}

bool read_all(int fd, void* data, std::size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t got = ::read(fd, p, size);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    size -= static_cast<std::size_t>(got);
  }
  return true;
}

// In the helper: Pool(2 workers), one submit().get(), ~Pool (close + join).
StartTimes start_trial(const StartRequest& request) {
  procshare::PoolOptions options;
  options.workers = worker_count;
  options.arena_bytes = request.arena_bytes;
  options.name = request.name;
  const auto start = Clock::now();
  double construct = 0, first_task = 0;
  {
    procshare::Pool pool(options);
    construct = seconds_since(start);
    try {
      const std::int64_t result = pool.submit(triple_plus_one, std::int64_t{7}).get();
      if (result != 22) fail("WRONG RESULT: a new pool's first task returned {}, expected 22", result);
    } catch (...) {
      pool.terminate();
      throw;
    }
    first_task = seconds_since(start) - construct;
  }
  const double total = seconds_since(start);
  return {total, construct, first_task, total - construct - first_task};
}

[[noreturn]] void start_helper_main(int requests, int replies) {
  reset_signal_handlers();
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != bench::parent_pid()) ::_exit(3);
  for (;;) {
    StartRequest request{};
    if (!read_all(requests, &request, sizeof request)) ::_exit(0);  // the parent is done
    request.name[sizeof request.name - 1] = '\0';
    StartReply reply{};
    try {
      reply.times = start_trial(request);
      reply.ok = 1;
    } catch (const std::exception& error) {
      std::snprintf(reply.error, sizeof reply.error, "%s", error.what());
    }
    if (!write_all(replies, &reply, sizeof reply)) ::_exit(1);
  }
}

void start_start_helper() {
  int requests[2], replies[2];
  if (::pipe2(requests, O_CLOEXEC) != 0 || ::pipe2(replies, O_CLOEXEC) != 0)
    fail("pipe: {}", std::strerror(errno));
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid == 0) {
    ::close(requests[1]);
    ::close(replies[0]);
    start_helper_main(requests[0], replies[1]);
  }
  ::close(requests[0]);
  ::close(replies[1]);
  start_requests = requests[1];
  start_replies = replies[0];
  start_helper = pid;
  live_children[helper_slot] = pid;
}

// Ends the helper (EOF on its requests; killed if it does not exit within 5 s).
void stop_start_helper(bool kill_it) {
  if (start_requests >= 0) ::close(start_requests);
  start_requests = -1;
  if (start_helper > 0) {
    if (kill_it) ::kill(start_helper, SIGKILL);
    if (!wait_until(start_helper, Clock::now() + std::chrono::seconds(5))) {
      ::kill(start_helper, SIGKILL);
      wait_until(start_helper, Clock::now() + std::chrono::seconds(5));
    }
  }
  start_helper = 0;
  live_children[helper_slot] = 0;
  if (start_replies >= 0) ::close(start_replies);
  start_replies = -1;
}

// One trial in the helper, with an arena of `arena_bytes`.
StartTimes start_procshare(std::size_t arena_bytes) {
  StartRequest request{arena_bytes, {}};
  const std::string name = fmt::format("ps-pool-bench-{}-start-{}", bench::parent_pid(), start_pools++);
  std::snprintf(request.name, sizeof request.name, "%s", name.c_str());
  bench::remember_path(start_pool_slot, name);
  if (!write_all(start_requests, &request, sizeof request))
    fail("the start-trial helper is gone: {}", std::strerror(errno));
  pollfd reply_ready{start_replies, POLLIN, 0};
  int ready = 0;
  while ((ready = ::poll(&reply_ready, 1, static_cast<int>(run_timeout.count() * 1000))) < 0 &&
         errno == EINTR) {
  }
  if (ready == 0) fail("start trial: no reply within {} s (hung?)", run_timeout.count());
  StartReply reply{};
  if (!read_all(start_replies, &reply, sizeof reply)) {
    int status = 0;
    if (::waitpid(start_helper, &status, WNOHANG) == start_helper) {
      start_helper = 0;
      fail("the start-trial helper {}", describe_status(status));
    }
    fail("the start-trial helper sent no reply");
  }
  reply.error[sizeof reply.error - 1] = '\0';
  if (!reply.ok) fail("start trial: {}", reply.error);
  bench::remember_path(start_pool_slot, "");
  return reply.times;
}

// ---------------------------------------------------------------------------------------
// Python, run in a python3 child (functions at the top of the script, so the fork
// context's workers find them); it prints numbers: a rate, or one time per trial.

constexpr const char* python_script = R"(
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor

def twice_plus_one(x):
    return x * 2 + 1

def triple_plus_one(x):
    return x * 3 + 1

def poll(events, ready, acks):
    for event in events:
        ready.release()
        while not event.is_set():
            pass
        acks.release()

def start_once():
    start = time.perf_counter()
    pool = mp.Pool(2)
    if pool.apply(triple_plus_one, (7,)) != 22:
        sys.exit("WRONG RESULT from Pool.apply")
    pool.close()
    pool.join()
    return time.perf_counter() - start

if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "map":
        with mp.Pool(2) as pool:
            pool.map(twice_plus_one, range(1000))
            start = time.perf_counter()
            out = pool.map(twice_plus_one, range(n))
            seconds = time.perf_counter() - start
        if out != list(range(1, 2 * n, 2)):
            sys.exit("WRONG RESULTS from Pool.map")
        print(f"{n / seconds:.1f}")
    elif mode == "submit":
        with ProcessPoolExecutor(2) as executor:
            executor.submit(triple_plus_one, 0).result()
            start = time.perf_counter()
            futures = [executor.submit(triple_plus_one, i) for i in range(n)]
            results = [f.result() for f in futures]
            seconds = time.perf_counter() - start
        if results != [3 * i + 1 for i in range(n)]:
            sys.exit("WRONG RESULTS from ProcessPoolExecutor")
        print(f"{n / seconds:.1f}")
    elif mode == "stop":
        ctx = mp.get_context("fork")
        events = [ctx.Event() for _ in range(n + 1)]
        ready, acks = ctx.Semaphore(0), ctx.Semaphore(0)
        workers = [ctx.Process(target=poll, args=(events, ready, acks)) for _ in range(2)]
        for w in workers:
            w.start()
        times = []
        for trial, event in enumerate(events):
            for _ in workers:
                ready.acquire()
            time.sleep(0.002)
            start = time.perf_counter()
            event.set()
            for _ in workers:
                acks.acquire()
            if trial > 0:  # the first one warms up
                times.append(time.perf_counter() - start)
        for w in workers:
            w.join()
        if any(w.exitcode != 0 for w in workers):
            sys.exit("python poller failed")
        print(" ".join(f"{t:.9f}" for t in times))
    elif mode == "start":
        start_once()  # warms up (imports, first fork)
        print(" ".join(f"{start_once():.9f}" for _ in range(n)))
    else:
        sys.exit(f"unknown mode {mode}")
)";

// Runs the script in `mode` with `n`; returns the numbers it printed. Fails if python
// fails or prints none.
std::vector<double> run_python(const char* mode, std::int64_t n) {
  const std::string output = bench::run_python(python_script, {mode, std::to_string(n)},
                                               fmt::format("python {} {}", mode, n));
  const std::vector<double> numbers = bench::parse_numbers(output);
  for (const double value : numbers)
    if (!(value > 0) || !std::isfinite(value)) fail("python {} printed '{}'", mode, output);
  if (numbers.empty()) fail("python {} printed no numbers: '{}'", mode, output);
  return numbers;
}

// ---------------------------------------------------------------------------------------
// Statistics and the table.

// One variant's measurements (rates or seconds), kept by round.
struct Series {
  std::vector<std::vector<double>> rounds;
  void add(std::size_t round, double value) {
    if (rounds.size() <= round) rounds.resize(round + 1);
    rounds[round].push_back(value);
  }
  void add(std::size_t round, const std::vector<double>& values) {
    for (const double v : values) add(round, v);
  }
  std::vector<double> all() const {
    std::vector<double> values;
    for (const auto& r : rounds) values.insert(values.end(), r.begin(), r.end());
    return values;
  }
  double median_all() const { return median(all()); }
  std::size_t count() const { return all().size(); }
};

enum class Unit { rate, time };
// faster: the ratio is how many times faster procshare is (higher is better); time: the
// ratio is procshare's time over the baseline's (lower is better).
enum class RatioKind { faster, time };

struct Row {
  std::string name;
  const Series* ours;
  const Series* baseline;
  Unit unit;
  RatioKind kind;
  double target;  // 0: none
};

std::string time_text(double seconds) {
  if (seconds >= 1) return fmt::format("{:.2f} s", seconds);
  if (seconds >= 1e-3) return fmt::format("{:.2f} ms", seconds * 1e3);
  if (seconds >= 1e-6) return fmt::format("{:.1f} us", seconds * 1e6);
  return fmt::format("{:.0f} ns", seconds * 1e9);
}

std::string value_text(Unit unit, double value) {
  return unit == Unit::rate ? rate_text(value) : time_text(value);
}

// The per-round ratios of a row (rounds where both sides were measured).
std::vector<double> round_ratios(const Row& row) {
  std::vector<double> ratios;
  const std::size_t rounds = std::min(row.ours->rounds.size(), row.baseline->rounds.size());
  for (std::size_t r = 0; r < rounds; ++r) {
    if (row.ours->rounds[r].empty() || row.baseline->rounds[r].empty()) continue;
    const double ours = median(row.ours->rounds[r]);
    const double baseline = median(row.baseline->rounds[r]);
    // rate: ours/baseline is "faster"; time: baseline/ours is "faster".
    const double faster = row.unit == Unit::rate ? ours / baseline : baseline / ours;
    ratios.push_back(row.kind == RatioKind::faster ? faster : 1 / faster);
  }
  return ratios;
}

struct Options {
  int rounds = 7;
  double scale = 1.0;
  bool quick = false;
  bool python = true;
  // Derived from the above by parse_options.
  int map_calls = 3;                       // per round, each side
  std::int64_t submit_tasks = 20'000;      // per run
  std::int64_t round_trips = 2'000;        // per run
  int stop_trials = 6;                     // per round, each side
  int start_trials = 5;                    // per round, each side
  double map_budget = 0;                   // seconds of map calls per round (0: no limit)
  std::uint64_t map_chunk = map_items / (4 * worker_count);  // Python's default chunksize
  std::int64_t python_map_items = 2'000'000;
  std::int64_t python_submit_tasks = 5'000;
};

Options parse_options(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: pool_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
      "  --quick      about 10 s: 5 rounds, fewer samples, smaller Python runs\n"
      "  --scale=F    F times more calls, tasks and samples per round (default: about 20 s)\n"
      "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
      "  --no-python  skip the comparisons with Python's multiprocessing",
      1000);
  Options options;
  options.rounds = common.rounds;
  options.scale = common.scale;
  options.quick = common.quick;
  options.python = common.python;
  if (options.quick) options.map_budget = 1.5;
  const double s = options.scale;
  auto scaled = [s](double n, double least) {
    return static_cast<std::int64_t>(std::max(least, std::round(n * s)));
  };
  // At least 20 map calls and 20 early-stop trials per side, whatever the rounds.
  const int per_round_for_20 = (20 + options.rounds - 1) / options.rounds;
  options.map_calls = static_cast<int>(std::max<std::int64_t>(per_round_for_20, scaled(3, 1)));
  options.stop_trials = static_cast<int>(
      std::max<std::int64_t>(per_round_for_20, scaled(options.quick ? 4 : 6, 1)));
  options.start_trials = static_cast<int>(scaled(options.quick ? 3 : 5, 1));
  options.submit_tasks = scaled(20'000, 100);
  options.round_trips = scaled(options.quick ? 1'000 : 2'000, 20);
  options.python_map_items = options.quick ? 500'000 : 2'000'000;
  options.python_submit_tasks = scaled(options.quick ? 1'000 : 5'000, 100);
  return options;
}

struct Results {
  Series map_ours, map_chunked, map_raw, map_python;
  std::vector<double> map_ours_cpu, map_chunked_cpu, map_raw_cpu;
  Series submit_ours, submit_python;
  Series trip_ours, trip_raw;
  Series stop_ours, stop_ours_thrown, stop_ours_seen, stop_raw, stop_raw_seen, stop_python;
  Series start_ours, start_small, start_python;
  Series stream_unordered, stream_ordered;          // imap_unordered, imap of map's items
  Series first_small, first_large;                  // find_first over Range{0, n}
  std::uint64_t first_small_peak = 0, first_large_peak = 0;  // parent's peak RSS growth
  std::vector<StartTimes> start_phases, start_small_phases;
};

// find_first over Range{0, n} with the match at 10^6: its time, and how far it raised
// the parent's peak resident set (VmHWM, reset first through /proc/self/clear_refs).
constexpr std::uint64_t first_match = 1'000'000;
constexpr std::uint64_t first_small_n = 10'000'000, first_large_n = 1'000'000'000;

std::uint64_t status_kib(std::string_view field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  std::uint64_t value = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::string_view(line).starts_with(field)) value = std::strtoull(line + field.size(), nullptr, 10);
  std::fclose(f);
  return value;
}

double find_first_range(procshare::Pool& pool, std::uint64_t n, std::uint64_t& peak_growth) {
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {  // "5": reset VmHWM to VmRSS
    std::fputs("5", f);
    std::fclose(f);
  }
  const std::uint64_t before = status_kib("VmRSS:");
  const auto started = Clock::now();
  const auto found = pool.find_first(procshare::Range{0, n},
                                     [](std::uint64_t x) { return x == first_match; });
  const double took = seconds_since(started);
  if (!found || found->second != first_match)
    bench::fail("find_first over Range{{0, {}}} did not find {}", n, first_match);
  const std::uint64_t peak = status_kib("VmHWM:");
  peak_growth = std::max(peak_growth, peak > before ? (peak - before) * 1024 : 0);
  return took;
}

// Untimed: fills the mappings, the pool's arena and rings, and the code paths.
void warm_up(procshare::Pool& pool, const std::vector<std::int64_t>& input,
             const std::vector<std::int64_t>& stop_input) {
  map_procshare(pool, input);
  map_procshare_chunked(pool, input, map_items / (4 * worker_count));
  stream_procshare(pool, input, false);
  stream_procshare(pool, input, true);
  map_raw(input);
  submit_procshare(pool, 2000);
  round_trips_procshare(pool, 200);
  round_trips_raw(200);
  stop_procshare(pool, stop_input);
  stop_raw();
  start_procshare(std::size_t{64} << 20);
  std::uint64_t ignored = 0;
  find_first_range(pool, first_large_n, ignored);
}

void run_round(procshare::Pool& pool, const Options& options, bool python, int round,
               const std::vector<std::int64_t>& input, const std::vector<std::int64_t>& stop_input,
               Results& r) {
  const auto at = static_cast<std::size_t>(round);
  const bool baseline_first = round % 2 == 1;

  // 1. map, calls alternating within the round too. With --quick, a round stops calling
  // once its calls took map_budget (so that a slow map cannot stretch a smoke run).
  const auto map_started = Clock::now();
  for (int call = 0; call < options.map_calls; ++call) {
    if (call > 0 && options.map_budget > 0 && seconds_since(map_started) > options.map_budget)
      break;
    const bool raw_first = (call % 2 == 1) != baseline_first;
    auto raw_call = [&] {
      const MapCall raw = map_raw(input);
      r.map_raw.add(at, raw.rate);
      r.map_raw_cpu.push_back(raw.parallelism);
    };
    if (raw_first) raw_call();
    const MapCall ours = map_procshare(pool, input);
    r.map_ours.add(at, ours.rate);
    r.map_ours_cpu.push_back(ours.parallelism);
    const MapCall chunked = map_procshare_chunked(pool, input, options.map_chunk);
    r.map_chunked.add(at, chunked.rate);
    r.map_chunked_cpu.push_back(chunked.parallelism);
    r.stream_unordered.add(at, stream_procshare(pool, input, false));
    r.stream_ordered.add(at, stream_procshare(pool, input, true));
    if (!raw_first) raw_call();
  }
  if (python) r.map_python.add(at, run_python("map", options.python_map_items));

  // 2. submit throughput; round trips.
  r.submit_ours.add(at, submit_procshare(pool, options.submit_tasks));
  if (python) r.submit_python.add(at, run_python("submit", options.python_submit_tasks));
  if (baseline_first) r.trip_raw.add(at, round_trips_raw(options.round_trips));
  r.trip_ours.add(at, round_trips_procshare(pool, options.round_trips));
  if (!baseline_first) r.trip_raw.add(at, round_trips_raw(options.round_trips));

  // 3. early stop, trials alternating.
  for (int trial = 0; trial < options.stop_trials; ++trial) {
    const bool raw_first = (trial % 2 == 1) != baseline_first;
    if (raw_first) {
      const StopTimes raw = stop_raw();
      r.stop_raw.add(at, raw.woken);
      r.stop_raw_seen.add(at, raw.seen);
    }
    const StopTimes ours = stop_procshare(pool, stop_input);
    r.stop_ours.add(at, ours.woken);
    r.stop_ours_thrown.add(at, ours.thrown);
    r.stop_ours_seen.add(at, ours.seen);
    if (!raw_first) {
      const StopTimes raw = stop_raw();
      r.stop_raw.add(at, raw.woken);
      r.stop_raw_seen.add(at, raw.seen);
    }
  }
  if (python) r.stop_python.add(at, run_python("stop", options.stop_trials));

  // 4. start + join.
  if (python && baseline_first) r.start_python.add(at, run_python("start", options.start_trials));
  for (int trial = 0; trial < options.start_trials; ++trial) {
    const StartTimes ours = start_procshare(std::size_t{64} << 20);
    r.start_ours.add(at, ours.total);
    r.start_phases.push_back(ours);
    const StartTimes small = start_procshare(std::size_t{1} << 20);
    r.start_small.add(at, small.total);
    r.start_small_phases.push_back(small);
  }
  if (python && !baseline_first) r.start_python.add(at, run_python("start", options.start_trials));

  // 5. find_first over a Range: the time and memory of the match at 10^6 for n = 10^7 and
  // n = 10^9 (they should not differ).
  for (int trial = 0; trial < options.stop_trials; ++trial) {
    const bool small_first = (trial % 2 == 1) != baseline_first;
    if (small_first) r.first_small.add(at, find_first_range(pool, first_small_n, r.first_small_peak));
    r.first_large.add(at, find_first_range(pool, first_large_n, r.first_large_peak));
    if (!small_first) r.first_small.add(at, find_first_range(pool, first_small_n, r.first_small_peak));
  }
}

void print_report(bool python, const Results& r, double elapsed) {
  std::vector<Row> rows = {
      {"map 2M: Pool::map vs fork + shared array", &r.map_ours, &r.map_raw, Unit::rate,
       RatioKind::faster, 0.5},
      {"map 2M, Chunk{250000}, vs fork + shared array", &r.map_chunked, &r.map_raw, Unit::rate,
       RatioKind::faster, 0},
  };
  rows.push_back({"stream 2M: imap_unordered vs Pool::map", &r.stream_unordered, &r.map_ours,
                  Unit::rate, RatioKind::faster, 0.8});
  rows.push_back({"stream 2M: imap vs Pool::map", &r.stream_ordered, &r.map_ours, Unit::rate,
                  RatioKind::faster, 0});
  if (python)
    rows.push_back({"map 2M: Pool::map vs Python Pool.map", &r.map_ours, &r.map_python,
                    Unit::rate, RatioKind::faster, 20});
  if (python)
    rows.push_back({"submit+get: Pool vs ProcessPoolExecutor", &r.submit_ours,
                    &r.submit_python, Unit::rate, RatioKind::faster, 30});
  rows.push_back({"round trip: submit().get() vs raw futex", &r.trip_ours, &r.trip_raw,
                  Unit::time, RatioKind::time, 1.5});
  rows.push_back({"early stop: cancel()->all idle vs raw flag", &r.stop_ours, &r.stop_raw,
                  Unit::time, RatioKind::time, 1.5});
  rows.push_back({"early stop: cancel()->get() threw, vs raw flag", &r.stop_ours_thrown,
                  &r.stop_raw, Unit::time, RatioKind::time, 0});
  if (python)
    rows.push_back({"early stop: cancel()->all idle vs Python Event", &r.stop_ours,
                    &r.stop_python, Unit::time, RatioKind::faster, 0});
  rows.push_back({"find_first: Range 10^9 vs 10^7, match 10^6", &r.first_large,
                  &r.first_small, Unit::time, RatioKind::time, 1.5});
  if (python) {
    rows.push_back({"start+join: Pool(2) vs Python Pool(2)", &r.start_ours, &r.start_python,
                    Unit::time, RatioKind::faster, 5});
    rows.push_back({"start+join, arena 1 MiB, vs Python Pool(2)", &r.start_small,
                    &r.start_python, Unit::time, RatioKind::faster, 0});
  }

  fmt::print("\n{:<44} {:>11} {:>11} {:>8}  {:<15} {}\n", "benchmark", "procshare", "baseline",
             "ratio", "(round range)", "target");
  std::vector<std::string> verdicts;
  for (const Row& row : rows) {
    const std::vector<double> ratios = round_ratios(row);
    const double ratio = median(ratios);
    const auto [low, high] = std::minmax_element(ratios.begin(), ratios.end());
    const bool at_least = row.kind == RatioKind::faster;
    const std::string target =
        row.target > 0
            ? fmt::format("{} {}{}", at_least ? ">=" : "<=", ratio_text(row.target),
                          at_least ? " faster" : " time")
            : std::string("-");
    fmt::print("{:<44} {:>11} {:>11} {:>8}  {:<15} {}\n", row.name,
               value_text(row.unit, row.ours->median_all()),
               value_text(row.unit, row.baseline->median_all()),
               ratio_text(ratio) + (at_least ? "" : "t"),
               fmt::format("({}-{})", ratio_text(*low), ratio_text(*high)), target);
    if (row.target > 0) {
      const bool met = at_least ? ratio >= row.target : ratio <= row.target;
      const double short_by = at_least ? 1 - ratio / row.target : ratio / row.target - 1;
      verdicts.push_back(fmt::format("{:<44} {} ({} vs target {}{})", row.name,
                                     met ? "met" : "NOT met", ratio_text(ratio), target,
                                     met ? "" : fmt::format(", {:.0f}% {}", 100 * short_by,
                                                            at_least ? "short" : "over")));
    }
  }
  if (!python) fmt::print("{:<44} {:>11}\n", "Python comparisons", "skipped");

  fmt::print("\nratio: median of per-round ratios of the rounds' medians; 'x' = how many "
             "times faster procshare is,\n'xt' = procshare's time over the baseline's. "
             "Measured rounds took {:.1f} s.\n",
             elapsed);

  fmt::print("\n{:<48} {:>10} {:>10} {:>10} {:>8}\n", "latencies (all samples)",
             "median", "p99", "max", "samples");
  auto latency = [](std::string_view name, const Series& s) {
    const std::vector<double> v = s.all();
    if (v.empty()) return;
    fmt::print("  {:<46} {:>10} {:>10} {:>10} {:>8}\n", name, time_text(median(v)),
               time_text(percentile(v, 99)), time_text(*std::max_element(v.begin(), v.end())),
               v.size());
  };
  latency("submit().get() round trip", r.trip_ours);
  latency("raw futex ping-pong round trip", r.trip_raw);
  latency("cancel() -> wait_for(): every worker idle", r.stop_ours);
  latency("cancel() -> get() has thrown Stopped", r.stop_ours_thrown);
  latency("cancel() -> both tasks saw it (their clocks)", r.stop_ours_seen);
  latency("raw flag -> parent woken by both acks", r.stop_raw);
  latency("raw flag -> both workers saw it (their clocks)", r.stop_raw_seen);
  if (python) latency("Python Event.set() -> both acks acquired", r.stop_python);
  latency("Pool(2) + 1 task + ~Pool (arena 64 MiB)", r.start_ours);
  latency("Pool(2) + 1 task + ~Pool (arena 1 MiB)", r.start_small);
  if (python) latency("Python Pool(2) + apply + close + join", r.start_python);
  {
    auto phase = [](const std::vector<StartTimes>& v, double StartTimes::*member) {
      std::vector<double> values;
      for (const StartTimes& t : v) values.push_back(t.*member);
      return time_text(median(values));
    };
    fmt::print("  start phases, median (64 MiB / 1 MiB arena): Pool() {} / {}, first task "
               "{} / {}, ~Pool {} / {}\n",
               phase(r.start_phases, &StartTimes::construct),
               phase(r.start_small_phases, &StartTimes::construct),
               phase(r.start_phases, &StartTimes::first_task),
               phase(r.start_small_phases, &StartTimes::first_task),
               phase(r.start_phases, &StartTimes::destroy),
               phase(r.start_small_phases, &StartTimes::destroy));
  }
  latency("find_first Range{0, 10^7}, match at 10^6", r.first_small);
  latency("find_first Range{0, 10^9}, match at 10^6", r.first_large);
  fmt::print("  find_first peak RSS growth of the parent: n = 10^7 {} KiB, n = 10^9 {} KiB "
             "(independent of n)\n",
             r.first_small_peak / 1024, r.first_large_peak / 1024);
  const double p99_ratio = percentile(r.stop_ours.all(), 99) / percentile(r.stop_raw.all(), 99);
  fmt::print("  early stop p99: procshare / raw = {}\n", ratio_text(p99_ratio));

  const double raw_busy = median(r.map_raw_cpu);
  fmt::print("\nmap calls: {} per side{}; raw workers' CPU time / their compute phase "
             "(median; 2.00 = side by side): {:.2f};\n  procshare workers' CPU time / whole "
             "call (copies in and out are the parent's): {:.2f} automatic chunks, {:.2f} "
             "Chunk{{250000}}\n\n",
             r.map_ours.count(), r.map_ours.count() < 20 ? " (--quick's time budget)" : "",
             raw_busy, median(r.map_ours_cpu), median(r.map_chunked_cpu));
  if (raw_busy < 1.5)
    fmt::print("WARNING: the 2 workers mostly took turns on one CPU (other load on the "
               "machine?),\n  so the 2-worker figures measure time slicing, not "
               "parallel work.\n\n");
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
}

// Prints the machine's load average (other processes compete for the 2 CPUs).
void print_load(const char* when) {
  double one = 0, five = 0;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf", &one, &five) != 2) one = five = -1;
    std::fclose(f);
  }
  fmt::print("pool_bench: load average {}: {:.2f} (1 min), {:.2f} (5 min)\n", when, one, five);
}

int run(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  bench::install_signal_handlers("pool_bench", true);
  start_start_helper();  // first: while this process is small

  // Shared memory for the baselines, mapped before any fork.
  control = ::new (map_shared(sizeof(Control), "the control block")) Control{};
  raw_input = static_cast<std::int64_t*>(map_shared(map_items * sizeof(std::int64_t), "the raw input"));
  raw_output = static_cast<std::int64_t*>(map_shared(map_items * sizeof(std::int64_t), "the raw output"));
  std::vector<std::int64_t> input(map_items);
  for (std::size_t i = 0; i < map_items; ++i)
    input[i] = static_cast<std::int64_t>(i) - static_cast<std::int64_t>(map_items / 2);
  const std::vector<std::int64_t> stop_input(stop_items, 1);

  const bool python = options.python && bench::python_available("multiprocessing, concurrent.futures");
  if (options.python && !python)
    std::fprintf(stderr, "pool_bench: python3 with multiprocessing not found: skipping it\n");

  start_raw_workers();
  procshare::PoolOptions pool_options;
  pool_options.workers = worker_count;
  pool_options.name = fmt::format("ps-pool-bench-{}", bench::parent_pid());
  bench::remember_path(main_pool_slot, pool_options.name);
  std::optional<procshare::Pool> pool;
  Results results;
  try {
    pool.emplace(pool_options);

    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    fmt::print("pool_bench: {} rounds, {} CPUs online, 2 workers; per round: {} map calls of "
               "{} items per side (and with Chunk{{{}}}), {} submits, {} round trips, {} early-stop and {} start "
               "trials per side; python: map of {}, {} submits\n",
               options.rounds, cpus, options.map_calls, map_items, options.map_chunk,
               options.submit_tasks,
               options.round_trips, options.stop_trials, options.start_trials,
               python ? options.python_map_items : 0, python ? options.python_submit_tasks : 0);
    fmt::print("pool_bench: baselines run in 2 pre-forked workers woken through a futex "
               "(not forked per call)\n");
    if (cpus < 3)
      fmt::print("pool_bench: {} CPUs for the parent and 2 workers: the early-stop parent "
                 "preempts a spinning worker\n", cpus);
    print_load("at the start");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    fmt::print("pool_bench: built with a sanitizer: the ratios below are not meaningful\n");
#endif
    std::fflush(stdout);

    warm_up(*pool, input, stop_input);
    const double elapsed = bench::run_rounds(options.rounds, [&](int round) {
      run_round(*pool, options, python, round, input, stop_input, results);
    });
    pool.reset();  // close + join, and its segment is removed
    bench::remember_path(main_pool_slot, "");
    stop_raw_workers();
    stop_start_helper(false);
    print_report(python, results, elapsed);
    print_load("at the end");
  } catch (...) {
    if (pool) {
      pool->terminate();
      pool.reset();
    }
    bench::remember_path(main_pool_slot, "");
    stop_raw_workers();
    stop_start_helper(true);
    if (const char* path = bench::remembered_path(start_pool_slot); path[0] != '\0')
      ::unlink(path);  // the helper's pool, if it died
    bench::remember_path(start_pool_slot, "");
    throw;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
