// sync_bench: Event wake-up latency and Queue<int64_t> hand-offs, measured against the raw
// primitive they are built on, against Boost.Interprocess's message_queue and against
// Python's multiprocessing, in one run.
//
// Workloads (every party is a forked process):
//   Event wake-up latency: N waiters (1 and 2) sleep in Event::wait(); the setter takes the
//     time (CLOCK_MONOTONIC) just before set(); each waiter takes the time as soon as wait()
//     returns; one sample is the latest waiter's wake time minus the set time. Before every
//     set, the setter waits until /proc/<pid>/wchan shows every waiter asleep in a futex.
//     Baseline: the same with a raw shared futex (waiters FUTEX_WAIT_BITSET on a word in a
//     MAP_SHARED mapping; the setter increments it and FUTEX_WAKEs INT_MAX). Python:
//     multiprocessing.Event().wait() with 2 waiters, measured the same way by a python3
//     child (time.monotonic_ns() reads CLOCK_MONOTONIC too).
//   Queue ping-pong: the pinger pushes i onto queue A->B, the ponger pops it and pushes i+1
//     onto B->A, the pinger pops and checks it; round trips per second. Queue<int64_t>
//     (capacity 16) with its default spin-then-sleep and with set_spin(0) (sleep at once),
//     against boost::interprocess::message_queue (two queues of 16 8-byte messages) and
//     Python's multiprocessing.Queue(16).
//   Queue 1->1 throughput: a producer pushes 1..M, a consumer pops M items; items per
//     second. Queue<int64_t> (capacity 256, default spin) against message_queue (256
//     messages) and multiprocessing.Queue(256).
// Checks: every waiter checks it woke after the set; every reply, and every item's place
//   in the stream, is checked, and so is the exact sum; the program fails loudly if any is
//   wrong.
// Timing: queue workers announce they are ready and spin until the parent takes the start
//   time and raises the go flag; the measuring worker (pinger, consumer) stores its end
//   time (CLOCK_MONOTONIC, the same clock in every process). A queue run that outlasts 5
//   times its planned length (at least 1 s), as on a busy machine, stops early with what it
//   has done (checked the same way); the output says how many did.
// Statistics: every variant runs once per round, rounds repeated (>= 5), and the order of
//   the variants rotates between rounds. A latency run takes many samples (300 by
//   default, after 20 unrecorded warm-up samples) and reports their median and 99th
//   percentile; a round's figure for a variant is that, and the table shows the median
//   over rounds. Rates are the median over rounds. A ratio is the median of the per-round
//   ratios (pairs measured in the same round), printed with the lowest and highest one.
// Load: queue workers report their CPU time (both near 100% while spinning); each round
//   also measures how many CPUs other processes kept busy (/proc/stat minus this
//   program's own use). Both are printed, with a warning when the machine was shared.
// Targets: Event median with 2 waiters <= 1.2x the raw futex; ping-pong with the default
//   spin >= 50x message_queue and >= 10x Python; with set_spin(0) >= 1x message_queue.
// Output: two tables, then one line per target saying "met" or "NOT met". Exit status 0
//   when every run was correct (whether or not the targets were met), 1 on any failure.
// Cleanup: the segment "ps-sync-bench-<pid>" and the message queues
//   "ps-sync-bench-<pid>-mq-*" are removed on return, on failure and on
//   SIGINT/SIGTERM/SIGHUP; children die with the parent (PR_SET_PDEATHSIG).
//
// Usage: sync_bench [--quick] [--scale=F] [--rounds=N] [--no-python]
//   --quick       about 6 s: short runs, fewer samples, 5 rounds
//   --scale=F     make every run F times longer (default 1: about 25 s in all)
//   --rounds=N    rounds per variant (at least 5; default 7, 5 with --quick)
//   --no-python   skip the Python comparisons
// Each queue variant's round trips (items) per run are calibrated at start-up so that a
// run lasts about 0.3 s (times --scale); Python does 5,000 round trips and 40,000 items
// per run (a third of that with --quick).
#include <procshare/queue.hpp>
#include <procshare/segment.hpp>
#include <procshare/sync.hpp>

#include "harness.hpp"

#include <boost/interprocess/ipc/message_queue.hpp>
#include <fmt/format.h>

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
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
#include <fstream>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using bench::Clock;
using bench::describe_status;
using bench::fail;
using bench::median;
using bench::percentile;
using bench::rate_text;
using bench::ratio_text;
using bench::run_timeout;
using bench::wait_until;
namespace bip = boost::interprocess;

constexpr int max_waiters = 2;
constexpr int max_children = max_waiters;
// How long one step of a latency sample (falling asleep, waking) may take.
constexpr std::chrono::seconds step_timeout{10};
constexpr std::uint32_t pingpong_capacity = 16;
constexpr std::uint32_t stream_capacity = 256;
constexpr int warmup_samples = 20;

// ---------------------------------------------------------------------------------------
// Clocks and small system helpers.

using bench::cpu_now_ns;
using bench::now_ns;

// CPU seconds the whole machine spent busy (/proc/stat: user, nice, system, irq, softirq,
// steal), and those this process and its reaped descendants used.
struct CpuUse {
  double machine = 0;
  double own = 0;
};

CpuUse cpu_use() {
  CpuUse use;
  std::ifstream stat("/proc/stat");
  std::string label;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (stat >> label >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal &&
      label == "cpu")
    use.machine = (user + nice + system + irq + softirq + steal) /
                  static_cast<double>(::sysconf(_SC_CLK_TCK));
  for (const int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage usage{};
    ::getrusage(who, &usage);
    use.own += static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
               static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
  }
  return use;
}

// The raw baseline: a shared futex wait on `word` while it holds `expected`, no timeout.
void raw_futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected) {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_BITSET, expected,
            nullptr, nullptr, FUTEX_BITSET_MATCH_ANY);
}

// The raw baseline: wakes every sleeper on `word`.
void raw_futex_wake_all(std::atomic<std::uint32_t>& word) {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr,
            nullptr, 0);
}

// A pipe, closed on destruction.
class Pipe {
public:
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) fail("pipe: {}", std::strerror(errno));
    read_fd = fds[0];
    write_fd = fds[1];
  }
  ~Pipe() {
    ::close(read_fd);
    ::close(write_fd);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  int read_fd = -1;
  int write_fd = -1;
};

void write_byte(int fd, char byte) {
  for (;;) {
    const ssize_t done = ::write(fd, &byte, 1);
    if (done == 1) return;
    if (done < 0 && errno != EINTR) fail("write to a pipe: {}", std::strerror(errno));
  }
}

// One byte from `fd`; '\0' at end of file.
char read_byte(int fd) {
  char byte = 0;
  for (;;) {
    const ssize_t done = ::read(fd, &byte, 1);
    if (done == 1) return byte;
    if (done == 0) return '\0';
    if (errno != EINTR) fail("read from a pipe: {}", std::strerror(errno));
  }
}

// A file descriptor, closed on destruction.
class Fd {
public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  int get() const noexcept { return fd_; }

private:
  int fd_;
};

// Whether /proc/<pid>/wchan, open as `wchan`, says the process sleeps in a futex wait.
bool asleep_in_futex(const Fd& wchan) {
  char buffer[64];
  const ssize_t got = ::pread(wchan.get(), buffer, sizeof buffer, 0);
  return got > 0 &&
         std::string_view(buffer, static_cast<std::size_t>(got)).find("futex") !=
             std::string_view::npos;
}

Fd open_wchan(pid_t pid) {
  const std::string path = fmt::format("/proc/{}/wchan", pid);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {}: {}", path, std::strerror(errno));
  return Fd(fd);
}

// ---------------------------------------------------------------------------------------
// Children: forked, registered for the signal handler, killed and reaped on every path.

class Children {
public:
  Children() = default;
  ~Children() { kill_all(); }
  Children(const Children&) = delete;
  Children& operator=(const Children&) = delete;

  // Forks a child that runs body() and _exits (0, or 1 with a message on stderr). It never
  // returns from main, so never runs the Segment's or the message queues' destructors.
  template <class Body> pid_t fork(std::string_view what, Body body) {
    const pid_t pid = bench::fork_child(what, body);
    add(pid, false);
    return pid;
  }

  // Registers `pid`; `group`: kill its whole process group (python and its workers).
  void add(pid_t pid, bool group) {
    if (children_.size() >= static_cast<std::size_t>(max_children)) fail("too many children");
    children_.push_back({pid, group ? -pid : pid});
    publish();
  }

  // Fails if a child has already ended (it is reaped, the others are killed).
  void check_alive(std::string_view what) {
    for (std::size_t i = 0; i < children_.size(); ++i) {
      const pid_t pid = children_[i].pid;
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(i));
        kill_all();
        fail("{}: child {} {} early", what, pid, describe_status(status));
      }
    }
  }

  // Waits until every child has exited (0) by `deadline`; fails otherwise.
  void finish(std::string_view what, Clock::time_point deadline) {
    std::string failures;
    while (!children_.empty()) {
      const pid_t pid = children_.front().pid;
      const std::optional<int> status = wait_until(pid, deadline);
      if (!status) {
        kill_all();
        fail("{}: no result within {} s", what, run_timeout.count());
      }
      children_.erase(children_.begin());
      publish();
      if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
        failures += fmt::format(" child {} {};", pid, describe_status(*status));
    }
    if (!failures.empty()) fail("{}:{}", what, failures);
  }

  // Kills and reaps every child still registered.
  void kill_all() noexcept {
    for (const Child& child : children_) ::kill(child.kill_target, SIGKILL);
    for (const Child& child : children_) {
      int status = 0;
      while (::waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {}
    }
    children_.clear();
    publish();
  }

private:
  struct Child {
    pid_t pid;
    pid_t kill_target;  // -pid for a process group
  };

  // Shows the signal handler what to kill.
  void publish() noexcept {
    for (std::size_t i = 0; i < static_cast<std::size_t>(max_children); ++i)
      bench::live_children[i] = i < children_.size() ? children_[i].kill_target : 0;
  }

  std::vector<Child> children_;
};

// ---------------------------------------------------------------------------------------
// What the processes share besides the procshare segment: the raw futex word, the clocks,
// the checks, in an anonymous MAP_SHARED mapping made before any fork.

struct alignas(64) PaddedTime {
  std::atomic<std::int64_t> ns;
};

struct Control {
  alignas(64) std::atomic<int> ready;            // queue workers that are waiting for go
  alignas(64) std::atomic<int> go;               // 1: start now
  alignas(64) std::atomic<std::uint32_t> raw_word;  // the raw futex baseline's word
  alignas(64) std::atomic<std::int64_t> set_ns;  // steady_clock just before the set
  PaddedTime wake_ns[max_waiters];               // when each waiter ran again
  alignas(64) std::atomic<std::int64_t> end_ns;  // when the measuring queue worker finished
  std::atomic<std::int64_t> stop_ns;             // the sender stops early after this
  std::atomic<std::int64_t> done;                // round trips (items) the run completed
  std::atomic<std::int64_t> cpu_ns[2];           // CPU time each queue worker spent after go
  std::atomic<std::int64_t> checksum;            // sum of what the checking worker received
  std::atomic<std::int64_t> mismatches;          // items that were not what was expected
};

Control* map_control() {
  void* memory = ::mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) fail("cannot map the control block: {}", std::strerror(errno));
  return ::new (memory) Control{};
}

// The three message queues, removed (in this process only) on destruction.
class MessageQueues {
public:
  explicit MessageQueues(const std::string& prefix)
      : names_{prefix + "-ab", prefix + "-ba", prefix + "-items"},
        ab(bip::create_only, names_.list[0].c_str(), pingpong_capacity, sizeof(std::int64_t)),
        ba(bip::create_only, names_.list[1].c_str(), pingpong_capacity, sizeof(std::int64_t)),
        items(bip::create_only, names_.list[2].c_str(), stream_capacity, sizeof(std::int64_t)) {}

private:
  // Declared first: removes the names after the queues are unmapped, also when a later
  // queue's constructor throws.
  struct Names {
    std::array<std::string, 3> list;
    ~Names() {
      if (::getpid() != bench::parent_pid()) return;
      for (const std::string& name : list) bip::message_queue::remove(name.c_str());
    }
  } names_;

public:
  bip::message_queue ab;     // ping-pong, pinger to ponger
  bip::message_queue ba;     // ping-pong, ponger to pinger
  bip::message_queue items;  // throughput
};

struct Shared {
  Control* control;
  procshare::Event event;
  procshare::Queue<std::int64_t> ab;     // ping-pong, pinger to ponger
  procshare::Queue<std::int64_t> ba;     // ping-pong, ponger to pinger
  procshare::Queue<std::int64_t> items;  // throughput
  MessageQueues* message_queues;
};

// ---------------------------------------------------------------------------------------
// Event wake-up latency.

enum class Waker { event, raw_futex };

std::string_view waker_name(Waker waker) {
  return waker == Waker::event ? "procshare Event" : "raw futex";
}

// A waiter: for every 's' on `go_fd`, sleeps until woken, records when it runs again and
// reports on `done_fd`; returns at 'q' (or end of file).
void waiter_loop(const Shared& shared, Waker waker, int index, int go_fd, int done_fd) {
  Control& control = *shared.control;
  procshare::Event event = shared.event;
  while (read_byte(go_fd) == 's') {
    if (waker == Waker::event) {
      event.wait();
    } else {
      const std::uint32_t expected = control.raw_word.load(std::memory_order_acquire);
      while (control.raw_word.load(std::memory_order_acquire) == expected)
        raw_futex_wait(control.raw_word, expected);
    }
    const std::int64_t woke = now_ns();
    const std::int64_t set = control.set_ns.load(std::memory_order_acquire);
    if (set == 0 || woke < set)
      fail("waiter {} returned from its wait before the set ({} ns before)", index, set - woke);
    control.wake_ns[index].ns.store(woke, std::memory_order_release);
    write_byte(done_fd, 'd');
  }
}

// Waits until every waiter sleeps in a futex (per /proc/<pid>/wchan).
void wait_until_asleep(const std::vector<Fd>& wchans, Children& children, std::string_view what) {
  const auto deadline = Clock::now() + step_timeout;
  for (std::uint64_t polls = 1;; ++polls) {
    if (std::all_of(wchans.begin(), wchans.end(), asleep_in_futex)) return;
    if (polls % 256 == 0) {
      children.check_alive(what);
      if (Clock::now() > deadline)
        fail("{}: a waiter did not show up asleep in a futex (/proc/<pid>/wchan) within {} s",
             what, step_timeout.count());
    }
    ::sched_yield();
  }
}

// Reads `count` bytes from `fd`, failing if a child dies or it takes too long.
void await_reports(int fd, int count, Children& children, std::string_view what) {
  const auto deadline = Clock::now() + step_timeout;
  for (int got = 0; got < count;) {
    pollfd watched{fd, POLLIN, 0};
    const int ready = ::poll(&watched, 1, 100);
    if (ready > 0) {
      char buffer[max_waiters];
      const ssize_t done = ::read(fd, buffer, static_cast<std::size_t>(count - got));
      if (done > 0) got += static_cast<int>(done);
      if (done == 0) fail("{}: the report pipe closed", what);
      continue;
    }
    if (ready < 0 && errno != EINTR) fail("poll: {}", std::strerror(errno));
    children.check_alive(what);
    if (Clock::now() > deadline)
      fail("{}: a waiter did not wake within {} s", what, step_timeout.count());
  }
}

// One latency run: `waiters` waiters, `samples` recorded samples after the warm-up.
// Returns the samples in microseconds.
std::vector<double> run_latency(Shared& shared, Waker waker, int waiters, int samples) {
  Control& control = *shared.control;
  const std::string what = fmt::format("{} with {} waiter(s)", waker_name(waker), waiters);
  Pipe go[max_waiters];
  Pipe done;
  Children children;
  std::vector<Fd> wchans;
  for (int i = 0; i < waiters; ++i) {
    const int go_fd = go[i].read_fd;
    const pid_t pid = children.fork(what, [&shared, waker, i, go_fd, &done] {
      waiter_loop(shared, waker, i, go_fd, done.write_fd);
    });
    wchans.push_back(open_wchan(pid));
  }

  std::vector<double> latencies;
  latencies.reserve(static_cast<std::size_t>(samples));
  for (int sample = 0; sample < warmup_samples + samples; ++sample) {
    if (waker == Waker::event) shared.event.clear();
    control.set_ns.store(0);
    for (auto& wake : control.wake_ns) wake.ns.store(0);
    for (int i = 0; i < waiters; ++i) write_byte(go[i].write_fd, 's');
    wait_until_asleep(wchans, children, what);

    const std::int64_t set_time = now_ns();
    control.set_ns.store(set_time, std::memory_order_relaxed);  // published by the set
    if (waker == Waker::event) {
      shared.event.set();
    } else {
      control.raw_word.fetch_add(1, std::memory_order_release);
      raw_futex_wake_all(control.raw_word);
    }
    await_reports(done.read_fd, waiters, children, what);

    std::int64_t latest = 0;
    for (int i = 0; i < waiters; ++i)
      latest = std::max(latest, control.wake_ns[i].ns.load(std::memory_order_acquire));
    if (latest < set_time) fail("{}: a waiter reported no wake time", what);
    if (sample >= warmup_samples)
      latencies.push_back(static_cast<double>(latest - set_time) * 1e-3);
  }
  for (int i = 0; i < waiters; ++i) write_byte(go[i].write_fd, 'q');
  children.finish(what, Clock::now() + run_timeout);
  return latencies;
}

// ---------------------------------------------------------------------------------------
// Queues: ping-pong and 1->1 throughput.

enum class Transport { spin, sleep, message_queue };

std::string_view transport_name(Transport transport) {
  switch (transport) {
    case Transport::spin: return "procshare Queue (spin)";
    case Transport::sleep: return "procshare Queue (set_spin(0))";
    case Transport::message_queue: return "boost message_queue";
  }
  return "?";
}

// One direction of a hand-off, over a procshare Queue.
struct QueueLink {
  procshare::Queue<std::int64_t> queue;
  void send(std::int64_t item) { queue.push(item); }
  std::int64_t receive() { return queue.pop(); }
};

// One direction of a hand-off, over a Boost message_queue.
struct MessageQueueLink {
  bip::message_queue* queue;
  void send(std::int64_t item) { queue->send(&item, sizeof item, 0); }
  std::int64_t receive() {
    std::int64_t item = 0;
    bip::message_queue::size_type got = 0;
    unsigned int priority = 0;
    queue->receive(&item, sizeof item, got, priority);
    if (got != sizeof item) fail("message_queue: received {} bytes, expected 8", got);
    return item;
  }
};

// Calls body(ab, ba, items) with the three links of `transport`.
template <class Body> void with_links(const Shared& shared, Transport transport, Body body) {
  if (transport == Transport::message_queue) {
    MessageQueues& queues = *shared.message_queues;
    body(MessageQueueLink{&queues.ab}, MessageQueueLink{&queues.ba},
         MessageQueueLink{&queues.items});
    return;
  }
  QueueLink links[] = {{shared.ab}, {shared.ba}, {shared.items}};
  if (transport == Transport::sleep)
    for (QueueLink& link : links) link.queue.set_spin(std::chrono::nanoseconds(0));
  body(links[0], links[1], links[2]);
}

void wait_for_go(Control& control) {
  control.ready.fetch_add(1);
  while (control.go.load(std::memory_order_acquire) == 0) ::sched_yield();
}

// Items are 1, 2, ...; the sender ends the run with a 0, after n items or, on a machine so
// busy that the run outlasts its cut-off (Control::stop_ns), early.
constexpr std::int64_t stop_item = 0;

bool past_cutoff(const Control& control, std::int64_t i) {
  return i % 1024 == 0 && now_ns() > control.stop_ns.load(std::memory_order_relaxed);
}

template <class Link> void pinger(Control& control, Link to, Link from, std::int64_t n) {
  wait_for_go(control);
  const std::int64_t cpu_start = cpu_now_ns();
  std::int64_t sum = 0;
  std::int64_t mismatches = 0;
  std::int64_t i = 1;
  for (; i <= n && !past_cutoff(control, i); ++i) {
    to.send(i);
    const std::int64_t reply = from.receive();
    mismatches += reply != i + 1;
    sum += reply;
  }
  control.end_ns.store(now_ns());
  control.cpu_ns[0].store(cpu_now_ns() - cpu_start);
  to.send(stop_item);
  control.done.store(i - 1);
  control.checksum.store(sum);
  control.mismatches.fetch_add(mismatches);
}

template <class Link> void ponger(Control& control, Link from, Link to) {
  wait_for_go(control);
  const std::int64_t cpu_start = cpu_now_ns();
  std::int64_t mismatches = 0;
  for (std::int64_t i = 1;; ++i) {
    const std::int64_t item = from.receive();
    if (item == stop_item) break;
    mismatches += item != i;
    to.send(item + 1);
  }
  control.cpu_ns[1].store(cpu_now_ns() - cpu_start);
  control.mismatches.fetch_add(mismatches);
}

template <class Link> void producer(Control& control, Link to, std::int64_t n) {
  wait_for_go(control);
  const std::int64_t cpu_start = cpu_now_ns();
  for (std::int64_t i = 1; i <= n && !past_cutoff(control, i); ++i) to.send(i);
  to.send(stop_item);
  control.cpu_ns[0].store(cpu_now_ns() - cpu_start);
}

template <class Link> void consumer(Control& control, Link from) {
  wait_for_go(control);
  const std::int64_t cpu_start = cpu_now_ns();
  std::int64_t sum = 0;
  std::int64_t mismatches = 0;
  std::int64_t i = 1;
  for (;; ++i) {
    const std::int64_t item = from.receive();
    if (item == stop_item) break;
    mismatches += item != i;  // one producer: items arrive in the order pushed
    sum += item;
  }
  control.end_ns.store(now_ns());
  control.cpu_ns[1].store(cpu_now_ns() - cpu_start);
  control.done.store(i - 1);
  control.checksum.store(sum);
  control.mismatches.fetch_add(mismatches);
}

enum class Workload { pingpong, throughput };

// What one queue run measured.
struct RunResult {
  double rate;         // round trips or items per second
  double seconds;      // from go to the measuring worker's end
  double parallelism;  // the workers' CPU time over the wall time: 2.0 when both ran
                       // side by side throughout (spinning), about 1.0 or less when they
                       // took turns or slept
  std::int64_t done;   // round trips (items) completed: n, or fewer if cut off
};

// Runs `workload` over `transport` with `n` round trips (items), cut off after `cutoff`
// seconds. Fails if a worker fails, the run times out, or a reply, an item's order or the
// sum is wrong.
RunResult run_queue(Shared& shared, Workload workload, Transport transport, std::int64_t n,
                    double cutoff) {
  Control& control = *shared.control;
  const std::string what = fmt::format(
      "{} {}", transport_name(transport), workload == Workload::pingpong ? "ping-pong" : "1->1");
  control.ready.store(0);
  control.go.store(0);
  control.end_ns.store(0);
  control.done.store(0);
  for (auto& cpu : control.cpu_ns) cpu.store(0);
  control.checksum.store(0);
  control.mismatches.store(0);

  Children children;
  with_links(shared, transport, [&](auto ab, auto ba, auto items) {
    if (workload == Workload::pingpong) {
      children.fork(what, [&] { pinger(control, ab, ba, n); });
      children.fork(what, [&] { ponger(control, ab, ba); });
    } else {
      children.fork(what, [&] { producer(control, items, n); });
      children.fork(what, [&] { consumer(control, items); });
    }
  });
  const auto deadline = Clock::now() + run_timeout;
  while (control.ready.load() < 2) {
    children.check_alive(what);
    if (Clock::now() > deadline)
      fail("{}: workers did not start within {} s", what, run_timeout.count());
    ::sched_yield();
  }
  const std::int64_t start = now_ns();
  control.stop_ns.store(start + std::llround(cutoff * 1e9));
  control.go.store(1, std::memory_order_release);
  children.finish(what, deadline);

  const std::int64_t done = control.done.load();
  const std::int64_t expected = workload == Workload::pingpong ? done * (done + 1) / 2 + done
                                                               : done * (done + 1) / 2;
  if (done < 1 || done > n || control.mismatches.load() != 0 ||
      control.checksum.load() != expected)
    fail("WRONG ITEMS: {} with {} of {}: {} out of place, sum {} (expected {})", what, done, n,
         control.mismatches.load(), control.checksum.load(), expected);
  const std::int64_t end = control.end_ns.load();
  if (end <= start) fail("{}: the worker did not record its end time", what);
  const double seconds = static_cast<double>(end - start) * 1e-9;
  const double cpu = static_cast<double>(control.cpu_ns[0].load() + control.cpu_ns[1].load());
  return {static_cast<double>(done) / seconds, seconds, cpu * 1e-9 / seconds, done};
}

// ---------------------------------------------------------------------------------------
// Python: the same three workloads with multiprocessing, run in a python3 child.
//   event WAITERS SAMPLES WARMUP: prints every sample's latency in ns;
//   pingpong N CAPACITY / throughput N CAPACITY: prints round trips (items) per second.

constexpr const char* python_script = R"PY(
import multiprocessing as mp
import os
import sys
import time

def event_waiter(event, go, done, wakes, sets, index):
    while os.read(go, 1) == b"s":
        event.wait()
        woke = time.monotonic_ns()
        if sets[0] == 0 or woke < sets[0]:
            sys.exit("python waiter returned from Event.wait() before the set")
        wakes[index] = woke
        done.release()

def event_latency(ctx, waiters, samples, warmup):
    event, done = ctx.Event(), ctx.Semaphore(0)
    wakes = ctx.Array("q", waiters, lock=False)
    sets = ctx.Array("q", 1, lock=False)
    pipes = [os.pipe() for _ in range(waiters)]
    procs = [ctx.Process(target=event_waiter, args=(event, pipes[i][0], done, wakes, sets, i))
             for i in range(waiters)]
    for p in procs:
        p.start()
    wchans = [os.open(f"/proc/{p.pid}/wchan", os.O_RDONLY) for p in procs]
    latencies = []
    for sample in range(warmup + samples):
        event.clear()
        sets[0] = 0
        for _, w in pipes:
            os.write(w, b"s")
        deadline = time.monotonic() + 10
        while not all(b"futex" in os.pread(fd, 64, 0) for fd in wchans):
            if time.monotonic() > deadline or not all(p.is_alive() for p in procs):
                sys.exit("a python waiter did not fall asleep in Event.wait()")
            os.sched_yield()
        sets[0] = time.monotonic_ns()
        event.set()
        for _ in procs:
            if not done.acquire(timeout=10):
                sys.exit("a python waiter did not wake")
        if sample >= warmup:
            latencies.append(max(wakes) - sets[0])
    for _, w in pipes:
        os.write(w, b"q")
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        sys.exit("python waiter failed")
    print(" ".join(str(x) for x in latencies))

def ponger(inbox, outbox, n):
    for _ in range(n + 1):
        outbox.put(inbox.get() + 1)

def pingpong(ctx, n, capacity):
    ab, ba = ctx.Queue(capacity), ctx.Queue(capacity)
    p = ctx.Process(target=ponger, args=(ab, ba, n))
    p.start()
    ab.put(0)
    if ba.get() != 1:
        sys.exit("WRONG reply to the first ping")
    start = time.perf_counter()
    for i in range(1, n + 1):
        ab.put(i)
        if ba.get() != i + 1:
            sys.exit(f"WRONG reply to {i}")
    seconds = time.perf_counter() - start
    p.join()
    if p.exitcode != 0:
        sys.exit("python ponger failed")
    print(f"{n / seconds:.1f}")

def producer(queue, n, ready, go):
    ready.release()
    go.wait()
    for i in range(1, n + 1):
        queue.put(i)

def throughput(ctx, n, capacity):
    queue, ready, go = ctx.Queue(capacity), ctx.Semaphore(0), ctx.Event()
    p = ctx.Process(target=producer, args=(queue, n, ready, go))
    p.start()
    ready.acquire()
    start = time.perf_counter()
    go.set()
    total = 0
    for i in range(1, n + 1):
        item = queue.get()
        if item != i:
            sys.exit(f"WRONG item {item}, expected {i}")
        total += item
    seconds = time.perf_counter() - start
    p.join()
    if p.exitcode != 0:
        sys.exit("python producer failed")
    if total != n * (n + 1) // 2:
        sys.exit(f"WRONG TOTAL {total}")
    print(f"{n / seconds:.1f}")

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    mode, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"event": event_latency, "pingpong": pingpong, "throughput": throughput}[mode](ctx, *args)
)PY";

// Runs the script with `args`; returns the numbers it printed. Fails if python fails or
// hangs, or prints no result.
std::vector<double> run_python(const std::vector<std::string>& args, std::string_view what) {
  const std::string output =
      bench::run_python(python_script, args, fmt::format("python {}", args.front()));
  const std::vector<double> numbers = bench::parse_numbers(output);
  if (numbers.empty() || !std::all_of(numbers.begin(), numbers.end(),
                                      [](double x) { return std::isfinite(x) && x >= 0; }))
    fail("{} printed no result: '{}'", what, output);
  return numbers;
}

std::vector<double> python_latency(int waiters, int samples) {
  std::vector<double> latencies =
      run_python({"event", std::to_string(waiters), std::to_string(samples),
                  std::to_string(warmup_samples)},
                 "python event");
  if (latencies.size() != static_cast<std::size_t>(samples))
    fail("python event printed {} samples, expected {}", latencies.size(), samples);
  for (double& latency : latencies) latency *= 1e-3;  // ns to us
  return latencies;
}

double python_rate(Workload workload, std::int64_t n) {
  const bool pingpong = workload == Workload::pingpong;
  const std::vector<double> numbers =
      run_python({pingpong ? "pingpong" : "throughput", std::to_string(n),
                  std::to_string(pingpong ? pingpong_capacity : stream_capacity)},
                 "python queue");
  if (!(numbers.front() > 0)) fail("python queue printed a rate of 0");
  return numbers.front();
}

// ---------------------------------------------------------------------------------------
// Statistics and the tables.

// Per-round figures of one variant: latency medians and p99s, or rates.
struct Series {
  std::vector<double> medians;      // latency runs: the run's median (us); queue runs: rate
  std::vector<double> p99s;         // latency runs only
  std::vector<double> parallelism;  // C++ queue runs only
  void add_latency(const std::vector<double>& samples) {
    medians.push_back(median(samples));
    p99s.push_back(percentile(samples, 99));
  }
  void add_rate(double rate) { medians.push_back(rate); }
  void add_run(const RunResult& result) {
    medians.push_back(result.rate);
    parallelism.push_back(result.parallelism);
  }
};

std::string latency_text(double us) {
  return us >= 100 ? fmt::format("{:.0f} us", us) : fmt::format("{:.1f} us", us);
}

using bench::Comparison;
using bench::compare;

// One table row; a target of 0 is none. Latency rows want a ratio at most the target
// (lower is better), rate rows at least.
struct Row {
  std::string name;
  const std::vector<double>* ours;
  const std::vector<double>* baseline;
  double target;
};

struct Options {
  double run_seconds = 0.3;  // target length of one queue run
  double cutoff = 1.5;       // a queue run on a busy machine stops early after this (s)
  int samples = 300;         // latency samples per run (after the warm-up)
  std::int64_t python_round_trips = 5'000;
  std::int64_t python_items = 40'000;
  int rounds = 7;
  bool python = true;
};

Options parse_options(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: sync_bench [--quick] [--scale=F] [--rounds=N] [--no-python]\n"
      "  --quick      about 6 s: short runs, fewer samples, 5 rounds\n"
      "  --scale=F    make every run F times longer (default: about 25 s in all)\n"
      "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)\n"
      "  --no-python  skip the comparisons with Python's multiprocessing");
  Options options;
  options.rounds = common.rounds;
  options.python = common.python;
  if (common.quick) options.samples = 150;
  const double scale = common.scale * (common.quick ? 0.15 : 1.0);
  options.run_seconds *= scale;
  options.cutoff = std::max(1.0, 5 * options.run_seconds);
  const double python_scale = std::min(1.0, 2.2 * scale);
  options.python_round_trips = std::max<std::int64_t>(
      200, std::llround(static_cast<double>(options.python_round_trips) * python_scale));
  options.python_items = std::max<std::int64_t>(
      1000, std::llround(static_cast<double>(options.python_items) * python_scale));
  return options;
}

// One queue variant: its workload, transport, calibrated count and results.
struct QueueVariant {
  Workload workload;
  Transport transport;
  std::int64_t n = 0;  // round trips or items per run, from calibrate()
  Series series{};
};

// Chooses the variant's n so that a run lasts about `run_seconds` (also warming up the
// mappings and code: these runs are not counted).
void calibrate(Shared& shared, QueueVariant& variant, const Options& options) {
  std::int64_t n = 1000;
  auto scaled = [&options](const RunResult& result) {
    return std::max<std::int64_t>(1000, std::llround(static_cast<double>(result.done) *
                                                     options.run_seconds / result.seconds));
  };
  auto run = [&](std::int64_t count) {
    return run_queue(shared, variant.workload, variant.transport, count, options.cutoff);
  };
  for (;;) {
    const RunResult result = run(n);
    if (result.seconds >= 0.05 || n >= (std::int64_t{1} << 40)) {
      n = scaled(result);
      break;
    }
    n *= 4;
  }
  // Once more at about the final length: short first runs can be unrepresentative.
  variant.n = scaled(run(n));
}

int run(int argc, char** argv) {
  const Options options = parse_options(argc, argv);

  bench::install_signal_handlers("sync_bench");
  const std::string name = fmt::format("ps-sync-bench-{}", bench::parent_pid());
  const std::string mq_prefix = name + "-mq";
  bench::remember_path(0, name);
  bench::remember_path(1, mq_prefix + "-ab");
  bench::remember_path(2, mq_prefix + "-ba");
  bench::remember_path(3, mq_prefix + "-items");
  procshare::Segment segment = procshare::Segment::create(name, 256 * 1024);
  MessageQueues message_queues(mq_prefix);

  Shared shared{map_control(),
                segment.create_event("event"),
                segment.create_queue<std::int64_t>("ab", pingpong_capacity),
                segment.create_queue<std::int64_t>("ba", pingpong_capacity),
                segment.create_queue<std::int64_t>("items", stream_capacity),
                &message_queues};

  const bool python = options.python && bench::python_available();
  if (options.python && !python)
    std::fprintf(stderr, "sync_bench: python3 with multiprocessing not found: skipping it\n");

  // Latency variants: [waiters - 1][waker].
  Series latency[max_waiters][2];
  Series python_latency_series;
  QueueVariant queues[] = {
      {Workload::pingpong, Transport::spin},
      {Workload::pingpong, Transport::sleep},
      {Workload::pingpong, Transport::message_queue},
      {Workload::throughput, Transport::spin},
      {Workload::throughput, Transport::message_queue},
  };
  QueueVariant& pingpong_spin = queues[0];
  QueueVariant& pingpong_sleep = queues[1];
  QueueVariant& pingpong_mq = queues[2];
  QueueVariant& stream_spin = queues[3];
  QueueVariant& stream_mq = queues[4];
  Series python_pingpong;
  Series python_stream;
  for (QueueVariant& variant : queues) calibrate(shared, variant, options);

  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  fmt::print("sync_bench: {} rounds, {} CPUs online; latency: {} samples per run (after {} "
             "warm-up); ping-pong round trips per run: spin {}, set_spin(0) {}, "
             "message_queue {}; 1->1 items per run: spin {}, message_queue {}; python: {} "
             "round trips, {} items\n",
             options.rounds, cpus, options.samples, warmup_samples, pingpong_spin.n,
             pingpong_sleep.n, pingpong_mq.n, stream_spin.n, stream_mq.n,
             python ? options.python_round_trips : 0, python ? options.python_items : 0);
  if (cpus < 2)
    fmt::print("sync_bench: fewer than 2 CPUs: the queue runs measure time slicing\n");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fmt::print("sync_bench: built with a sanitizer: the ratios below are not meaningful\n");
#endif
  std::fflush(stdout);

  // CPUs that other processes kept busy during each round (steal time included).
  std::vector<double> other_load;
  int cut_runs = 0;  // queue runs stopped at the cut-off
  const double elapsed = bench::run_rounds(options.rounds, [&](int round) {
    const CpuUse round_start = cpu_use();
    const auto round_started = Clock::now();
    for (int waiters = 1; waiters <= max_waiters; ++waiters) {
      const Waker order[2] = {round % 2 == 0 ? Waker::event : Waker::raw_futex,
                              round % 2 == 0 ? Waker::raw_futex : Waker::event};
      for (const Waker waker : order)
        latency[waiters - 1][static_cast<int>(waker)].add_latency(
            run_latency(shared, waker, waiters, options.samples));
    }
    if (python) python_latency_series.add_latency(python_latency(2, options.samples));
    // Rotate the queue variants' order within each workload.
    for (const auto& [first, count] : {std::pair{0, 3}, std::pair{3, 2}})
      for (int i = 0; i < count; ++i) {
        QueueVariant& variant = queues[first + (i + round) % count];
        const RunResult result =
            run_queue(shared, variant.workload, variant.transport, variant.n, options.cutoff);
        cut_runs += result.done < variant.n;
        variant.series.add_run(result);
      }
    if (python) {
      python_pingpong.add_rate(python_rate(Workload::pingpong, options.python_round_trips));
      python_stream.add_rate(python_rate(Workload::throughput, options.python_items));
    }
    const CpuUse round_end = cpu_use();
    const double round_seconds =
        std::chrono::duration<double>(Clock::now() - round_started).count();
    other_load.push_back(std::max(0.0, (round_end.machine - round_start.machine) -
                                           (round_end.own - round_start.own)) /
                         round_seconds);
  });
  std::vector<std::string> verdicts;
  auto verdict = [&verdicts](const Row& row, double ratio, bool lower_is_better) {
    if (row.target <= 0) return;
    const bool met = lower_is_better ? ratio <= row.target : ratio >= row.target;
    const double short_by = lower_is_better ? ratio / row.target - 1 : 1 - ratio / row.target;
    verdicts.push_back(fmt::format("{:<46} {} ({} vs target {} {}{})", row.name,
                                   met ? "met" : "NOT met", ratio_text(ratio),
                                   lower_is_better ? "<=" : ">=", ratio_text(row.target),
                                   met ? "" : fmt::format(", {:.0f}% off", 100 * short_by)));
  };

  // Latency table: the procshare column and the baseline column are medians over rounds.
  const Series& event1 = latency[0][static_cast<int>(Waker::event)];
  const Series& raw1 = latency[0][static_cast<int>(Waker::raw_futex)];
  const Series& event2 = latency[1][static_cast<int>(Waker::event)];
  const Series& raw2 = latency[1][static_cast<int>(Waker::raw_futex)];
  std::vector<Row> latency_rows = {
      {"Event wake median, 1 waiter vs raw futex", &event1.medians, &raw1.medians, 0},
      {"Event wake p99, 1 waiter vs raw futex", &event1.p99s, &raw1.p99s, 0},
      {"Event wake median, 2 waiters vs raw futex", &event2.medians, &raw2.medians, 1.2},
      {"Event wake p99, 2 waiters vs raw futex", &event2.p99s, &raw2.p99s, 0},
  };
  if (python) {
    latency_rows.push_back({"Event wake median, 2 waiters vs Python Event", &event2.medians,
                            &python_latency_series.medians, 0});
    latency_rows.push_back({"Event wake p99, 2 waiters vs Python Event", &event2.p99s,
                            &python_latency_series.p99s, 0});
  }
  fmt::print("\n{:<46} {:>10} {:>10} {:>8}  {:<15} {}\n", "latency (lower is better)",
             "procshare", "baseline", "ratio", "(round range)", "target");
  for (const Row& row : latency_rows) {
    const Comparison c = compare(*row.ours, *row.baseline);
    const std::string target =
        row.target > 0 ? fmt::format("<= {}", ratio_text(row.target)) : std::string("-");
    fmt::print("{:<46} {:>10} {:>10} {:>8}  {:<15} {}\n", row.name,
               latency_text(median(*row.ours)), latency_text(median(*row.baseline)),
               ratio_text(c.ratio), fmt::format("({}-{})", ratio_text(c.low), ratio_text(c.high)),
               target);
    verdict(row, c.ratio, true);
  }
  if (!python) fmt::print("{:<46} {:>10}\n", "Python Event comparison", "skipped");

  std::vector<Row> rate_rows = {
      {"ping-pong spin vs message_queue", &pingpong_spin.series.medians,
       &pingpong_mq.series.medians, 50},
      {"ping-pong set_spin(0) vs message_queue", &pingpong_sleep.series.medians,
       &pingpong_mq.series.medians, 1},
      {"ping-pong spin vs set_spin(0)", &pingpong_spin.series.medians,
       &pingpong_sleep.series.medians, 0},
      {"1->1 throughput spin vs message_queue", &stream_spin.series.medians,
       &stream_mq.series.medians, 0},
  };
  if (python) {
    rate_rows.insert(rate_rows.begin() + 1,
                     {"ping-pong spin vs Python Queue", &pingpong_spin.series.medians,
                      &python_pingpong.medians, 10});
    rate_rows.push_back({"ping-pong message_queue vs Python Queue", &pingpong_mq.series.medians,
                         &python_pingpong.medians, 0});
    rate_rows.push_back({"1->1 throughput spin vs Python Queue", &stream_spin.series.medians,
                         &python_stream.medians, 0});
  }
  fmt::print("\n{:<46} {:>10} {:>10} {:>8}  {:<15} {}\n", "rate (higher is better)", "ours",
             "baseline", "ratio", "(round range)", "target");
  for (const Row& row : rate_rows) {
    const Comparison c = compare(*row.ours, *row.baseline);
    const std::string target =
        row.target > 0 ? fmt::format(">= {}", ratio_text(row.target)) : std::string("-");
    fmt::print("{:<46} {:>10} {:>10} {:>8}  {:<15} {}\n", row.name, rate_text(median(*row.ours)),
               rate_text(median(*row.baseline)), ratio_text(c.ratio),
               fmt::format("({}-{})", ratio_text(c.low), ratio_text(c.high)), target);
    verdict(row, c.ratio, false);
  }
  if (!python) fmt::print("{:<46} {:>10}\n", "Python Queue comparison", "skipped");

  fmt::print("\nlatency: a run's median and p99 over its samples, then the median over {} "
             "interleaved rounds; rates: median of the rounds; ratio: median of per-round "
             "ratios; measured rounds took {:.1f} s\n",
             options.rounds, elapsed);
  fmt::print("queue runs, CPUs busy (workers' CPU time / wall time, median; 2.00 = both "
             "running throughout):\n  ping-pong spin {:.2f}, set_spin(0) {:.2f}, "
             "message_queue {:.2f}; 1->1 spin {:.2f}, message_queue {:.2f}\n\n",
             median(pingpong_spin.series.parallelism), median(pingpong_sleep.series.parallelism),
             median(pingpong_mq.series.parallelism), median(stream_spin.series.parallelism),
             median(stream_mq.series.parallelism));
  const double busiest = *std::max_element(other_load.begin(), other_load.end());
  fmt::print("other load (CPUs kept busy by other processes, steal included, per round): "
             "median {:.2f}, max {:.2f}\n\n",
             median(other_load), busiest);
  if (median(pingpong_spin.series.parallelism) < 1.5)
    fmt::print("WARNING: the spinning ping-pong workers mostly took turns on one CPU (other "
               "load on the\n  machine?), so the spin rows measure time slicing, not "
               "hand-offs between running processes.\n\n");
  if (cut_runs > 0)
    fmt::print("WARNING: {} queue runs lasted {:.1f} s and were cut short (busy machine?).\n\n",
               cut_runs, options.cutoff);
  if (busiest > 0.25)
    fmt::print("WARNING: other processes kept {:.2f} CPUs busy in the worst round: the rounds "
               "with load\n  measured a shared machine; rerun on a quiet one.\n\n",
               busiest);
  for (const std::string& line : verdicts) fmt::print("{}\n", line);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
