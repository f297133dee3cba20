// Pool, the parent's job functions: starting a job (start_job), waiting for it (wait_job,
// wait_first, wait_stream), stopping it (cancel_job, cancel_unstarted), its progress, and
// how a job's end is reported (JobState: failures, per-item ends). What they write in
// shared memory is PoolCore's (detail/pool_core.hpp).
#include <procshare/pool.hpp>

#include "detail/pool_core.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace procshare {

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
  if (lowest != nullptr) std::rethrow_exception(failure_error(*lowest));
  if (cancelled)
    throw Stopped(segment, "pool", "the task was cancelled before it started (Future::cancel())");
  if (stopped && kind != JobKind::find_first)
    throw Stopped(segment, "pool",
                  fmt::format("the job was stopped: {} of {} items done, {} dropped", done, total,
                              skipped));
}

std::exception_ptr detail::JobState::failure_error(const Failure& f) const {
  if (f.died)
    return std::make_exception_ptr(WorkerDied(segment, f.index, f.pid, f.signal, f.exit_status));
  return std::make_exception_ptr(TaskError(segment, f.index, f.type, f.message, f.pid));
}

std::vector<detail::JobState::ItemEnd> detail::JobState::item_ends() const {
  std::vector<ItemEnd> ends(total, ItemEnd{static_cast<std::uint8_t>(ItemState::skipped), nullptr});
  for (const auto& [first, end] : ran)  // ranges that ran (from chunks and deaths)
    for (std::uint64_t i = first; i < end && i < total; ++i)
      ends[i].state = static_cast<std::uint8_t>(ItemState::done);
  for (const Failure& f : failures)
    if (f.index < total && ends[f.index].error == nullptr) {
      ends[f.index].state = static_cast<std::uint8_t>(ItemState::failed);
      ends[f.index].error = failure_error(f);
    }
  std::exception_ptr never_ran;
  for (std::uint64_t i = 0; i < total; ++i) {
    if (ends[i].state != static_cast<std::uint8_t>(ItemState::skipped)) continue;
    if (never_ran == nullptr && !closed.empty())
      never_ran = std::make_exception_ptr(PoolClosed(segment, "pool", closed));
    else if (never_ran == nullptr)
      never_ran = std::make_exception_ptr(
          Stopped(segment, "pool",
                  fmt::format("the item never ran: the job was stopped ({} of {} items done, "
                              "{} dropped)",
                              done, total, skipped)));
    ends[i].error = never_ran;
  }
  return ends;
}

void detail::throw_results_taken(const JobState& state, const char* call) {
  const bool again = std::string_view(call) == "get()";
  throw InvalidArgument(state.segment, "pool",
                        fmt::format("job {}: {} after get() returned the results (it moved them "
                                    "out): {}",
                                    state.id, call,
                                    again ? "keep the vector the first get() returned"
                                          : "call outcomes() instead of get(), or after get() threw"));
}

// ---------------------------------------------------------------- job functions

void detail::check_usable(PoolCore& core) {
  std::lock_guard guard(core.mutex);
  if (core.creator != ::getpid())
    throw PoolClosed(core.segment.name(), "pool", "a pool can only be used by the process that made it");
  if (core.closed || !core.ended.empty())
    throw PoolClosed(core.segment.name(), "pool",
                     core.ended.empty() ? std::string("the pool is closed") : core.ended);
}

void detail::start_job(PoolCore& core, const JobSpec& spec, const std::shared_ptr<JobState>& state) {
  std::lock_guard guard(core.mutex);
  check_usable(core);
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
      if (auto offset = core.arena.allocate(parts[i])) {
        taken.emplace_back(*offset, parts[i]);
        offsets[i] = *offset;
      } else {
        room = false;
      }
    }
    if (room) {
      try {
        for (const auto& [offset, bytes] : taken)
          core.arena.reserve_up_to(core.segment, b.arena_bytes, offset + align_up(bytes, 64));
        break;
      } catch (...) {
        for (const auto& [offset, bytes] : taken) core.arena.release(offset, bytes);
        throw;
      }
    }
    for (const auto& [offset, bytes] : taken) core.arena.release(offset, bytes);
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
  job.range_first = spec.range_first;
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

std::size_t detail::wait_any(PoolCore& core, std::span<JobState* const> states, Deadline deadline) {
  std::lock_guard guard(core.mutex);
  for (;;) {
    const std::uint32_t sequence = core.progress_sequence();
    core.pump();
    for (std::size_t i = 0; i < states.size(); ++i)
      if (states[i]->finished) return i;
    if (std::chrono::steady_clock::now() >= deadline) return states.size();
    if (!spin_while(core.block->parent_sequence, sequence)) core.sleep_until(deadline, sequence);
  }
}

void detail::wait_stream(PoolCore& core, JobState& state, bool (*ready)(JobState&)) {
  std::lock_guard guard(core.mutex);
  // Workers wake the parent with each record they publish while this is raised; raised
  // before the rings are read, so a record either is read or wakes the sleep below.
  struct Wanted {
    std::atomic<std::uint32_t>& word;
    explicit Wanted(std::atomic<std::uint32_t>& w) : word(w) { word.store(1, std::memory_order_seq_cst); }
    ~Wanted() { word.store(0, std::memory_order_relaxed); }
  } wanted(core.block->records_wanted);
  for (;;) {
    const std::uint32_t sequence = core.progress_sequence();
    const bool refused = core.pump(true);
    if (ready(state) || state.finished) return;
    if (refused) {
      // The rings hold only outcomes the stream does not admit now, ahead of the one it
      // waits for: take everything rather than wait for ever.
      core.pump();
      continue;
    }
    if (!spin_while(core.block->parent_sequence, sequence)) core.sleep_until(no_deadline, sequence);
  }
}

std::optional<std::uint64_t> detail::wait_first(PoolCore& core, JobState& state) {
  std::lock_guard guard(core.mutex);
  for (;;) {
    const std::uint32_t sequence = core.progress_sequence();
    core.pump();
    if (state.finished) return state.found;
    // Return as soon as nothing below the match can change it; the tasks above it see
    // stop_requested() and the job ends in the background.
    std::uint64_t match = 0;
    if (core.find(state.id) != nullptr && core.match_final(state, match)) return match;
    if (!spin_while(core.block->parent_sequence, sequence)) core.sleep_until(no_deadline, sequence);
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
    CountsJournal journal{};  // (the parent's own: see drop_unclaimed)
    complete = drop_unclaimed(*core.block, job, journal);
  }
  if (complete) core.completed.push_back(state.id);
}

bool detail::cancel_unstarted(PoolCore& core, JobState& state) {
  std::lock_guard guard(core.mutex);
  core.pump();
  if (state.cancelled) return true;
  if (state.finished || core.find(state.id) == nullptr) return false;
  JobSlot& job = core.block->job(core.slot_of(state.id));
  bool complete = false;
  {
    PoolLock held(*core.block);  // no claim meanwhile
    if (job.cursor.load(std::memory_order_relaxed) != 0 ||
        job.requeued_count.load(std::memory_order_relaxed) != 0 ||
        job.settled.load(std::memory_order_relaxed) != 0)
      return false;  // a worker has it (or had it)
    job.stop.store(1, std::memory_order_release);
    CountsJournal journal{};  // (the parent's own: see drop_unclaimed)
    complete = drop_unclaimed(*core.block, job, journal);
  }
  state.cancelled = true;
  if (complete) core.completed.push_back(state.id);
  core.pump();
  return true;
}

void detail::throw_job_timeout(const JobState& state, const char* call,
                               std::chrono::nanoseconds waited) {
  const char* kinds[] = {"", "submit", "map", "find_first"};
  const auto kind = static_cast<std::uint32_t>(state.kind);
  throw Timeout(state.segment, "pool",
                fmt::format("{}: job {} ({}, {} items) has not ended after {} ms; it goes on "
                            "running",
                            call, state.id, kind < 4 ? kinds[kind] : "?", state.total,
                            std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()));
}

void detail::throw_completed_timeout(const JobState& state, std::size_t pending,
                                     std::chrono::nanoseconds waited) {
  throw Timeout(state.segment, "pool",
                fmt::format("as_completed: {} future{} had not ended after {} ms; they go on "
                            "running",
                            pending, pending == 1 ? "" : "s",
                            std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()));
}

detail::Progress detail::job_progress(PoolCore& core, JobState& state) {
  std::lock_guard guard(core.mutex);
  core.pump(true);  // (takes no more of a stream's outcomes than it holds)
  if (core.find(state.id) != nullptr) {
    const JobSlot& job = core.block->job(core.slot_of(state.id));
    return {job.done.load(), failures_so_far(*core.block, job, state.id), job.skipped.load(),
            state.total};
  }
  return {state.done, state.failed, state.skipped, state.total};
}

unsigned detail::pool_workers(const PoolCore& core) { return core.block->workers; }
std::uint64_t detail::pool_arena_bytes(const PoolCore& core) { return core.block->arena_bytes; }

}  // namespace procshare
