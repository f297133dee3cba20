// Pool, the parent's side: the Pool object, the jobs it publishes, the results it collects
// from the workers' rings and the futures it completes (PoolCore), in the process that
// made the pool.
//
// Shared memory it writes: the job table (a job's slot, filled then published under the
// pool lock with `published`, and freed when it finishes), a job's stop flag (cancel) and,
// under the pool lock, the unclaimed items of a stopped job (drop_unclaimed); the arena
// (items, arguments) and the job table's reserved size; the workers' ring read positions
// and ring_space_sequence, and death_read (RingReader); parent_waiting and the work
// sequence. The control block's fixed fields once, at creation.
#include <procshare/pool.hpp>
#include <procshare/value.hpp>

#include "detail/names.hpp"
#include "detail/pool_internal.hpp"
#include "detail/pool_layout.hpp"
#include "detail/pool_parent.hpp"
#include "detail/streams.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <typeinfo>
#include <map>
#include <mutex>
#include <thread>

namespace procshare {
namespace detail {
namespace {

// Other threads in this process (from /proc/self/status).
int thread_count() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return 1;
}

}  // namespace

// ---------------------------------------------------------------- the parent's side

// The parent's side of one pool: its jobs (published to the job table, one JobState
// each), collecting their results and deaths, and waiting for progress. Guarded by
// `mutex`, which every job function takes.
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
  std::uint64_t next_id = 1;
  std::chrono::steady_clock::time_point last_check{};
  std::uint64_t jobs_at = 0;         // the job table's offset in the segment
  ArenaSpace arena;                  // the jobs' items, arguments and results
  RingReader rings;                  // the workers' result rings and the death ring

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

  // Reserves the job table up to slot `slot` (in steps). Throws SegmentFull.
  void reserve_slot(std::uint32_t slot) {
    const std::uint32_t ready = block->job_slots_ready.load(std::memory_order_relaxed);
    if (slot < ready) return;
    const std::uint32_t target = std::min(block->job_slots, (slot / job_slot_step + 1) * job_slot_step);
    reserve(segment, jobs_at + ready * sizeof(JobSlot), (target - ready) * sizeof(JobSlot));
    block->job_slots_ready.store(target, std::memory_order_release);
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
      try {
        state.accept(header.index, r);
      } catch (const std::exception& e) {  // a user's transport<R>::read threw
        state.failures.push_back(JobState::Failure{
            header.index, false, demangle(typeid(e).name()),
            fmt::format("its result could not be read back: {}", e.what()), header.pid, 0, -1});
      }
    } else if (header.type == static_cast<std::uint32_t>(RecordType::batch)) {
      const std::size_t item = header.type_length;
      if (item == 0 || header.index > state.total || size / item > state.total - header.index)
        return;  // (not a batch of this job's items)
      state.accept_batch(header.index, payload, size / item, item);
    } else if (header.type == static_cast<std::uint32_t>(RecordType::ran)) {
      std::uint64_t end = 0;
      if (size == sizeof end) {
        std::memcpy(&end, payload, sizeof end);
        if (header.index < end && end <= state.total) state.ran.emplace_back(header.index, end);
      }
    } else if (header.type == static_cast<std::uint32_t>(RecordType::error)) {
      const std::size_t type_length = std::min<std::size_t>(header.type_length, size);
      state.failures.push_back(JobState::Failure{
          header.index, false, std::string(reinterpret_cast<const char*>(payload), type_length),
          std::string(reinterpret_cast<const char*>(payload) + type_length, size - type_length),
          header.pid, 0, -1});
    }
  }

  // Moves every record in the rings into its job. With `limiting`, a stream's outcomes
  // beyond what it admits stay in the rings; returns whether some did.
  bool drain_rings(JobState* limiting = nullptr) {
    return rings.drain(
        *block, [this](const RecordHeader& header, const std::byte* payload,
                       std::size_t size) { dispatch(header, payload, size); },
        [this](const DeathRecord& death) {
          JobState* state = find(death.job_id);
          if (state == nullptr) return;
          if (death.index != no_item)
            state->failures.push_back(JobState::Failure{death.index, true, "", "", death.pid,
                                                        death.signal, death.exit_status});
          if (death.ran_end > death.ran_first && state->kind == JobKind::map)
            state->ran.emplace_back(death.ran_first, death.ran_end);
        },
        [limiting](const RecordHeader& header) {
          return limiting == nullptr || header.job_id != limiting->id ||
                 limiting->admits(header.index);
        });
  }

  // Moves everything finished into its JobState; frees finished jobs' slots and memory.
  // Workers report each job they complete through their ring; the parent checks every job
  // only when the supervisor or a controller may have completed one (`rescan`) and, as a
  // safety net, with each supervisor check.
  // `limiting`: a stream whose consumer is waiting (see drain_rings); returns whether
  // some of its outcomes stayed in the rings.
  bool pump(JobState* limiting = nullptr) {
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
    bool refused = drain_rings(limiting);
    // A job is finished (and forgotten) only once the rings hold nothing more of it: not
    // while a stream's back-pressure leaves records in them.
    if (!completed.empty() && !refused) {
      // Once more: results another worker published before this job's last item settled.
      refused = drain_rings(limiting);
      if (!refused) {
        for (const std::uint64_t id : completed) finish(id);
        completed.clear();
      }
    }
    if (periodic) {
      last_check = now;
      check_supervisor();
    }
    return refused;
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
    for (const auto& [offset, bytes] : a.allocations) arena.release(offset, bytes);
    a.allocations.clear();
    a.state.reset();
    --active_count;
  }

  // find_first: whether job `state`'s best match so far is final, because every item
  // below it has settled: none unclaimed, none requeued, none in a chunk still running,
  // and every failure counted so far has reached the parent. Sets `match`.
  bool match_final(JobState& state, std::uint64_t& match) {
    JobSlot& job = block->job(slot_of(state.id));
    const std::uint64_t failed = job.failed.load(std::memory_order_acquire);
    {
      PoolLock held(*block);  // no claim or settlement of a death meanwhile
      match = job.best.load(std::memory_order_acquire);
      if (match >= job.total || job.cursor.load(std::memory_order_relaxed) < match) return false;
      const std::uint32_t requeued = job.requeued_count.load(std::memory_order_relaxed);
      for (std::uint32_t r = 0; r < requeued; ++r)
        if (job.requeued[r].first < match) return false;
      for (std::uint32_t i = 0; i < block->workers; ++i) {
        const WorkerSlot& s = block->worker(i);
        const auto worker = static_cast<WorkerState>(s.state.load(std::memory_order_acquire));
        if ((worker == WorkerState::busy || worker == WorkerState::claiming) &&
            s.job_id.load(std::memory_order_relaxed) == state.id &&
            s.chunk_first.load(std::memory_order_relaxed) +
                    s.progress.load(std::memory_order_acquire) / 2 < match)
          return false;  // items below the match still run there (or a death is unsettled)
      }
    }
    drain_rings();  // the failure records of items below the match
    return state.failures.size() >= failed;
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

void detail::throw_results_taken(const JobState& state) {
  throw InvalidArgument(state.segment, "pool",
                        fmt::format("job {}: outcomes() after get() returned the results (it "
                                    "moved them out): call outcomes() instead of get(), or "
                                    "after get() threw",
                                    state.id));
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

void detail::wait_stream(PoolCore& core, JobState& state, bool (*ready)(JobState&)) {
  std::lock_guard guard(core.mutex);
  for (;;) {
    const std::uint32_t sequence = core.progress_sequence();
    const bool refused = core.pump(&state);
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
    complete = drop_unclaimed(job);
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
    complete = drop_unclaimed(job);
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
  // used: job slots and the arena by the parent (PoolCore::reserve_slot, ArenaSpace::reserve_up_to),
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
  core_->arena.init(placed.handle.offset + arena_offset, arena_bytes);
  core_->jobs_at = placed.handle.offset + jobs_offset;

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
    throw Error(name, "pool", fmt::format("cannot make a pipe: {}", detail::os_reason(errno)));
  detail::flush_standard_streams();  // nothing buffered may be printed twice
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    throw Error(name, "pool", fmt::format("cannot fork the supervisor: {}", detail::os_reason(errno)));
  }
  if (pid == 0) {
    ::close(pipe_fds[1]);
    detail::run_supervisor(*block, options.initializer, core_->segment, placed.handle.offset,
                           pipe_fds[0]);
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
