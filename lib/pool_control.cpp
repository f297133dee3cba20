// Pool, the controller side (procshare-ctl and any other process that opens a pool's
// control segment by name): find_pool, inspect_pool, pools_of_creator, stop_pool_jobs.
//
// Shared memory it writes: nothing but a job's stop flag, rescan and the wake-up
// sequences (stop_pool_jobs); everything else it only reads.
#include <procshare/pool.hpp>

#include "detail/names.hpp"
#include "detail/pool_core.hpp"
#include "detail/pool_internal.hpp"
#include "detail/pool_layout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

namespace procshare {

using detail::JobSlot;
using detail::PoolBlock;

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
    case detail::WorkerState::busy:
    case detail::WorkerState::settling: return "busy";
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
    status.jobs.push_back({id, job_kind_name(job.kind), job.done.load(),
                           detail::failures_so_far(b, job, id), job.skipped.load(), job.total,
                           job.stop.load() != 0});
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

namespace {
// Raises the stop flag of job `job_id` of pool `b`, or of every job if 0; how many.
std::size_t stop_jobs(PoolBlock& b, std::uint64_t job_id) {
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
}  // namespace

std::size_t stop_pool_jobs(Segment& segment, std::uint64_t job_id) { return stop_jobs(find_pool(segment), job_id); }

void detail::stop_local_job(PoolCore& core, std::uint64_t job_id) {
  if (job_id != 0) stop_jobs(*core.block, job_id);
}

std::optional<std::uint64_t> detail::local_job_computing(PoolCore& core, std::uint64_t job_id) {
  PoolBlock& b = *core.block;
  if (job_id == 0 || b.job_slots == 0) return std::nullopt;
  JobSlot& job = b.job_of(job_id);
  const std::uint64_t done = job.done.load(std::memory_order_acquire);
  const std::uint64_t settled = job.settled.load(std::memory_order_acquire);
  if (job.id.load(std::memory_order_acquire) != job_id || settled >= job.total) return std::nullopt;
  return done;
}
}  // namespace procshare
