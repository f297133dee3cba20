// Internal: the parent's side of one pool (PoolCore): its jobs (published to the job
// table, one JobState each), collecting their results and deaths from the rings, and
// waiting for progress. Used by lib/pool.cpp (the Pool object) and lib/pool_jobs.cpp
// (the job functions).
//
// Shared memory it writes: the job table (a job's slot, filled then published under the
// pool lock with `published`, and freed when it finishes), a job's stop flag (cancel) and,
// under the pool lock, the unclaimed items of a stopped job (drop_unclaimed) and, taking
// the lock over from a worker that died holding it, what that worker had under way
// (finish_cut_work); the arena (items, arguments) and the job table's reserved size; the
// workers' ring read positions and ring_space_sequence, and death_read (RingReader);
// parent_waiting and the work sequence.
#pragma once

#include <procshare/pool.hpp>

#include "names.hpp"
#include "pool_internal.hpp"
#include "pool_layout.hpp"
#include "pool_parent.hpp"

#include <fmt/format.h>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace procshare::detail {

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
      // A worker killed right after it sent an item's error (before it marked the item
      // over) is reported running that item too: the item fails once, as what came first.
      if (std::find(state.death_items.begin(), state.death_items.end(),
                    std::pair{header.pid, header.index}) != state.death_items.end())
        return;
      std::erase_if(state.last_errors, [&](const auto& e) { return e.first == header.pid; });
      state.last_errors.emplace_back(header.pid, header.index);
      const std::size_t type_length = std::min<std::size_t>(header.type_length, size);
      state.failures.push_back(JobState::Failure{
          header.index, false, std::string(reinterpret_cast<const char*>(payload), type_length),
          std::string(reinterpret_cast<const char*>(payload) + type_length, size - type_length),
          header.pid, 0, -1});
    }
  }

  // Moves every record in the rings into its job. With `limited`, a stream's outcomes
  // beyond what it admits stay in the rings (every stream's: see Stream); returns whether
  // some did.
  bool drain_rings(bool limited) {
    return rings.drain(
        *block, [this](const RecordHeader& header, const std::byte* payload,
                       std::size_t size) { dispatch(header, payload, size); },
        [this](const DeathRecord& death) {
          JobState* state = find(death.job_id);
          if (state == nullptr) return;
          auto fail = [&](std::uint64_t index) {
            state->failures.push_back(JobState::Failure{index, true, "", "", death.pid,
                                                        death.signal, death.exit_status});
          };
          if (death.lost_end <= state->total)
            for (std::uint64_t k = death.lost_first; k < death.lost_end; ++k) fail(k);
          if (death.index != no_item &&
              std::find(state->last_errors.begin(), state->last_errors.end(),
                        std::pair{death.pid, death.index}) == state->last_errors.end()) {
            state->death_items.emplace_back(death.pid, death.index);
            fail(death.index);
          }
          if (death.ran_end > death.ran_first && state->kind == JobKind::map)
            state->ran.emplace_back(death.ran_first, death.ran_end);
        },
        [this, limited](const RecordHeader& header) {
          if (!limited) return true;
          const JobState* state = find(header.job_id);
          return state == nullptr || state->admits(header.index);
        });
  }

  // Moves everything finished into its JobState; frees finished jobs' slots and memory.
  // Workers report each job they complete through their ring; the parent checks every job
  // only when the supervisor or a controller may have completed one (`rescan`) and, as a
  // safety net, with each supervisor check.
  // `limited`: streams' outcomes they do not admit now stay in the rings (see
  // drain_rings); returns whether some did.
  bool pump(bool limited = false) {
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
            CountsJournal journal{};  // (the parent's own: see drop_unclaimed)
            complete = drop_unclaimed(*block, job, journal);
          }
          if (complete) completed.push_back(a.state->id);
        }
    }
    bool refused = drain_rings(limited);
    // A job is finished (and forgotten) only once the rings hold nothing more of it: not
    // while a stream's back-pressure leaves records in them.
    if (!completed.empty() && !refused) {
      // Once more: results another worker published before this job's last item settled.
      refused = drain_rings(limited);
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
    state->stop_raised = job.stop.load() != 0;
    state->stopped = state->stop_raised && state->skipped > 0;
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
    std::uint64_t failed = 0;
    {
      PoolLock held(*block);  // no claim or settlement of a death meanwhile
      failed = failures_so_far(*block, job, state.id);
      match = job.best.load(std::memory_order_acquire);
      if (match >= job.total || job.cursor.load(std::memory_order_relaxed) < match) return false;
      const std::uint32_t requeued = job.requeued_count.load(std::memory_order_relaxed);
      for (std::uint32_t r = 0; r < requeued; ++r)
        if (job.requeued[r].first < match) return false;
      for (std::uint32_t i = 0; i < block->workers; ++i) {
        const WorkerSlot& s = block->worker(i);
        const auto worker = static_cast<WorkerState>(s.state.load(std::memory_order_acquire));
        if ((worker == WorkerState::busy || worker == WorkerState::claiming ||
             worker == WorkerState::settling) &&
            s.job_id.load(std::memory_order_relaxed) == state.id &&
            s.chunk_first.load(std::memory_order_relaxed) +
                    s.progress.load(std::memory_order_acquire) / 2 < match)
          return false;  // items below the match still run there (or a death is unsettled)
      }
    }
    drain_rings(false);  // the failure records of items below the match
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

}  // namespace procshare::detail
