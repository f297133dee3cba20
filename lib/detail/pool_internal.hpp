// Internal: what the pool's four roles share besides the layout (pool_layout.hpp): the
// tunables, the pool lock, the wake-ups, spinning before a futex sleep, and the entry
// points one role calls in another's file. The roles:
//   pool.cpp            the parent: jobs, results, futures (PoolCore) and Pool itself
//                       (with its arena allocator and ring reader, pool_parent.hpp);
//   pool_supervisor.cpp the supervisor: forks, reaps and replaces the workers;
//   pool_worker.cpp     the worker loop and its result ring writer;
//   pool_control.cpp    the controller side (inspect_pool, stop_pool_jobs): reads, and
//                       raises stop flags.
#pragma once

#include "names.hpp"
#include "pool_layout.hpp"

#include <procshare/error.hpp>
#include <procshare/futex.hpp>
#include <procshare/segment.hpp>

#include <fmt/format.h>

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string_view>

namespace procshare::detail {

constexpr std::uint32_t max_workers = 1024;
// Job `id` takes slot (id - 1) % job_slot_count: a new job waits while the one
// job_slot_count ids before it is still running.
constexpr std::uint32_t job_slot_count = 1024;
constexpr std::uint32_t job_slot_step = 64;  // the parent reserves the job table in steps
constexpr std::uint64_t ring_bytes_per_worker = 1u << 20;
// The most result bytes in one batch record (a stream's; see RecordType::batch).
constexpr std::uint64_t stream_batch_bytes = 64u << 10;
constexpr std::uint64_t ring_reserve_step = 64u << 10;  // a worker reserves its ring in steps
// How long an idle worker, or a waiting parent, polls before sleeping on its futex: a
// hand-off within this time costs no system call and no wake-up latency.
constexpr auto spin_time = std::chrono::microseconds(50);
constexpr std::uint32_t startup_failure_limit = 3;
constexpr auto supervisor_check_period = std::chrono::milliseconds(50);

constexpr std::uint64_t align_up(std::uint64_t n, std::uint64_t a) { return (n + a - 1) / a * a; }

inline void wake_parent(PoolBlock& b) {
  b.parent_sequence.fetch_add(1, std::memory_order_seq_cst);
  if (b.parent_waiting.load(std::memory_order_seq_cst) != 0) futex_wake(b.parent_sequence);
}

inline void wake_workers(PoolBlock& b) {
  b.work_sequence.fetch_add(1, std::memory_order_seq_cst);
  if (b.workers_waiting.load(std::memory_order_seq_cst) != 0) futex_wake(b.work_sequence);
}

// Finishes what a worker that died holding the pool lock had under way (its claim, or a
// change it had journaled, see CountsJournal), then counts its death as seen
// (lock_deaths_seen). Called, under the lock, by whoever takes it over (PoolLock); a
// holder that dies in here leaves it to the next one (every step is a plain store of a
// value it can read again). pool_worker.cpp.
void finish_cut_work(PoolBlock& b);

// Holds the pool's robust lock. A holder that died is taken over, and what it had under
// way finished first (finish_cut_work), so that under the lock the job table is always
// as if no holder had ever died: no other worker is claiming or settling, and no change
// is half made.
class PoolLock {
public:
  explicit PoolLock(PoolBlock& b) : block_(b) {
    if (const int error = detail::lock(b.lock))
      throw Error("", "pool", fmt::format("cannot lock the pool: {}", os_reason(error)));
    if (b.lock.deaths.load(std::memory_order_relaxed) != b.lock_deaths_seen) [[unlikely]]
      finish_cut_work(b);
  }
  ~PoolLock() { detail::unlock(block_.lock); }
  PoolLock(const PoolLock&) = delete;
  PoolLock& operator=(const PoolLock&) = delete;

private:
  PoolBlock& block_;
};

// Polls for up to spin_time while `word` still holds `value`; returns whether it changed.
// It yields the CPU between polls: a process it shares the CPU with (a worker running a
// task, when there are more busy processes than CPUs) is not held up by the polling.
inline bool spin_while(const std::atomic<std::uint32_t>& word, std::uint32_t value) {
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

// Keeps `reason` as the pool's broken_reason unless one is kept already: the first
// reason wins, whole, when several processes fail at once.
inline void record_broken_reason(PoolBlock& b, std::string_view reason) {
  char expected = '\0';
  std::atomic_ref<char> first(b.broken_reason[0]);
  if (!first.compare_exchange_strong(expected, '?')) return;
  const std::size_t length = std::min(reason.size(), sizeof b.broken_reason - 1);
  std::memcpy(b.broken_reason + 1, reason.data() + 1, length > 0 ? length - 1 : 0);
  b.broken_reason[length] = '\0';
  first.store(length > 0 ? reason[0] : '\0', std::memory_order_release);
}

// The failures of job `id` (in `job`) counted so far: the job's, from its settled chunks
// and deaths, and those its busy workers counted in the chunks they run (each as soon as
// its error record is out). A chunk's failures leave its worker's count only after the
// worker stops being busy (WorkerState::settling, or exited when a supervisor settles its
// death): read in this order (the job's, then the workers'), they are never counted
// twice; at worst, for that moment, not at all. Lock-free.
inline std::uint64_t failures_so_far(PoolBlock& b, const JobSlot& job, std::uint64_t id) {
  std::uint64_t failed = job.failed.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < b.workers; ++i) {
    const WorkerSlot& s = b.worker(i);
    if (static_cast<WorkerState>(s.state.load(std::memory_order_acquire)) == WorkerState::busy &&
        s.job_id.load(std::memory_order_relaxed) == id)
      failed += s.chunk_failed.load(std::memory_order_acquire);
  }
  return failed;
}

// For a stopped job, or a find_first whose cursor passed its match: drops the unclaimed
// items (under the pool lock), settling them as skipped, through `journal` (a worker's
// own, so that its death cannot cut the change in half; the parent, whose death ends the
// pool, passes one of its own memory). Returns whether that completed the job.
// (pool_worker.cpp; the parent calls it too.)
bool drop_unclaimed(PoolBlock& b, JobSlot& job, CountsJournal& journal);

// A freshly forked worker's whole life: runs the initializer, then claims and runs chunks
// until the pool closes or terminates (pool_worker.cpp).
[[noreturn]] void worker_main(PoolBlock& b, std::uint32_t index, pid_t supervisor,
                              const std::function<void()>& initializer, const Segment& segment,
                              std::uint64_t block_offset);

// The freshly forked supervisor's whole life: forks the workers, reaps and replaces them,
// and follows the parent's commands on `commands` (pool_supervisor.cpp).
[[noreturn]] void run_supervisor(PoolBlock& b, const std::function<void()>& initializer,
                                 const Segment& segment, std::uint64_t block_offset, int commands);

}  // namespace procshare::detail
