// Pool: the parent's side (jobs, results, waiting), the supervisor and the worker loop.
#include <procshare/pool.hpp>
#include <procshare/value.hpp>

#include "detail/names.hpp"
#include "detail/pool_layout.hpp"

#include <fmt/format.h>

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace procshare {
namespace detail {
namespace {

constexpr std::uint32_t max_workers = 1024;
// Job `id` takes slot (id - 1) % job_slot_count: a new job waits while the one
// job_slot_count ids before it is still running.
constexpr std::uint32_t job_slot_count = 1024;
constexpr std::uint32_t job_slot_step = 64;  // the parent reserves the job table in steps
constexpr std::uint64_t ring_bytes_per_worker = 1u << 20;
constexpr std::uint64_t ring_reserve_step = 64u << 10;  // a worker reserves its ring in steps
// How long an idle worker, or a waiting parent, polls before sleeping on its futex: a
// hand-off within this time costs no system call and no wake-up latency.
constexpr auto spin_time = std::chrono::microseconds(50);
constexpr std::uint32_t startup_failure_limit = 3;
constexpr auto supervisor_check_period = std::chrono::milliseconds(50);

constexpr std::uint64_t align_up(std::uint64_t n, std::uint64_t a) { return (n + a - 1) / a * a; }

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

std::string demangle(const char* mangled) {
  if (mangled == nullptr || *mangled == '\0') return "unknown exception";
  int status = 0;
  char* text = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && text ? text : mangled;
  std::free(text);
  return name;
}

// Other threads in this process (from /proc/self/status).
int thread_count() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return 1;
}

void wake_parent(PoolBlock& b) {
  b.parent_sequence.fetch_add(1, std::memory_order_seq_cst);
  if (b.parent_waiting.load(std::memory_order_seq_cst) != 0) futex_wake(b.parent_sequence);
}

void wake_workers(PoolBlock& b) {
  b.work_sequence.fetch_add(1, std::memory_order_seq_cst);
  if (b.workers_waiting.load(std::memory_order_seq_cst) != 0) futex_wake(b.work_sequence);
}

// Holds the pool's robust lock (a holder that died is simply taken over: every step it
// could have cut is a single store).
class PoolLock {
public:
  explicit PoolLock(PoolBlock& b) : block_(b) {
    if (const int error = detail::lock(b.lock))
      throw Error("", "pool", fmt::format("cannot lock the pool: {}", os_reason(error)));
  }
  ~PoolLock() { detail::unlock(block_.lock); }
  PoolLock(const PoolLock&) = delete;
  PoolLock& operator=(const PoolLock&) = delete;

private:
  PoolBlock& block_;
};

// ---------------------------------------------------------------- the worker

// The running worker's state (one per worker process).
struct WorkerContext {
  PoolBlock* block;
  WorkerSlot* slot;
  JobSlot* job;
  std::uint32_t index;
  const Segment* segment;
  std::uint64_t ring_at;        // the ring's offset in the segment
  std::uint64_t ring_reserved;  // bytes of it reserved so far
};

// Polls for up to spin_time while `word` still holds `value`; returns whether it changed.
// It yields the CPU between polls: a process it shares the CPU with (a worker running a
// task, when there are more busy processes than CPUs) is not held up by the polling.
bool spin_while(const std::atomic<std::uint32_t>& word, std::uint32_t value) {
  const auto until = std::chrono::steady_clock::now() + spin_time;
  for (;;) {
    for (int i = 0; i < 16; ++i) {
      if (word.load(std::memory_order_acquire) != value) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (std::chrono::steady_clock::now() >= until) return false;
    ::sched_yield();
  }
}

void append_record(WorkerContext& w, RecordType type, std::uint64_t job_id, std::uint64_t index,
                   std::span<const std::byte> first, std::span<const std::byte> second = {});

std::atomic<std::uint32_t>* current_stop = nullptr;  // the running job's stop flag
PoolBlock* current_block = nullptr;                   // the worker's pool

// Writes one record (header + `first` + `second`, need <= half the ring) to the worker's
// result ring, waiting for the parent to make room.
void write_record(WorkerContext& w, RecordType type, std::uint64_t job_id, std::uint64_t index,
                  std::size_t type_length, std::span<const std::byte> first,
                  std::span<const std::byte> second) {
  PoolBlock& b = *w.block;
  WorkerSlot& s = *w.slot;
  const std::uint64_t ring = b.ring_bytes;
  const std::uint64_t need = align_up(sizeof(RecordHeader) + first.size() + second.size(), 8);
  for (;;) {
    const std::uint64_t write = s.ring_write.load(std::memory_order_relaxed);
    const std::uint64_t read = s.ring_read.load(std::memory_order_acquire);
    const std::uint64_t contiguous = ring - write % ring;
    const std::uint64_t required = need + (contiguous < need ? contiguous : 0);
    if (ring - (write - read) >= required) break;
    s.ring_waiting.store(1, std::memory_order_seq_cst);
    const std::uint32_t sequence = s.ring_space_sequence.load(std::memory_order_seq_cst);
    if (s.ring_read.load(std::memory_order_seq_cst) == read) {
      wake_parent(b);
      futex_wait(s.ring_space_sequence, sequence, deadline_after(std::chrono::milliseconds(50)));
    }
    s.ring_waiting.store(0, std::memory_order_relaxed);
  }
  std::uint64_t write = s.ring_write.load(std::memory_order_relaxed);
  if (write % ring + need > w.ring_reserved && w.ring_reserved < ring) {
    // Reserve the ring as it is first used. If /dev/shm is full the worker cannot report
    // anything: it says why on stderr and exits, and its item fails with WorkerDied.
    const std::uint64_t end = std::min(ring, align_up(write % ring + need, ring_reserve_step));
    try {
      reserve(*w.segment, w.ring_at + w.ring_reserved, end - w.ring_reserved);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "procshare: pool worker %d: %s\n", ::getpid(), e.what());
      ::_exit(4);
    }
    w.ring_reserved = end;
  }
  std::byte* base = b.ring(w.index);
  if (ring - write % ring < need) {  // no room before the end: pad to it and wrap
    RecordHeader pad{static_cast<std::uint32_t>(ring - write % ring),
                     static_cast<std::uint32_t>(RecordType::padding), 0, 0, 0, 0, 0, 0};
    std::memcpy(base + write % ring, &pad, sizeof(std::uint32_t) * 2);
    write += ring - write % ring;
    s.ring_write.store(write, std::memory_order_release);
  }
  RecordHeader header{static_cast<std::uint32_t>(need), static_cast<std::uint32_t>(type),
                      job_id, index, cached_pid,
                      static_cast<std::uint32_t>(type_length),
                      static_cast<std::uint32_t>(first.size() + second.size()), 0};
  std::byte* at = base + write % ring;
  std::memcpy(at, &header, sizeof header);
  if (!first.empty()) std::memcpy(at + sizeof header, first.data(), first.size());
  if (!second.empty()) std::memcpy(at + sizeof header + first.size(), second.data(), second.size());
  s.ring_write.store(write + need, std::memory_order_release);  // publishes the record
}

// The bytes a message keeps when a failure's record would outgrow the pool's arena.
constexpr std::size_t kept_message_bytes = 4096;

// Appends a record about item `index` of job `job_id` to the worker's result ring (for
// `complete`, index is the job id too), waiting for the parent to make room. Its payload
// is `first` then `second` (an error's exception type, then its message). A payload over
// half the ring goes in pieces (see RecordType); one larger than the pool's arena fails
// the item instead, keeping an error's exception type and the start of its message.
void append_record(WorkerContext& w, RecordType type, std::uint64_t job_id, std::uint64_t index,
                   std::span<const std::byte> first, std::span<const std::byte> second) {
  PoolBlock& b = *w.block;
  const std::uint64_t total = first.size() + second.size();
  const std::uint64_t largest_record = (b.ring_bytes / 2 - sizeof(RecordHeader)) & ~std::uint64_t{7};
  if (total <= largest_record) {
    write_record(w, type, job_id, index, first.size(), first, second);
    return;
  }
  if (total > b.arena_bytes) {
    static const char procshare_error[] = "procshare::Error";
    std::string message;
    if (type == RecordType::error) {
      const auto text = std::string_view(reinterpret_cast<const char*>(second.data()), second.size());
      message = fmt::format("{}... (the message was cut: {} bytes, more than the pool's arena of "
                            "{} bytes, PoolOptions::arena_bytes)",
                            text.substr(0, kept_message_bytes), second.size(), b.arena_bytes);
    } else {
      message = fmt::format("the result takes {} bytes, more than the pool's arena of {} bytes "
                            "(PoolOptions::arena_bytes)", total, b.arena_bytes);
      first = std::as_bytes(std::span(procshare_error, sizeof procshare_error - 1));
    }
    append_record(w, RecordType::error, job_id, index, first,
                  std::as_bytes(std::span(message.data(), message.size())));
    return;
  }
  // The payload in pieces of `largest_record` bytes; the last one is the record itself.
  std::vector<std::byte> payload(first.begin(), first.end());
  payload.insert(payload.end(), second.begin(), second.end());
  const std::span<const std::byte> all(payload);
  std::uint64_t offset = 0;
  for (; total - offset > largest_record; offset += largest_record)
    write_record(w, RecordType::piece, job_id, index, 0, all.subspan(offset, largest_record), {});
  write_record(w, type, job_id, index, first.size(), all.subspan(offset), {});
}

void op_emit(ChunkContext& c, std::uint64_t index, const std::byte* data, std::size_t size) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  append_record(w, RecordType::result, w.slot->job_id.load(std::memory_order_relaxed), index,
                std::span(data, size));
}

void op_fail(ChunkContext& c, std::uint64_t index, const char* type, const char* message) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  const std::string name = demangle(type);
  append_record(w, RecordType::error, w.slot->job_id.load(std::memory_order_relaxed), index,
                std::as_bytes(std::span(name.data(), name.size())),
                std::as_bytes(std::span(message, std::strlen(message))));
  // Counted as failed in the job at once, so a controller can react to it.
  w.slot->chunk_failed.store(w.slot->chunk_failed.load(std::memory_order_relaxed) + 1,
                             std::memory_order_relaxed);
  w.job->failed.fetch_add(1, std::memory_order_relaxed);
}

void op_found(ChunkContext& c, std::uint64_t index) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  std::uint64_t best = w.job->best.load(std::memory_order_relaxed);
  while (index < best && !w.job->best.compare_exchange_weak(best, index)) {
  }
}

constexpr ChunkOps chunk_ops{op_emit, op_fail, op_found};

// For a stopped job, or a find_first whose cursor passed its match: drops the unclaimed
// items (under the pool lock), settling them as skipped. Returns whether that completed
// the job.
bool drop_unclaimed(JobSlot& job) {
  const std::uint64_t cursor = job.cursor.load(std::memory_order_relaxed);
  std::uint64_t dropped = 0;
  if (cursor < job.total) {
    dropped = job.total - cursor;
    job.cursor.store(job.total, std::memory_order_relaxed);
  }
  if (job.stop.load(std::memory_order_relaxed) != 0) {  // requeued ranges too
    const std::uint32_t requeued = job.requeued_count.load(std::memory_order_relaxed);
    for (std::uint32_t r = 0; r < requeued; ++r) dropped += job.requeued[r].end - job.requeued[r].first;
    job.requeued_count.store(0, std::memory_order_release);
  }
  if (dropped == 0) return false;
  job.skipped.fetch_add(dropped, std::memory_order_relaxed);
  return job.settled.fetch_add(dropped, std::memory_order_acq_rel) + dropped == job.total;
}

// Claims a chunk (under the pool lock) into the worker's slot; returns the job's slot or
// nullptr if there is no work. Jobs are read oldest first from `claim_from`, which moves
// past every job with nothing left to claim; stopped jobs' unclaimed items, and
// find_first items above the match, are dropped on the way (the ids of jobs that this
// completes go to `completed`).
JobSlot* claim(WorkerContext& w, std::uint64_t preferred, std::uint64_t preferred_for,
               std::vector<std::uint64_t>& completed) {
  PoolBlock& b = *w.block;
  WorkerSlot& s = *w.slot;
  PoolLock held(b);
  JobSlot* chosen = nullptr;
  std::uint32_t chosen_index = 0;
  const std::uint64_t published = b.published.load(std::memory_order_acquire);
  for (std::uint64_t id = b.claim_from.load(std::memory_order_relaxed); id <= published; ++id) {
    JobSlot& job = b.job_of(id);
    if (job.id.load(std::memory_order_acquire) == id) {
      const std::uint64_t cursor = job.cursor.load(std::memory_order_relaxed);
      const bool stopped = job.stop.load(std::memory_order_relaxed) != 0;
      if ((stopped || cursor > job.best.load(std::memory_order_relaxed)) && drop_unclaimed(job))
        completed.push_back(id);  // reported once the lock is released
      if (job.requeued_count.load(std::memory_order_relaxed) > 0 ||
          job.cursor.load(std::memory_order_relaxed) < job.total) {
        chosen = &job;
        chosen_index = static_cast<std::uint32_t>((id - 1) % b.job_slots);
        break;
      }
    }
    b.claim_from.store(id + 1, std::memory_order_relaxed);  // nothing left to claim in `id`
  }
  if (chosen == nullptr) return nullptr;
  JobSlot& job = *chosen;
  std::uint64_t first, end;
  const std::uint32_t requeued = job.requeued_count.load(std::memory_order_relaxed);
  if (requeued > 0) {
    // The lowest requeued range first (find_first claims in ascending order).
    std::uint32_t lowest = 0;
    for (std::uint32_t r = 1; r < requeued; ++r)
      if (job.requeued[r].first < job.requeued[lowest].first) lowest = r;
    std::swap(job.requeued[lowest], job.requeued[requeued - 1]);
    first = job.requeued[requeued - 1].first;
    end = job.requeued[requeued - 1].end;
  } else {
    // A fixed chunk if the caller set one; else the worker's preferred size (see
    // worker_main), but never more than an even share of what is left.
    first = job.cursor.load(std::memory_order_relaxed);
    const std::uint64_t share = std::max<std::uint64_t>(1, (job.total - first) / b.workers);
    const std::uint64_t want = job.id.load(std::memory_order_relaxed) == preferred_for ? preferred : 1;
    end = std::min(job.total, first + (job.chunk ? job.chunk : std::min(want, share)));
  }
  // Record the claim, then make it (one store), then mark the worker busy: a supervisor
  // settling a death can tell from `state`, `cursor` and `requeued_count` where it stopped.
  s.job_slot.store(chosen_index, std::memory_order_relaxed);
  s.job_id.store(job.id.load(std::memory_order_relaxed), std::memory_order_relaxed);
  s.chunk_first.store(first, std::memory_order_relaxed);
  s.chunk_end.store(end, std::memory_order_relaxed);
  s.progress.store(0, std::memory_order_relaxed);
  s.chunk_failed.store(0, std::memory_order_relaxed);
  s.chunk_skipped.store(0, std::memory_order_relaxed);
  s.from_requeue.store(requeued > 0 ? 1 : 0, std::memory_order_relaxed);
  s.requeue_index.store(requeued - 1, std::memory_order_relaxed);
  s.state.store(static_cast<std::uint32_t>(WorkerState::claiming), std::memory_order_release);
  if (requeued > 0)
    job.requeued_count.store(requeued - 1, std::memory_order_release);
  else
    job.cursor.store(end, std::memory_order_release);
  s.state.store(static_cast<std::uint32_t>(WorkerState::busy), std::memory_order_release);
  return &job;
}

// Settles the worker's finished chunk into its job.
void settle_chunk(WorkerContext& w, JobSlot& job) {
  WorkerSlot& s = *w.slot;
  const std::uint64_t count = s.chunk_end.load() - s.chunk_first.load();
  const std::uint64_t skipped = s.chunk_skipped.load(std::memory_order_relaxed);
  const std::uint64_t done = count - skipped - s.chunk_failed.load(std::memory_order_relaxed);
  job.done.fetch_add(done, std::memory_order_relaxed);
  job.skipped.fetch_add(skipped, std::memory_order_relaxed);
  w.block->items_done.fetch_add(done, std::memory_order_relaxed);
  s.state.store(static_cast<std::uint32_t>(WorkerState::idle), std::memory_order_release);
  s.tasks_done.fetch_add(1, std::memory_order_relaxed);
  // The last store that touches the job: the parent may free it once settled == total.
  // The worker that completes it tells the parent (a record, then a wake-up).
  const std::uint64_t id = s.job_id.load(std::memory_order_relaxed);
  if (job.settled.fetch_add(count, std::memory_order_acq_rel) + count == job.total) {
    append_record(w, RecordType::complete, id, id, {});
    wake_parent(*w.block);
  }
}

// Keeps `reason` as the pool's broken_reason unless one is kept already: the first
// reason wins, whole, when several processes fail at once.
void record_broken_reason(PoolBlock& b, std::string_view reason) {
  char expected = '\0';
  std::atomic_ref<char> first(b.broken_reason[0]);
  if (!first.compare_exchange_strong(expected, '?')) return;
  const std::size_t length = std::min(reason.size(), sizeof b.broken_reason - 1);
  std::memcpy(b.broken_reason + 1, reason.data() + 1, length > 0 ? length - 1 : 0);
  b.broken_reason[length] = '\0';
  first.store(length > 0 ? reason[0] : '\0', std::memory_order_release);
}

[[noreturn]] void worker_main(PoolBlock& b, std::uint32_t index, pid_t supervisor,
                              const std::function<void()>& initializer, const Segment& segment,
                              std::uint64_t block_offset) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != supervisor) ::_exit(1);  // the supervisor died before prctl
  WorkerSlot& s = b.worker(index);
  s.pid.store(::getpid());  // before any work (the supervisor's fork() may return later)
  s.state.store(static_cast<std::uint32_t>(WorkerState::starting));
  if (initializer) {
    std::string reason;
    try {
      initializer();
    } catch (const std::exception& e) {
      reason = fmt::format("worker {}: the initializer threw {}: {}", ::getpid(),
                           demangle(typeid(e).name()), e.what());
    } catch (...) {
      reason = fmt::format("worker {}: the initializer threw an exception of unknown type", ::getpid());
    }
    if (!reason.empty()) {
      record_broken_reason(b, reason);
      std::fflush(nullptr);
      ::_exit(3);
    }
  }
  s.state.store(static_cast<std::uint32_t>(WorkerState::idle));
  WorkerContext w{&b, &s, nullptr, index, &segment, block_offset + b.rings_offset + index * b.ring_bytes, 0};
  std::vector<std::uint64_t> completed;
  std::uint64_t tasks = 0;
  // Automatic chunking: start each job with single items and grow the chunk (x4) while
  // chunks take under a quarter of the target time, shrink it when they take over twice
  // as long. Millions of tiny items then cost a claim per ~2 ms of work, and progress
  // and failures show up within milliseconds.
  constexpr auto target = std::chrono::microseconds(2000);  // (not milliseconds: target / 4)
  std::uint64_t preferred = 1, preferred_for = 0;
  for (;;) {
    const auto state = static_cast<PoolState>(b.state.load(std::memory_order_acquire));
    if (state == PoolState::terminating || state == PoolState::broken) break;
    const std::uint32_t sequence = b.work_sequence.load(std::memory_order_seq_cst);
    JobSlot* job = claim(w, preferred, preferred_for, completed);
    for (const std::uint64_t id : completed) append_record(w, RecordType::complete, id, id, {});
    if (!completed.empty()) wake_parent(b);
    completed.clear();
    if (job == nullptr) {
      if (state == PoolState::closing) break;
      if (spin_while(b.work_sequence, sequence)) continue;  // new work arrived meanwhile
      b.workers_waiting.fetch_add(1, std::memory_order_seq_cst);
      futex_wait(b.work_sequence, sequence, deadline_after(std::chrono::milliseconds(100)));
      b.workers_waiting.fetch_sub(1, std::memory_order_seq_cst);
      continue;
    }
    w.job = job;
    current_block = &b;
    current_stop = &job->stop;
    ChunkContext c{&chunk_ops,
                   &w,
                   job->function,
                   b.arena() + job->items_offset,
                   job->offsets_offset != UINT64_MAX
                       ? reinterpret_cast<const std::uint64_t*>(b.arena() + job->offsets_offset)
                       : nullptr,
                   job->items_size,
                   job->args_offset == in_slot ? job->inline_args : b.arena() + job->args_offset,
                   job->args_size,
                   job->result_slot_bytes == 0       ? nullptr
                   : job->results_offset == in_slot ? job->inline_results
                                                    : b.arena() + job->results_offset,
                   s.chunk_first.load(),
                   s.chunk_end.load(),
                   &s.progress,
                   &s.chunk_skipped,
                   &job->stop,
                   &job->best};
    const auto started = std::chrono::steady_clock::now();
    job->run(c);
    const auto took = std::chrono::steady_clock::now() - started;
    const std::uint64_t id = s.job_id.load(std::memory_order_relaxed);
    if (preferred_for != id) preferred_for = id, preferred = 1;
    const std::uint64_t ran = c.end - c.first;
    if (took < target / 4 && ran >= preferred) preferred = std::min<std::uint64_t>(preferred * 4, 1u << 24);
    else if (took > target * 2 && preferred > 1) preferred = std::max<std::uint64_t>(1, preferred / 2);
    current_stop = nullptr;
    settle_chunk(w, *job);
    w.job = nullptr;
    if (b.max_tasks_per_child != 0 && ++tasks >= b.max_tasks_per_child) break;
  }
  s.state.store(static_cast<std::uint32_t>(WorkerState::exited));
  std::fflush(nullptr);
  ::_exit(0);
}

// ---------------------------------------------------------------- the supervisor

struct Supervisor {
  PoolBlock& b;
  const std::function<void()>& initializer;
  const Segment& segment;
  std::uint64_t block_offset;  // of b in segment
  int commands;  // read end of the parent's command pipe
  pid_t self = ::getpid();
  std::vector<int> pidfds;  // per worker slot; -1 if none
  std::vector<DeathRecord> pending;  // deaths waiting for room in the death ring

  void spawn(std::uint32_t index) {
    WorkerSlot& s = b.worker(index);
    s.state.store(static_cast<std::uint32_t>(WorkerState::starting));
    s.job_id.store(0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(commands);
      for (int fd : pidfds)
        if (fd >= 0) ::close(fd);
      worker_main(b, index, self, initializer, segment, block_offset);
    }
    if (pid < 0) {
      s.state.store(static_cast<std::uint32_t>(WorkerState::exited));
      return;
    }
    s.pid.store(pid);
    pidfds[index] = pidfd_open(pid);
  }

  void publish_deaths() {
    while (!pending.empty()) {
      const std::uint64_t write = b.death_write.load(std::memory_order_relaxed);
      if (write - b.death_read.load(std::memory_order_acquire) >= death_ring_size) return;
      b.death_ring[write % death_ring_size] = pending.front();
      pending.erase(pending.begin());
      b.death_write.store(write + 1, std::memory_order_release);
    }
  }

  // A worker ended with `status`: settle the chunk it held and report its running item.
  void settle_death(std::uint32_t index, const siginfo_t& info) {
    WorkerSlot& s = b.worker(index);
    const int signal = info.si_code == CLD_EXITED ? 0 : info.si_status;
    const int exit_status = info.si_code == CLD_EXITED ? info.si_status : -1;
    const auto state = static_cast<WorkerState>(s.state.load());
    PoolLock held(b);
    if (state == WorkerState::busy || state == WorkerState::claiming) {
      JobSlot& job = b.job(s.job_slot.load());
      const std::uint64_t id = s.job_id.load();
      bool claimed = state == WorkerState::busy;
      if (state == WorkerState::claiming)  // did its one claiming store happen?
        claimed = s.from_requeue.load() ? job.requeued_count.load() == s.requeue_index.load()
                                        : job.cursor.load() == s.chunk_end.load();
      if (claimed && job.id.load() == id) {
        const std::uint64_t first = s.chunk_first.load(), end = s.chunk_end.load();
        const std::uint64_t progress = s.progress.load();
        // Items before `current` are over; item `current` was running if progress is odd.
        std::uint64_t current = std::min(end, first + progress / 2);
        const bool running = progress % 2 == 1 && current < end;
        const std::uint64_t failed = s.chunk_failed.load(), skipped = s.chunk_skipped.load();
        std::uint64_t settled = current - first;
        job.done.fetch_add(settled >= failed + skipped ? settled - failed - skipped : 0);
        job.skipped.fetch_add(skipped);
        if (running) {
          job.failed.fetch_add(1);
          settled += 1;
          pending.push_back(DeathRecord{id, current, s.pid.load(), signal, exit_status, 0});
          current += 1;
        }
        if (current < end) {  // the rest of its chunk runs elsewhere
          const std::uint32_t n = job.requeued_count.load();
          if (n < max_requeued) {
            job.requeued[n] = Range{current, end};
            job.requeued_count.store(n + 1);
            if (b.claim_from.load() > id) b.claim_from.store(id);  // claimable again
          } else {  // nowhere to put it: those items fail too
            for (std::uint64_t k = current; k < end; ++k)
              pending.push_back(DeathRecord{id, k, s.pid.load(), signal, exit_status, 0});
            job.failed.fetch_add(end - current);
            settled += end - current;
          }
        }
        publish_deaths();
        job.settled.fetch_add(settled);
      }
    }
    s.state.store(static_cast<std::uint32_t>(WorkerState::exited));
    s.job_id.store(0);
    if (state != WorkerState::exited || exit_status != 0) b.worker_deaths.fetch_add(1);
    if (state == WorkerState::starting &&
        b.startup_failures.fetch_add(1) + 1 >= startup_failure_limit) {
      record_broken_reason(b, fmt::format("workers keep dying at start-up (last: worker {}, {} {})",
                                          s.pid.load(), signal ? "signal" : "exit status",
                                          signal ? signal : exit_status));
      b.state.store(static_cast<std::uint32_t>(PoolState::broken));
    }
    if (state != WorkerState::starting) b.startup_failures.store(0);
  }

  // Whether some job still has items to run (a closing pool replaces dead workers then).
  bool work_left() {
    for (std::uint32_t i = 0; i < std::min(b.job_slots, b.job_slots_ready.load()); ++i)
      if (b.job(i).id.load() != 0) return true;
    return false;
  }

  void kill_workers() {
    for (std::uint32_t i = 0; i < b.workers; ++i)
      if (pidfds[i] >= 0) ::syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, nullptr, 0);
    for (std::uint32_t i = 0; i < b.workers; ++i)
      if (pidfds[i] >= 0) {
        siginfo_t info{};
        ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfds[i]), &info, WEXITED);
        ::close(pidfds[i]);
        pidfds[i] = -1;
      }
  }

  [[noreturn]] void run() {
    ::setpgid(0, 0);  // the pool's own process group
    const int parent = pidfd_open(b.parent_pid);
    if (parent < 0 || ::getppid() != b.parent_pid) ::_exit(1);
    pidfds.assign(b.workers, -1);
    b.supervisor_pid.store(self);
    for (std::uint32_t i = 0; i < b.workers; ++i) spawn(i);
    for (;;) {
      std::vector<pollfd> fds{{parent, POLLIN, 0}, {commands, POLLIN, 0}};
      for (std::uint32_t i = 0; i < b.workers; ++i) fds.push_back({pidfds[i], POLLIN, 0});
      ::poll(fds.data(), fds.size(), 100);
      if (fds[0].revents != 0) {  // the parent died: so does the pool
        kill_workers();
        ::_exit(0);
      }
      if (fds[1].revents != 0) {
        char command = 0;
        if (::read(commands, &command, 1) != 1 || command == 'T') {  // terminate (or EOF)
          b.state.store(static_cast<std::uint32_t>(PoolState::terminating));
          kill_workers();
          ::_exit(0);
        }
        if (command == 'C') {
          b.state.store(static_cast<std::uint32_t>(PoolState::closing));
          wake_workers(b);
        }
      }
      const auto state = static_cast<PoolState>(b.state.load());
      bool any = false;
      for (std::uint32_t i = 0; i < b.workers; ++i) {
        if (pidfds[i] < 0) continue;
        siginfo_t info{};
        info.si_pid = 0;
        if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfds[i]), &info,
                     WEXITED | WNOHANG) != 0 || info.si_pid == 0) {
          any = true;
          continue;
        }
        ::close(pidfds[i]);
        pidfds[i] = -1;
        settle_death(i, info);
        // A job may be complete now, settled here or by the worker just before it died
        // (before it could report it): the parent checks every job.
        b.rescan.fetch_add(1);
        wake_parent(b);
        wake_workers(b);
        const auto now = static_cast<PoolState>(b.state.load());
        if (now == PoolState::running || (now == PoolState::closing && work_left())) {
          spawn(i);
          any = true;
        }
      }
      publish_deaths();
      if (static_cast<PoolState>(b.state.load()) == PoolState::broken) {
        kill_workers();
        wake_parent(b);
        ::_exit(0);
      }
      if (!any && state != PoolState::running) {
        wake_parent(b);
        ::_exit(0);
      }
    }
  }
};

}  // namespace

// ---------------------------------------------------------------- the parent's side

class PoolCore {
public:
  Segment segment;
  PoolBlock* block = nullptr;
  pid_t supervisor = -1;
  int commands = -1;  // write end of the command pipe
  pid_t creator = ::getpid();
  bool closed = false;      // close() or terminate() was called
  std::string ended;        // why the pool can run nothing more ("" while it can)
  std::recursive_mutex mutex;
  // The job in each slot (job id's slot is (id - 1) % job_slots), with its arena blocks.
  struct Active {
    std::shared_ptr<JobState> state;  // null: the slot is free
    std::vector<std::pair<std::uint64_t, std::uint64_t>> allocations;  // offset, bytes
  };
  std::vector<Active> jobs;
  std::size_t active_count = 0;
  std::vector<std::uint64_t> completed;  // ids reported complete, finished by pump()
  std::uint32_t seen_rescan = 0;
  std::map<std::uint64_t, std::uint64_t> free_space;  // arena offset -> bytes
  std::uint64_t next_id = 1;
  std::chrono::steady_clock::time_point last_check{};
  std::uint64_t arena_at = 0;        // the arena's offset in the segment
  std::uint64_t arena_reserved = 0;  // arena bytes reserved so far (from its start)
  std::uint64_t jobs_at = 0;         // the job table's offset in the segment
  // Per worker slot: the pieces of a record that came in pieces (see RecordType), for the
  // job, item and worker pid of the first piece.
  struct Pieces {
    std::uint64_t job_id = 0, index = 0;
    std::int32_t pid = 0;
    std::vector<std::byte> bytes;
  };
  std::vector<Pieces> pieces;

  explicit PoolCore(Segment s) : segment(std::move(s)) {}

  std::uint32_t slot_of(std::uint64_t id) const {
    return static_cast<std::uint32_t>((id - 1) % block->job_slots);
  }
  // The state of active job `id`, or null.
  JobState* find(std::uint64_t id) {
    if (id == 0) return nullptr;
    JobState* state = jobs[slot_of(id)].state.get();
    return state != nullptr && state->id == id ? state : nullptr;
  }

  // ---- arena (parent-only allocator over the shared arena)
  std::optional<std::uint64_t> allocate(std::uint64_t bytes) {
    bytes = align_up(std::max<std::uint64_t>(bytes, 1), 64);
    for (auto it = free_space.begin(); it != free_space.end(); ++it)
      if (it->second >= bytes) {
        const std::uint64_t offset = it->first, left = it->second - bytes;
        free_space.erase(it);
        if (left) free_space.emplace(offset + bytes, left);
        return offset;
      }
    return std::nullopt;
  }
  // Reserves the job table up to slot `slot` (in steps). Throws SegmentFull.
  void reserve_slot(std::uint32_t slot) {
    const std::uint32_t ready = block->job_slots_ready.load(std::memory_order_relaxed);
    if (slot < ready) return;
    const std::uint32_t target = std::min(block->job_slots, (slot / job_slot_step + 1) * job_slot_step);
    reserve(segment, jobs_at + ready * sizeof(JobSlot), (target - ready) * sizeof(JobSlot));
    block->job_slots_ready.store(target, std::memory_order_release);
  }
  // Reserves the arena up to `end` (in steps of 256 KiB). Throws SegmentFull.
  void reserve_arena(std::uint64_t end) {
    if (end <= arena_reserved) return;
    const std::uint64_t target = std::min(block->arena_bytes, align_up(end, 256u << 10));
    reserve(segment, arena_at + arena_reserved, target - arena_reserved);
    arena_reserved = target;
  }
  void release(std::uint64_t offset, std::uint64_t bytes) {
    bytes = align_up(std::max<std::uint64_t>(bytes, 1), 64);
    auto it = free_space.emplace(offset, bytes).first;
    if (auto next = std::next(it); next != free_space.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_space.erase(next);
    }
    if (it != free_space.begin()) {
      auto previous = std::prev(it);
      if (previous->first + previous->second == it->first) {
        previous->second += it->second;
        free_space.erase(it);
      }
    }
  }

  // ---- collecting

  void fail_all(const std::string& reason) {
    ended = reason;
    for (Active& a : jobs)
      if (a.state) {
        a.state->closed = reason;
        a.state->finished = true;
        a.state.reset();
      }
    active_count = 0;
  }

  void check_supervisor() {
    if (!ended.empty() || supervisor < 0) return;
    int status = 0;
    const pid_t r = ::waitpid(supervisor, &status, WNOHANG);
    const auto state = static_cast<PoolState>(block->state.load());
    if (r == supervisor) {
      supervisor = -1;
      if (state == PoolState::broken)
        fail_all(fmt::format("the pool is broken: {}", block->broken_reason));
      else if (active_count != 0 || state == PoolState::running)
        fail_all(state == PoolState::terminating ? "the pool was terminated"
                                                 : "the pool's supervisor died");
    } else if (state == PoolState::broken) {
      fail_all(fmt::format("the pool is broken: {}", block->broken_reason));
    }
  }

  void dispatch(const RecordHeader& header, const std::byte* payload, std::size_t size) {
    if (header.type == static_cast<std::uint32_t>(RecordType::complete)) {
      completed.push_back(header.job_id);
      return;
    }
    JobState* found = find(header.job_id);
    if (found == nullptr) return;
    JobState& state = *found;
    if (header.type == static_cast<std::uint32_t>(RecordType::result)) {
      Reader r{payload, payload + size};
      state.accept(header.index, r);
    } else if (header.type == static_cast<std::uint32_t>(RecordType::error)) {
      const std::size_t type_length = std::min<std::size_t>(header.type_length, size);
      state.failures.push_back(JobState::Failure{
          header.index, false, std::string(reinterpret_cast<const char*>(payload), type_length),
          std::string(reinterpret_cast<const char*>(payload) + type_length, size - type_length),
          header.pid, 0, -1});
    }
  }

  void drain_rings() {
    for (std::uint32_t i = 0; i < block->workers; ++i) {
      WorkerSlot& s = block->worker(i);
      std::uint64_t read = s.ring_read.load(std::memory_order_relaxed);
      const std::uint64_t write = s.ring_write.load(std::memory_order_acquire);
      if (read == write) continue;
      const std::byte* ring = block->ring(i);
      const std::uint64_t bytes = block->ring_bytes;
      if (pieces.size() < block->workers) pieces.resize(block->workers);
      Pieces& held = pieces[i];
      while (read < write) {
        RecordHeader header{};
        std::memcpy(&header, ring + read % bytes, sizeof(std::uint32_t) * 2);
        if (header.size < 8 || header.size % 8 != 0 || header.size > bytes - read % bytes) break;  // corrupt
        if (header.type != static_cast<std::uint32_t>(RecordType::padding) && header.size >= sizeof header) {
          std::memcpy(&header, ring + read % bytes, sizeof header);
          const std::byte* payload = ring + read % bytes + sizeof header;
          const std::size_t size = std::min<std::size_t>(header.payload_length, header.size - sizeof header);
          const bool same_item = !held.bytes.empty() && held.job_id == header.job_id &&
                                 held.index == header.index && held.pid == header.pid;
          if (!same_item) held.bytes.clear();  // pieces whose final record never came
          if (header.type == static_cast<std::uint32_t>(RecordType::piece)) {
            held.job_id = header.job_id;
            held.index = header.index;
            held.pid = header.pid;
            held.bytes.insert(held.bytes.end(), payload, payload + size);
          } else if (same_item) {
            held.bytes.insert(held.bytes.end(), payload, payload + size);
            dispatch(header, held.bytes.data(), held.bytes.size());
            held.bytes = {};
          } else {
            dispatch(header, payload, size);
          }
        }
        read += header.size;
      }
      s.ring_read.store(write, std::memory_order_release);
      if (s.ring_waiting.load(std::memory_order_seq_cst)) {
        s.ring_space_sequence.fetch_add(1, std::memory_order_seq_cst);
        futex_wake(s.ring_space_sequence);
      }
    }
    std::uint64_t read = block->death_read.load(std::memory_order_relaxed);
    const std::uint64_t write = block->death_write.load(std::memory_order_acquire);
    for (; read < write; ++read) {
      const DeathRecord& death = block->death_ring[read % death_ring_size];
      if (JobState* state = find(death.job_id))
        state->failures.push_back(JobState::Failure{death.index, true, "", "", death.pid,
                                                         death.signal, death.exit_status});
    }
    block->death_read.store(read, std::memory_order_release);
  }

  // Moves everything finished into its JobState; frees finished jobs' slots and memory.
  // Workers report each job they complete through their ring; the parent checks every job
  // only when the supervisor or a controller may have completed one (`rescan`) and, as a
  // safety net, with each supervisor check.
  void pump() {
    const auto now = std::chrono::steady_clock::now();
    const bool periodic = now - last_check >= supervisor_check_period;
    const std::uint32_t rescan = block->rescan.load(std::memory_order_acquire);
    if (rescan != seen_rescan || periodic) {
      seen_rescan = rescan;
      for (const Active& a : jobs)
        if (a.state) {
          JobSlot& job = block->job(slot_of(a.state->id));
          bool complete = job.settled.load(std::memory_order_acquire) >= job.total;
          if (!complete && job.stop.load(std::memory_order_acquire) != 0) {  // a task or a controller stopped it
            PoolLock held(*block);
            complete = drop_unclaimed(job);
          }
          if (complete) completed.push_back(a.state->id);
        }
    }
    drain_rings();
    if (!completed.empty()) {
      // Once more: results another worker published before this job's last item settled.
      drain_rings();
      for (const std::uint64_t id : completed) finish(id);
      completed.clear();
    }
    if (periodic) {
      last_check = now;
      check_supervisor();
    }
  }

  // Job `id` reported complete: move its outcome into its JobState and free its slot.
  void finish(std::uint64_t id) {
    JobState* state = find(id);
    if (state == nullptr) return;  // finished already (reported twice)
    const std::uint32_t slot = slot_of(id);
    JobSlot& job = block->job(slot);
    if (job.settled.load(std::memory_order_acquire) < job.total) return;
    state->done = job.done.load();
    state->failed = job.failed.load();
    state->skipped = job.skipped.load();
    state->stopped = job.stop.load() != 0 && state->skipped > 0;
    if (state->kind == JobKind::find_first && job.best.load() < job.total) state->found = job.best.load();
    if (job.result_slot_bytes)
      state->copy_fixed(job.results_offset == in_slot ? job.inline_results : block->arena() + job.results_offset);
    state->finished = true;
    {
      PoolLock held(*block);
      job.id.store(0, std::memory_order_release);
    }
    Active& a = jobs[slot];
    for (const auto& [offset, bytes] : a.allocations) release(offset, bytes);
    a.allocations.clear();
    a.state.reset();
    --active_count;
  }

  // The progress word to sleep on: read it before checking, so that progress made after
  // the check wakes the sleep (see sleep_until).
  std::uint32_t progress_sequence() const {
    return block->parent_sequence.load(std::memory_order_seq_cst);
  }
  // Sleeps until workers report progress after `sequence` was read, `deadline`, or the
  // next supervisor check.
  void sleep_until(Deadline deadline, std::uint32_t sequence) {
    block->parent_waiting.fetch_add(1, std::memory_order_seq_cst);
    futex_wait(block->parent_sequence, sequence,
               std::min(deadline, std::chrono::steady_clock::now() + supervisor_check_period));
    block->parent_waiting.fetch_sub(1, std::memory_order_seq_cst);
  }

  void send(char command) {
    if (commands >= 0 && ::write(commands, &command, 1) != 1) {
    }
  }
};

}  // namespace detail

using detail::JobSlot;
using detail::PoolBlock;
using detail::PoolCore;

// ---------------------------------------------------------------- JobState

detail::JobState::~JobState() = default;

void detail::JobState::throw_if_failed(std::uint64_t limit) const {
  if (!closed.empty()) throw PoolClosed(segment, "pool", closed);
  const Failure* lowest = nullptr;
  for (const Failure& f : failures)
    if (f.index < limit && (lowest == nullptr || f.index < lowest->index)) lowest = &f;
  if (lowest != nullptr) {
    if (lowest->died)
      throw WorkerDied(segment, lowest->index, lowest->pid, lowest->signal, lowest->exit_status);
    throw TaskError(segment, lowest->index, lowest->type, lowest->message, lowest->pid);
  }
  if (stopped && kind != JobKind::find_first)
    throw Stopped(segment, "pool",
                  fmt::format("the job was stopped: {} of {} items done, {} dropped", done, total,
                              skipped));
}

void detail::Reader::throw_truncated() {
  throw CorruptSegment("", "pool", "a serialized value runs past the end of its bytes");
}

// ---------------------------------------------------------------- job functions

void detail::start_job(PoolCore& core, const JobSpec& spec, const std::shared_ptr<JobState>& state) {
  std::lock_guard guard(core.mutex);
  if (core.creator != ::getpid())
    throw PoolClosed(core.segment.name(), "pool", "a pool can only be used by the process that made it");
  if (core.closed || !core.ended.empty())
    throw PoolClosed(core.segment.name(), "pool",
                     core.ended.empty() ? std::string("the pool is closed") : core.ended);
  PoolBlock& b = *core.block;
  // What goes into the arena: items, their offsets, and arguments and fixed-size results
  // too big for the job slot's inline buffers.
  const std::uint64_t results_bytes = spec.result_slot_bytes * spec.total;
  const std::uint64_t offsets_bytes = spec.item_offsets.size() * sizeof(std::uint64_t);
  const bool args_inline = spec.args.size() <= inline_bytes;
  const bool results_inline = results_bytes <= inline_bytes;
  const std::uint64_t parts[4] = {spec.items.size(), offsets_bytes, args_inline ? 0 : spec.args.size(),
                                  results_inline ? 0 : results_bytes};
  std::uint64_t needed = 0;
  for (const std::uint64_t bytes : parts) needed += bytes ? align_up(bytes, 64) : 0;
  if (needed > b.arena_bytes)
    throw SegmentFull(core.segment.name(), "pool",
                      fmt::format("the job needs {} bytes of arena, but the pool has {}; raise "
                                  "PoolOptions::arena_bytes",
                                  needed, b.arena_bytes));
  // Wait for the job's slot (ids take slots in turn) and arena room, collecting results
  // meanwhile.
  const std::uint64_t id = core.next_id;
  const std::uint32_t slot = core.slot_of(id);
  core.reserve_slot(slot);
  JobSlot& job = b.job(slot);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> taken;
  std::uint64_t offsets[4] = {0, 0, 0, 0};
  for (;;) {
    const std::uint32_t sequence = core.progress_sequence();
    core.pump();
    if (!core.ended.empty()) throw PoolClosed(core.segment.name(), "pool", core.ended);
    bool room = !core.jobs[slot].state && job.id.load(std::memory_order_acquire) == 0;
    for (int i = 0; i < 4 && room; ++i) {
      if (parts[i] == 0) continue;
      if (auto offset = core.allocate(parts[i])) {
        taken.emplace_back(*offset, parts[i]);
        offsets[i] = *offset;
      } else {
        room = false;
      }
    }
    if (room) {
      try {
        for (const auto& [offset, bytes] : taken) core.reserve_arena(offset + align_up(bytes, 64));
        break;
      } catch (...) {
        for (const auto& [offset, bytes] : taken) core.release(offset, bytes);
        throw;
      }
    }
    for (const auto& [offset, bytes] : taken) core.release(offset, bytes);
    taken.clear();
    if (!spin_while(b.parent_sequence, sequence)) core.sleep_until(no_deadline, sequence);
  }
  std::byte* arena = b.arena();
  if (parts[0]) std::memcpy(arena + offsets[0], spec.items.data(), parts[0]);
  if (parts[1]) std::memcpy(arena + offsets[1], spec.item_offsets.data(), parts[1]);
  std::byte* args = args_inline ? job.inline_args : arena + offsets[2];
  if (!spec.args.empty()) std::memcpy(args, spec.args.data(), spec.args.size());
  core.next_id = id + 1;
  state->id = id;
  state->total = spec.total;
  state->kind = spec.kind;
  state->segment = core.segment.name();
  job.kind = static_cast<std::uint32_t>(spec.kind);
  job.run = spec.run;
  job.function = spec.function;
  job.items_offset = offsets[0];
  job.items_size = spec.items.size();
  job.offsets_offset = spec.item_offsets.empty() ? UINT64_MAX : offsets[1];
  job.args_offset = args_inline ? in_slot : offsets[2];
  job.args_size = spec.args.size();
  job.results_offset = results_inline ? in_slot : offsets[3];
  job.result_slot_bytes = spec.result_slot_bytes;
  job.total = spec.total;
  job.chunk = spec.chunk;  // 0: automatic (see worker_main)
  job.cursor.store(0, std::memory_order_relaxed);
  job.settled.store(0, std::memory_order_relaxed);
  job.done.store(0, std::memory_order_relaxed);
  job.failed.store(0, std::memory_order_relaxed);
  job.skipped.store(0, std::memory_order_relaxed);
  job.stop.store(0, std::memory_order_relaxed);
  job.best.store(UINT64_MAX, std::memory_order_relaxed);
  job.requeued_count.store(0, std::memory_order_relaxed);
  core.jobs[slot] = {state, std::move(taken)};
  ++core.active_count;
  {
    PoolLock held(b);
    job.id.store(id, std::memory_order_release);  // publishes the job to the workers
    b.published.store(id, std::memory_order_release);
  }
  // Wake only as many workers as the job can use.
  b.work_sequence.fetch_add(1, std::memory_order_seq_cst);
  if (b.workers_waiting.load(std::memory_order_seq_cst) != 0)
    futex_wake(b.work_sequence, static_cast<int>(std::clamp<std::uint64_t>(spec.total, 1, b.workers)));
  if (spec.total == 0) {  // nothing to run: complete already
    core.completed.push_back(id);
    core.pump();
  }
}

bool detail::wait_job(PoolCore& core, JobState& state, Deadline deadline) {
  std::lock_guard guard(core.mutex);
  for (;;) {
    const std::uint32_t sequence = core.progress_sequence();
    core.pump();
    if (state.finished) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    // Poll briefly (a short task's result arrives without a wake-up), then sleep.
    if (!spin_while(core.block->parent_sequence, sequence)) core.sleep_until(deadline, sequence);
  }
}

void detail::cancel_job(PoolCore& core, JobState& state) {
  std::lock_guard guard(core.mutex);
  if (core.find(state.id) == nullptr) return;
  JobSlot& job = core.block->job(core.slot_of(state.id));
  job.stop.store(1, std::memory_order_release);  // running tasks see it at once
  // Drop what no worker has claimed yet here, rather than waiting for a claim to.
  bool complete = false;
  {
    PoolLock held(*core.block);
    complete = drop_unclaimed(job);
  }
  if (complete) core.completed.push_back(state.id);
}

detail::Progress detail::job_progress(PoolCore& core, JobState& state) {
  std::lock_guard guard(core.mutex);
  core.pump();
  if (core.find(state.id) != nullptr) {
    const JobSlot& job = core.block->job(core.slot_of(state.id));
    return {job.done.load(), job.failed.load(), job.skipped.load(), state.total};
  }
  return {state.done, state.failed, state.skipped, state.total};
}

unsigned detail::pool_workers(const PoolCore& core) { return core.block->workers; }

namespace {

// Where the pools of `segment`'s creator are, for the error of a controller pointed at a
// job's data segment rather than its pool's control segment.
std::string pools_hint(const Segment& segment) {
  const auto pools = pools_of_creator(segment);
  if (pools.empty())
    return fmt::format("it is not a pool's control segment, and its creator (pid {}) has no pool in /dev/shm",
                       segment.creator_pid());
  std::string names;
  for (const auto& name : pools) names += fmt::format("{}'{}'", names.empty() ? "" : ", ", name);
  return fmt::format("it is not a pool's control segment; the pool{} its creator (pid {}) made: segment{} {}",
                     pools.size() == 1 ? "" : "s", segment.creator_pid(), pools.size() == 1 ? "" : "s", names);
}

PoolBlock& find_pool(Segment& segment) {
  const detail::ObjectSpec spec{ObjectKind::pool, "", 0, 0, 0, 0};
  const auto placed = [&] {
    try {
      return detail::place(segment, "pool", spec, detail::Intent::open, nullptr, nullptr);
    } catch (const NotFound& e) {
      if (segment.name().empty()) throw;  // a moved-from Segment
      throw NotFound(e.segment(), e.object(), fmt::format("no object of that name: {}", pools_hint(segment)));
    }
  }();
  auto& b = *reinterpret_cast<PoolBlock*>(
      detail::resolve(placed.handle, ObjectKind::pool, sizeof(PoolBlock)));
  // Every table must lie inside the pool's own object, after its block, aligned for what
  // it holds (a controller reads and writes them through atomics).
  const std::uint64_t room = std::min<std::uint64_t>(placed.bytes, segment.size() - placed.handle.offset);
  auto fits = [room](std::uint64_t offset, std::uint64_t bytes, std::uint64_t align) {
    return offset >= sizeof(PoolBlock) && offset % align == 0 && offset <= room && bytes <= room - offset;
  };
  const char* problem = nullptr;
  if (b.workers == 0 || b.workers > detail::max_workers || b.job_slots == 0 ||
      b.job_slots > detail::job_slot_count)
    problem = "its worker or job counts are out of range";
  else if (b.ring_bytes < 4096 || b.ring_bytes > (std::uint64_t{1} << 30) || b.ring_bytes % 64 != 0)
    problem = "its result rings have an impossible size";
  else if (!fits(b.workers_offset, std::uint64_t{b.workers} * sizeof(detail::WorkerSlot), alignof(detail::WorkerSlot)) ||
           !fits(b.jobs_offset, std::uint64_t{b.job_slots} * sizeof(JobSlot), alignof(JobSlot)) ||
           !fits(b.rings_offset, std::uint64_t{b.workers} * b.ring_bytes, 64) ||
           !fits(b.arena_offset, b.arena_bytes, 64))
    problem = "its tables lie outside the pool or are misaligned";
  if (problem != nullptr) throw CorruptSegment(segment.name(), "pool 'pool'", problem);
  return b;
}

const char* worker_state_name(std::uint32_t state) {
  switch (static_cast<detail::WorkerState>(state)) {
    case detail::WorkerState::starting: return "starting";
    case detail::WorkerState::idle: return "idle";
    case detail::WorkerState::claiming:
    case detail::WorkerState::busy: return "busy";
    case detail::WorkerState::exited: return "exited";
    default: return "none";
  }
}

const char* pool_state_name(std::uint32_t state) {
  switch (static_cast<detail::PoolState>(state)) {
    case detail::PoolState::running: return "running";
    case detail::PoolState::closing: return "closing";
    case detail::PoolState::terminating: return "terminating";
    case detail::PoolState::broken: return "broken";
  }
  return "unknown";
}

const char* job_kind_name(std::uint32_t kind) {
  switch (static_cast<detail::JobKind>(kind)) {
    case detail::JobKind::submit: return "submit";
    case detail::JobKind::map: return "map";
    case detail::JobKind::find_first: return "find_first";
  }
  return "unknown";
}

}  // namespace

PoolStatus inspect_pool(Segment& segment) {
  PoolBlock& b = find_pool(segment);
  PoolStatus status{b.parent_pid, b.supervisor_pid.load(), pool_state_name(b.state.load()),
                    b.items_done.load(), b.worker_deaths.load(), {}, {}};
  for (std::uint32_t i = 0; i < b.workers; ++i) {
    const auto& w = b.worker(i);
    status.workers.push_back({w.pid.load(), worker_state_name(w.state.load()), w.job_id.load(),
                              w.chunk_first.load() + w.progress.load() / 2, w.tasks_done.load()});
  }
  for (std::uint32_t i = 0; i < std::min(b.job_slots, b.job_slots_ready.load()); ++i) {
    JobSlot& job = b.job(i);
    const std::uint64_t id = job.id.load(std::memory_order_acquire);
    if (id == 0) continue;
    status.jobs.push_back({id, job_kind_name(job.kind), job.done.load(), job.failed.load(),
                           job.skipped.load(), job.total, job.stop.load() != 0});
  }
  std::sort(status.jobs.begin(), status.jobs.end(),
            [](const auto& a, const auto& c) { return a.id < c.id; });
  return status;
}

std::vector<std::string> pools_of_creator(const Segment& segment) {
  std::vector<std::string> names;
  for (const SegmentListing& listing : Segment::list())
    if (listing.procshare && listing.pool && listing.creator_pid == segment.creator_pid() &&
        listing.name != segment.name())
      names.push_back(listing.name);
  return names;
}

std::size_t stop_pool_jobs(Segment& segment, std::uint64_t job_id) {
  PoolBlock& b = find_pool(segment);
  std::size_t stopped = 0;
  for (std::uint32_t i = 0; i < std::min(b.job_slots, b.job_slots_ready.load()); ++i) {
    JobSlot& job = b.job(i);
    const std::uint64_t id = job.id.load(std::memory_order_acquire);
    if (id == 0 || (job_id != 0 && id != job_id)) continue;
    job.stop.store(1, std::memory_order_release);
    ++stopped;
  }
  if (stopped) {
    // The parent drops the stopped jobs' unclaimed work at its next pool call, the workers
    // as they reach them.
    b.rescan.fetch_add(1);
    detail::wake_parent(b);
    detail::wake_workers(b);
  }
  return stopped;
}

bool stop_requested() noexcept {
  return detail::current_stop != nullptr && detail::current_stop->load(std::memory_order_relaxed) != 0;
}

void request_stop() noexcept {
  if (detail::current_stop == nullptr) return;
  detail::current_stop->store(1, std::memory_order_release);
  detail::current_block->rescan.fetch_add(1);  // the parent drops the job's unclaimed work
  detail::wake_parent(*detail::current_block);
}

// ---------------------------------------------------------------- Pool

Pool::Pool(PoolOptions options) {
  static std::atomic<int> counter{0};
  const unsigned workers = options.workers ? options.workers : std::max(1u, std::thread::hardware_concurrency());
  const std::string name = options.name.empty()
                               ? fmt::format("procshare-pool-{}-{}", ::getpid(), counter++)
                               : options.name;
  if (workers > detail::max_workers)
    throw InvalidArgument(name, "pool", fmt::format("{} workers is more than {}", workers, detail::max_workers));
  if (options.arena_bytes < 4096 || options.arena_bytes > (std::size_t{1} << 40))
    throw InvalidArgument(name, "pool", fmt::format("arena_bytes {} is out of range (4096 to 2^40)", options.arena_bytes));
  if (!options.allow_threads) {
    if (const int threads = detail::thread_count(); threads > 1)
      throw InvalidArgument(name, "pool",
                            fmt::format("this process runs {} threads, and forking a threaded "
                                        "process is unsafe; set PoolOptions::allow_threads if "
                                        "you know it is fine",
                                        threads));
  }
  // Layout of the control block: header, worker table, job table, rings, arena.
  const std::uint64_t workers_offset = detail::align_up(sizeof(PoolBlock), 64);
  const std::uint64_t jobs_offset =
      detail::align_up(workers_offset + workers * sizeof(detail::WorkerSlot), 64);
  const std::uint64_t rings_offset =
      detail::align_up(jobs_offset + detail::job_slot_count * sizeof(JobSlot), 64);
  const std::uint64_t arena_offset =
      detail::align_up(rings_offset + workers * detail::ring_bytes_per_worker, 4096);
  const std::uint64_t arena_bytes = detail::align_up(options.arena_bytes, 4096);
  const std::uint64_t block_bytes = arena_offset + arena_bytes;
  // Reserved at once: the segment's header and directory, the pool's block and worker
  // table (the object sits in the first 64 KiB). The rest is reserved as it is first
  // used: job slots and the arena by the parent (PoolCore::reserve_slot, reserve_arena),
  // each ring by its worker. So a big arena or table costs nothing until it is used.
  auto segment = detail::create_segment(name, block_bytes + (1u << 16),
                                        {.permissions = 0600, .max_objects = 8},
                                        jobs_offset + (1u << 16));
  struct Layout {
    std::uint64_t workers_offset, jobs_offset, rings_offset, arena_offset, arena_bytes;
    unsigned workers;
    std::uint64_t max_tasks;
  } const layout{workers_offset, jobs_offset, rings_offset, arena_offset, arena_bytes, workers,
                 options.max_tasks_per_child};
  const detail::ObjectSpec spec{ObjectKind::pool, "", 0, 0, workers, block_bytes};
  auto placed = detail::place(
      segment, "pool", spec, detail::Intent::create,
      [](detail::ObjectHeader* object, const void* context) {
        const auto& l = *static_cast<const Layout*>(context);
        auto* b = reinterpret_cast<PoolBlock*>(object);
        if (detail::init_lock(b->lock, false) != 0) return false;
        b->parent_pid = ::getpid();
        b->workers = l.workers;
        b->job_slots = detail::job_slot_count;
        b->max_tasks_per_child = l.max_tasks;
        b->ring_bytes = detail::ring_bytes_per_worker;
        b->workers_offset = l.workers_offset;
        b->jobs_offset = l.jobs_offset;
        b->rings_offset = l.rings_offset;
        b->arena_offset = l.arena_offset;
        b->arena_bytes = l.arena_bytes;
        return true;
      },
      &layout);
  auto* block = reinterpret_cast<PoolBlock*>(
      detail::resolve(placed.handle, ObjectKind::pool, sizeof(PoolBlock)));
  core_ = std::make_shared<PoolCore>(std::move(segment));
  core_->block = block;
  core_->jobs.resize(detail::job_slot_count);
  core_->free_space.emplace(0, arena_bytes);
  core_->arena_at = placed.handle.offset + arena_offset;
  core_->jobs_at = placed.handle.offset + jobs_offset;

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
    throw Error(name, "pool", fmt::format("cannot make a pipe: {}", detail::os_reason(errno)));
  std::fflush(nullptr);  // nothing buffered may be printed twice
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    throw Error(name, "pool", fmt::format("cannot fork the supervisor: {}", detail::os_reason(errno)));
  }
  if (pid == 0) {
    ::close(pipe_fds[1]);
    detail::Supervisor supervisor{*block, options.initializer, core_->segment, placed.handle.offset,
                                  pipe_fds[0], ::getpid(), {}, {}};
    supervisor.run();
  }
  ::close(pipe_fds[0]);
  core_->commands = pipe_fds[1];
  core_->supervisor = pid;
}

Pool::~Pool() {
  if (!core_ || core_->creator != ::getpid()) return;
  try {
    close();
    join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "procshare: ~Pool: %s\n", e.what());
    try {
      terminate();
    } catch (...) {
    }
  }
  if (core_->commands >= 0) ::close(core_->commands);
  core_->commands = -1;
}

void Pool::close() {
  std::lock_guard guard(core_->mutex);
  core_->closed = true;
}

void Pool::join() {
  std::lock_guard guard(core_->mutex);
  if (!core_->closed)
    throw InvalidArgument(core_->segment.name(), "pool", "join() before close()");
  while (core_->active_count != 0 && core_->ended.empty()) {
    const std::uint32_t sequence = core_->progress_sequence();
    core_->pump();
    if (core_->active_count != 0) core_->sleep_until(detail::no_deadline, sequence);
  }
  if (core_->supervisor < 0) return;
  core_->send('C');
  int status = 0;
  while (::waitpid(core_->supervisor, &status, 0) < 0 && errno == EINTR) {
  }
  core_->supervisor = -1;
}

void Pool::terminate() {
  std::lock_guard guard(core_->mutex);
  core_->closed = true;
  if (core_->supervisor >= 0) {
    core_->send('T');
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(800);
    int status = 0;
    pid_t r = 0;
    while ((r = ::waitpid(core_->supervisor, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (r == 0) {  // it did not finish in time: kill it and its workers ourselves
      for (std::uint32_t i = 0; i < core_->block->workers; ++i)
        if (const pid_t worker = core_->block->worker(i).pid.load(); worker > 0) ::kill(worker, SIGKILL);
      ::kill(core_->supervisor, SIGKILL);
      ::waitpid(core_->supervisor, &status, 0);
    }
    core_->supervisor = -1;
  }
  core_->fail_all("the pool was terminated");
}

unsigned Pool::workers() const { return core_->block->workers; }

std::vector<int> Pool::worker_pids() const {
  std::vector<int> pids;
  for (std::uint32_t i = 0; i < core_->block->workers; ++i) {
    const auto& w = core_->block->worker(i);
    const auto state = static_cast<detail::WorkerState>(w.state.load());
    if (state != detail::WorkerState::empty && state != detail::WorkerState::exited && w.pid.load() > 0)
      pids.push_back(w.pid.load());
  }
  return pids;
}

int Pool::supervisor_pid() const { return core_->block->supervisor_pid.load(); }

std::string Pool::control_segment() const { return core_->segment.name(); }

}  // namespace procshare
