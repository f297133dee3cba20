// Internal: a pool job as the parent sees it: its state (JobState, ResultState), how it
// is started (JobSpec), and the job functions lib/pool.cpp implements for Pool, Future,
// Job and Stream.
#pragma once

#include <procshare/detail/pool_task.hpp>
#include <procshare/futex.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace procshare::detail {

// ---------------------------------------------------------------- the parent's side

// A job's state in the parent: counters, failures, and where results go.
struct PROCSHARE_API JobState {
  virtual ~JobState();
  // A variable-size result for `index` arrived.
  virtual void accept(std::uint64_t, Reader&) {}
  // A batch of `count` fixed-size results of `item` bytes each, for items first on.
  virtual void accept_batch(std::uint64_t first, const std::byte* data, std::size_t count,
                            std::size_t item) {
    for (std::size_t k = 0; k < count; ++k) {
      Reader r{data + k * item, data + (k + 1) * item};
      accept(first + k, r);
    }
  }
  // Whether the parent may take item `index`'s outcome out of a ring now (a stream's
  // back-pressure: see Stream).
  virtual bool admits(std::uint64_t) const { return true; }
  // The job is complete: copy fixed-size results out of `slots`.
  virtual void copy_fixed(const std::byte*) {}

  struct Failure {
    std::uint64_t index;
    bool died;            // WorkerDied rather than TaskError
    std::string type;     // exception type (TaskError)
    std::string message;  // what() (TaskError)
    int pid;
    int signal;
    int exit_status;
  };

  std::uint64_t id = 0;
  std::uint64_t total = 0;
  JobKind kind = JobKind::map;
  bool finished = false;           // every item settled and every result moved here
  bool stopped = false;            // the job's stop flag was raised, and items were dropped
  bool stop_raised = false;        // the job's stop flag was raised (even too late to drop any)
  bool cancelled = false;          // Future::cancel() took it before any worker did
  std::string closed;              // why the pool could not finish it ("" if it did)
  std::vector<Failure> failures;   // in arrival order
  // (worker pid, item) of each worker's last error record, and of each death's running
  // item: an item reported both ways fails once (see PoolCore::dispatch).
  std::vector<std::pair<int, std::uint64_t>> last_errors, death_items;
  std::optional<std::uint64_t> found;  // find_first's match
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ran;  // map: item ranges that ran
  bool taken = false;              // get() moved the results out
  std::uint64_t done = 0, failed = 0, skipped = 0;
  std::string segment;             // the pool's control segment, for messages

  // Throws what the job ended with, if not success: PoolClosed, the lowest-index failure
  // (below `limit`), or Stopped.
  void throw_if_failed(std::uint64_t limit = UINT64_MAX) const;
  // The exception a failure is reported as (TaskError or WorkerDied).
  std::exception_ptr failure_error(const Failure& failure) const;
  // Per item of an ended map job: how it ended, and its exception if it did not succeed
  // (the failure; for an item that never ran, Stopped or PoolClosed).
  struct ItemEnd {
    std::uint8_t state;  // ItemState
    std::exception_ptr error;
  };
  std::vector<ItemEnd> item_ends() const;
};

// A job to start, already serialized.
struct JobSpec {
  JobKind kind;
  ChunkFn run;
  AnyFunction function;
  std::span<const std::byte> items;          // fixed-size items, or serialized ones
  std::span<const std::uint64_t> item_offsets;
  std::span<const std::byte> args;
  std::uint64_t total;
  std::uint64_t result_slot_bytes;           // sizeof R when fixed, else 0
  std::uint64_t chunk;                       // 0: automatic
  std::uint64_t range_first = 0;             // a Range job: item k is range_first + k
};

class PoolCore;

// Progress of a job: items done, failed, skipped (stopped or above a find_first match),
// and the total. done + failed + skipped only grows, up to total.
struct Progress {
  std::uint64_t done;
  std::uint64_t failed;
  std::uint64_t skipped;
  std::uint64_t total;
};

PROCSHARE_API void start_job(PoolCore& core, const JobSpec& spec, const std::shared_ptr<JobState>& state);
// Throws PoolClosed if no job can start on the pool (closed, broken, or not this
// process's).
PROCSHARE_API void check_usable(PoolCore& core);
PROCSHARE_API bool wait_job(PoolCore& core, JobState& state, Deadline deadline);
// as_completed(): waits until one of `states` (jobs of this pool) ended, or `deadline`;
// returns its position, or states.size() at the deadline.
PROCSHARE_API std::size_t wait_any(PoolCore& core, std::span<JobState* const> states,
                                   Deadline deadline);
// Throws Timeout: as_completed() gave up after `waited` with `pending` futures left
// (`state` is one of them: it names the pool).
[[noreturn]] PROCSHARE_API void throw_completed_timeout(const JobState& state, std::size_t pending,
                                                        std::chrono::nanoseconds waited);
// A stream's next(): waits until `ready()` or the job ended, taking only the outcomes the
// stream admits out of the rings (and everything, should that leave nothing to take).
PROCSHARE_API void wait_stream(PoolCore& core, JobState& state, bool (*ready)(JobState&));
// find_first: waits until the match is final (every item below it settled) or the job
// ended; returns the match, or nullopt if there is none.
PROCSHARE_API std::optional<std::uint64_t> wait_first(PoolCore& core, JobState& state);
PROCSHARE_API void cancel_job(PoolCore& core, JobState& state);
// Raises the stop flag of the pool's job `job_id` (JobState::id) as stop_pool_jobs does,
// from any process that maps the pool (a cluster host's agent, forked from its parent):
// shared memory only, no lock; a job that ended already is left alone.
PROCSHARE_API void stop_local_job(PoolCore& core, std::uint64_t job_id);
// While the pool's job `job_id` still has items to settle, its items done so far (of its
// settled chunks); nothing once every item settled (or its slot went to a later job).
// Read as stop_local_job writes: from any process that maps the pool.
PROCSHARE_API std::optional<std::uint64_t> local_job_computing(PoolCore& core, std::uint64_t job_id);
// Future::cancel(): stops the job if no worker has claimed any of it; returns whether
// it did (or had already).
PROCSHARE_API bool cancel_unstarted(PoolCore& core, JobState& state);
// Throws InvalidArgument: Job::outcomes() or Job::get() (`call`) after get() moved the
// results out.
[[noreturn]] PROCSHARE_API void throw_results_taken(const JobState& state, const char* call);
// Throws Timeout: `call` (Future::get, Job::get) gave up after `waited`.
[[noreturn]] PROCSHARE_API void throw_job_timeout(const JobState& state, const char* call,
                                                  std::chrono::nanoseconds waited);
PROCSHARE_API Progress job_progress(PoolCore& core, JobState& state);
PROCSHARE_API unsigned pool_workers(const PoolCore& core);
// The bytes of the pool's arena (what a job's fixed-size items and results take room in).
PROCSHARE_API std::uint64_t pool_arena_bytes(const PoolCore& core);

// Serializes `args` as one tuple.
template <class... Args> std::vector<std::byte> pack_args(const Args&... args) {
  std::vector<std::byte> bytes;
  Writer w{bytes};
  Transport<std::tuple<Args...>>::write(w, std::tuple<Args...>(args...));
  return bytes;
}

// A task's result size when it travels in fixed-size slots (0: it does not).
template <class R> constexpr std::uint64_t fixed_size() {
  if constexpr (std::is_void_v<R>) return 0;
  else return Transport<R>::fixed ? sizeof(R) : 0;
}
// The task as a plain function, when it is one (a capture-less lambda is rebuilt from
// its type instead).
template <class F> AnyFunction function_of(F f) {
  if constexpr (std::is_pointer_v<F>) return reinterpret_cast<AnyFunction>(f);
  else return nullptr;
}

// Starts a job of kind Kind over `items` (range.hpp), `chunk` items at a time (0:
// automatic). results_in_slots: fixed-size map results go to shared slots, copied out at
// the end (a stream's go through the result rings, as they come).
template <JobKind Kind, class R, class I, class F, class... Args>
void start_items(PoolCore& core, std::uint64_t chunk, const I& items, F f,
                 const std::shared_ptr<JobState>& state, bool results_in_slots,
                 const Args&... args) {
  using T = typename ItemsOf<I>::job_type;
  const auto args_bytes = pack_args(args...);
  const std::uint64_t slot_bytes = Kind == JobKind::map && results_in_slots ? fixed_size<R>() : 0;
  const auto run = &run_chunk<Kind, F, T, R, Args...>;
  if constexpr (ItemsOf<I>::is_range) {
    const JobSpec spec{Kind,         run,        function_of(f), {}, {}, args_bytes,
                       items.size(), slot_bytes, chunk,          items.first};
    start_job(core, spec, state);
  } else {
    const std::span<const T> values = ItemsOf<I>::span(items);
    std::vector<std::byte> serialized;
    std::vector<std::uint64_t> offsets;
    std::span<const std::byte> item_bytes;
    if constexpr (Transport<T>::fixed) {
      item_bytes = std::as_bytes(values);
    } else {
      offsets.reserve(values.size());
      Writer w{serialized};
      for (const T& item : values) {
        offsets.push_back(serialized.size());
        Transport<T>::write(w, item);
      }
      item_bytes = serialized;
    }
    const JobSpec spec{Kind, run, function_of(f), item_bytes, offsets, args_bytes,
                       values.size(), slot_bytes, chunk};
    start_job(core, spec, state);
  }
}

template <class R> struct ResultState : JobState {
  static constexpr bool fixed = Transport<R>::fixed;
  std::vector<std::optional<R>> values;  // variable-size results, as they arrive
  std::vector<R> fixed_values;           // fixed-size results, copied in one block
  std::uint64_t count;
  explicit ResultState(std::uint64_t n) : values(fixed ? 0 : n), count(n) {}
  void accept(std::uint64_t index, Reader& r) override {
    if constexpr (!fixed)
      if (index < values.size()) values[index] = Transport<R>::read(r);
  }
  void copy_fixed(const std::byte* slots) override {
    if constexpr (std::is_same_v<R, bool>) {
      // std::vector<bool> packs its bits (no data()): one byte per slot, 0 or 1.
      fixed_values.resize(count);
      for (std::uint64_t i = 0; i < count; ++i) fixed_values[i] = slots[i] != std::byte{0};
    } else if constexpr (fixed) {
      fixed_values.resize(count);
      if (count) std::memcpy(static_cast<void*>(fixed_values.data()), slots, count * sizeof(R));
    }
  }
  // A copy of item `index`'s result, if it has one.
  std::optional<R> value_at(std::uint64_t index) const {
    if constexpr (fixed) {
      if (index < fixed_values.size()) return fixed_values[index];
      return std::nullopt;
    } else {
      return index < values.size() ? values[index] : std::nullopt;
    }
  }
  // The results in input order (moved out).
  std::vector<R> take() {
    taken = true;
    if constexpr (fixed) {
      return std::move(fixed_values);
    } else {
      std::vector<R> results;
      results.reserve(values.size());
      for (auto& v : values) results.push_back(std::move(*v));
      return results;
    }
  }
};
template <> struct ResultState<void> : JobState {
  explicit ResultState(std::uint64_t) {}
};

template <class R> struct OutcomeValue { std::optional<R> stored; };
template <> struct OutcomeValue<void> {};

}  // namespace procshare::detail
