// Pool: forked worker processes that run tasks, count progress, stop early and find
// first results (Python's multiprocessing.Pool and ProcessPoolExecutor, without their
// hangs).
//
// Processes: Pool() forks one single-threaded supervisor, which forks the workers (and a
//   replacement for each one that dies) and is the only process that reaps them. The
//   library starts no thread in your process. Workers and supervisor share a control
//   segment (named, see control_segment()) that procshare-ctl can attach to; they die
//   with your process (the supervisor watches it; workers die with the supervisor).
// What a task sees: workers are forks of your process as it was when the Pool was made,
//   plus every shared segment: memory changed later, or segments mapped later, are not
//   there (open those by name inside the task). So a task is a stateless callable -- a
//   function pointer or a capture-less lambda -- and its data travels in explicit
//   arguments and results that are transportable (see Transportable below). procshare
//   handles are transportable: hand a task a Value, Array, Flag or Queue as an argument.
// Sizes: results and exception messages of any size up to PoolOptions::arena_bytes
//   arrive whole (a large one streams through the worker's result ring in pieces). A
//   larger result fails its item with TaskError of type procshare::Error saying so; a
//   larger message is cut to its first 4 KiB, keeping the task's exception type.
// Failures: a task that throws fails its item with TaskError (index, exception type,
//   message, worker pid); a worker killed mid-task fails only the item it was running with
//   WorkerDied, and the rest of its chunk runs elsewhere; map() finishes every other item
//   and then throws the lowest-index failure. A stopped job throws Stopped. A pool that
//   cannot start (its initializer keeps failing) throws PoolClosed naming the reason.
// Waiting: no pool wait depends on a single wake-up, so a death (a worker's, the
//   supervisor's, or a controller's mid-stop) never leaves a process asleep: the parent
//   sleeps at most 50 ms between checks of its workers' rings and of the supervisor,
//   an idle worker at most 100 ms between looks for work, a worker with a full result
//   ring at most 50 ms, the supervisor polls its pidfds and commands every 100 ms, and
//   the pool's lock is waited for in slices that retry it (mutex.hpp). Every wake-up
//   is sent after the word the sleeper re-reads has moved.
// Threads: Pool() refuses (InvalidArgument) to fork a process that already runs other
//   threads, unless PoolOptions::allow_threads. A Pool, its Futures and Jobs may be used
//   from several threads of the creating process (calls are serialised).
// Errors: PoolClosed after close()/terminate(); InvalidArgument for bad options; the
//   task failures above.
#pragma once

#include <procshare/detail/pool_job.hpp>
#include <procshare/detail/pool_task.hpp>
#include <procshare/error.hpp>
#include <procshare/futex.hpp>
#include <procshare/range.hpp>
#include <procshare/segment.hpp>
#include <procshare/stream.hpp>
#include <procshare/transport.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace procshare {

// Options for Pool.
struct PoolOptions {
  // Worker processes; 0 means std::thread::hardware_concurrency().
  unsigned workers = 0;
  // Runs once in every worker, replacements included, before it takes work (Python's
  // initializer + initargs: capture what it needs; it runs in a fork made at Pool(), so
  // any capture works). If it throws, the worker exits; a pool whose workers keep failing
  // to start is broken (PoolClosed).
  std::function<void()> initializer{};
  // The control segment's name; "" means "procshare-pool-<pid>-<n>".
  std::string name{};
  // A worker exits and is replaced after this many tasks or chunks (0: never).
  std::uint64_t max_tasks_per_child = 0;
  // Fork even though the process runs other threads (only what fork() copies is safe).
  bool allow_threads = false;
  // Bytes of shared memory for jobs' items, arguments and fixed-size results (small
  // arguments and results travel in the job's own slot). /dev/shm memory is reserved as
  // jobs first use it, so an arena that is never filled costs nothing; a job that cannot
  // be reserved throws SegmentFull. Also the largest result or exception message a task
  // can send back (see Sizes at the top).
  std::size_t arena_bytes = 64u << 20;
};

// A fixed chunk size for one map/map_async/find_first call, given as its first argument:
//   pool.map(procshare::Chunk{1000}, items, f);
// Without it, chunks adapt to the work: they start at one item and grow while chunks take
// well under ~2 ms, so tiny items are cheap and progress shows within milliseconds.
struct Chunk {
  std::uint64_t items;  // items per chunk; 0: automatic
};

template <class R> class Completed;

// Future<R>: the result of Pool::submit, filled in as the parent collects results.
template <class R> class Future {
public:
  // Waits for the task and returns its result. Throws TaskError, WorkerDied, Stopped or
  // PoolClosed as the task ended.
  R get() {
    wait();
    state_->throw_if_failed();
    if constexpr (!std::is_void_v<R>) return std::move(state_->take().at(0));
  }
  // As get(), waiting at most `timeout`: throws Timeout if the task has not ended by then
  // (it goes on running; get() may be called again). Python's Future.result(timeout).
  template <class Rep, class Period> R get(const std::chrono::duration<Rep, Period>& timeout) {
    if (!wait_for(timeout))
      detail::throw_job_timeout(*state_, "Future::get", detail::waited_for(timeout));
    return get();
  }
  // Cancels the task if no worker has started it (Python's Future.cancel()): returns true,
  // and get() then throws Stopped ("cancelled"). Returns false if it runs or has ended.
  bool cancel() { return detail::cancel_unstarted(*core_, *state_); }
  // Whether cancel() took it before it started.
  bool cancelled() const noexcept { return state_->cancelled; }
  // Waits for the task; returns what get() would throw, or null if it succeeded (Python's
  // Future.exception()).
  std::exception_ptr exception() {
    wait();
    try {
      state_->throw_if_failed();
    } catch (...) {
      return std::current_exception();
    }
    return nullptr;
  }
  // Waits for the task to end.
  void wait() { detail::wait_job(*core_, *state_, detail::no_deadline); }
  // Waits at most `timeout`; returns whether it has ended.
  template <class Rep, class Period> bool wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    return detail::wait_job(*core_, *state_, detail::deadline_after(timeout));
  }
  // Whether it has ended (collects finished results first; never blocks).
  bool ready() { return detail::wait_job(*core_, *state_, std::chrono::steady_clock::now()); }

private:
  friend class Pool;
  template <class> friend class Completed;
  Future(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::ResultState<R>> state)
      : core_(std::move(core)), state_(std::move(state)) {}
  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<detail::ResultState<R>> state_;
};

// Job<R>: a running map_async, with progress and cancellation.
template <class R> class Job {
public:
  using Progress = detail::Progress;
  // Items done, failed and skipped so far, and the total.
  Progress progress() { return detail::job_progress(*core_, *state_); }
  // Waits at most `timeout` for the job to end; returns whether it has.
  template <class Rep, class Period> bool wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    return detail::wait_job(*core_, *state_, detail::deadline_after(timeout));
  }
  // Waits for the job; returns the results in input order (moved out: a second get()
  // throws InvalidArgument). Throws the lowest-index TaskError or WorkerDied after every
  // other item ran, Stopped if it was stopped, PoolClosed if the pool was terminated.
  auto get() {
    detail::wait_job(*core_, *state_, detail::no_deadline);
    state_->throw_if_failed();
    if constexpr (!std::is_void_v<R>) {
      if (state_->taken) detail::throw_results_taken(*state_, "get()");
      return state_->take();
    }
  }
  // As get(), waiting at most `timeout`: throws Timeout if the job has not ended by then
  // (it goes on running; get() may be called again). Python's AsyncResult.get(timeout).
  template <class Rep, class Period> auto get(const std::chrono::duration<Rep, Period>& timeout) {
    if (!wait_for(timeout))
      detail::throw_job_timeout(*state_, "Job::get", detail::waited_for(timeout));
    return get();
  }
  // Raises the job's stop flag: unstarted items are dropped; get() throws Stopped.
  void cancel() { detail::cancel_job(*core_, *state_); }
  // Waits for the job; then, for every item in input order, how it ended: its result,
  // its failure, or that it never ran (Python: a future per item). The good results of
  // a failed or stopped job are not lost: call it after get() threw, or instead of
  // get(). After get() returned the results (moving them out), it throws InvalidArgument.
  std::vector<Outcome<R>> outcomes() {
    detail::wait_job(*core_, *state_, detail::no_deadline);
    if (state_->taken) detail::throw_results_taken(*state_, "outcomes()");
    const auto ends = state_->item_ends();
    std::vector<Outcome<R>> result(ends.size());
    for (std::size_t i = 0; i < ends.size(); ++i) {
      Outcome<R>& o = result[i];
      o.index_ = i;
      o.state_ = static_cast<ItemState>(ends[i].state);
      o.error_ = ends[i].error;
      if constexpr (!std::is_void_v<R>)
        if (o.state_ == ItemState::done) o.stored = state_->value_at(i);
    }
    return result;
  }
  // The job's id in the pool's control segment (what inspect_pool() lists).
  std::uint64_t id() const noexcept { return state_->id; }

private:
  friend class Pool;
  Job(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::ResultState<R>> state)
      : core_(std::move(core)), state_(std::move(state)) {}
  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<detail::ResultState<R>> state_;
};

// What a controller sees of a running pool, read from its control segment.
struct PoolStatus {
  struct Worker {
    int pid;                     // 0 before its first start
    std::string state;           // "starting", "idle", "busy", "exited"
    std::uint64_t job;           // the job it works on (0: none)
    std::uint64_t current_item;  // the item it runs or will run next
    std::uint64_t tasks_done;    // chunks and tasks completed
  };
  struct Job {
    std::uint64_t id;
    std::string kind;  // "submit", "map", "find_first"
    std::uint64_t done, failed, skipped, total;
    bool stop_requested;
  };
  int parent_pid;
  int supervisor_pid;
  std::string state;          // "running", "closing", "terminating", "broken"
  std::uint64_t items_done;   // over all jobs so far
  std::uint32_t worker_deaths;
  std::vector<Worker> workers;
  std::vector<Job> jobs;      // jobs in progress
};

// Reads the pool in control segment `segment` (from any process: opened by name, e.g.
// by procshare-ctl). Lock-free reads: counters may be a moment apart, never torn.
// Throws NotFound if the segment holds no pool (naming the control segments of the pools
// its creator made, see pools_of_creator), CorruptSegment if its tables do not fit.
PROCSHARE_API PoolStatus inspect_pool(Segment& segment);
// Raises the stop flag of job `job_id` in that pool, or of every job if 0 (a
// controller's early stop); returns how many jobs it stopped. Throws as inspect_pool.
PROCSHARE_API std::size_t stop_pool_jobs(Segment& segment, std::uint64_t job_id = 0);
// The names of the pools' control segments in /dev/shm made by the process that made
// `segment` (the same creator pid), in name order, `segment` itself left out: how a
// controller given a job's data segment finds the pool that works on it. Reads headers
// only (Segment::list); never throws for a file.
PROCSHARE_API std::vector<std::string> pools_of_creator(const Segment& segment);

// Inside a task: whether the job it belongs to was asked to stop (cancel(), a
// controller, or request_stop()), or, in find_first, whether an item below this one has
// matched already (its result can no longer matter). Cheap: a few loads. Outside a
// task: false.
PROCSHARE_API bool stop_requested() noexcept;
// Inside a task: stops the job it belongs to, as cancel() would. Outside a task: no-op.
PROCSHARE_API void request_stop() noexcept;

class Pool;
namespace detail {
// For layers built on Pool (the cluster's hosts run their chunks as local jobs): the
// pool's core, to start jobs and wait for them through the detail job functions.
struct PoolAccess {
  static const std::shared_ptr<PoolCore>& core(const Pool& pool);
};
}  // namespace detail

// Pool: see the top of this file.
class PROCSHARE_API Pool {
public:
  // Starts the supervisor and the workers. Throws InvalidArgument (bad options, or other
  // threads running without allow_threads), the Segment errors for the control segment.
  explicit Pool(PoolOptions options = {});
  // Waits for submitted work and stops the workers (close() + join()), in the creating
  // process only; a forked copy does nothing. Never throws.
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Runs f(args...) in a worker. Throws PoolClosed after close(). Any number of futures
  // may be outstanding; the pool holds 1,024 jobs (submits, maps, find_firsts) in flight,
  // so a call waits, collecting results, while the job 1,024 calls before it still runs.
  template <class F, class... Args>
  auto submit(F f, const Args&... args) {
    using R = std::invoke_result_t<F, const Args&...>;
    static_assert(detail::check_stateless<F>() && (detail::check_transportable<Args>() && ...));
    static_assert(detail::check_result<R>());
    if constexpr (detail::task_fits_v<F, R, Args...>) {
      const auto args_bytes = detail::pack_args(args...);
      auto state = std::make_shared<detail::ResultState<R>>(1);
      detail::JobSpec spec{detail::JobKind::submit,
                           &detail::run_chunk<detail::JobKind::submit, F, void, R, Args...>,
                           detail::function_of(f), {}, {}, args_bytes, 1, detail::fixed_size<R>(), 1};
      // (a submit is a job of one item)
      detail::start_job(*core_, spec, state);
      return Future<R>(core_, std::move(state));
    } else {
      return Future<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }

  // Applies f(item, args...) to every item, in parallel; results in input order. The
  // items (see Items, range.hpp) are a contiguous range of values (a vector, array,
  // span...) or a Range of indices, whose task gets each index as a std::uint64_t and
  // for which nothing is allocated per item (map's results aside). Throws the lowest-index
  // TaskError / WorkerDied once every other item has run; Stopped; PoolClosed. With a
  // Chunk first, `chunk.items` items go to a worker at a time (Chunk{0}: automatic).
  template <Items I, class F, class... Args>
  auto map(const I& items, F f, const Args&... args) {
    return map(Chunk{0}, items, f, args...);
  }
  template <Items I, class F, class... Args>
  auto map(Chunk chunk, const I& items, F f, const Args&... args) {
    using R = detail::task_result_t<I, F, Args...>;
    if constexpr (detail::items_fit_v<I, F, R, Args...>) {
      return map_async(chunk, items, f, args...).get();
    } else {
      map_async(chunk, items, f, args...);  // (never built: for its one compile-time error)
      if constexpr (!std::is_void_v<R>) return std::vector<R>{};
    }
  }
  // As map(), without waiting: a Job to watch, cancel and get() later.
  template <Items I, class F, class... Args>
  auto map_async(const I& items, F f, const Args&... args) {
    return map_async(Chunk{0}, items, f, args...);
  }
  template <Items I, class F, class... Args>
  auto map_async(Chunk chunk, const I& items, F f, const Args&... args) {
    using R = detail::task_result_t<I, F, Args...>;
    static_assert(detail::check_items<I, F, Args...>());
    static_assert(detail::check_result<R>());
    if constexpr (detail::items_fit_v<I, F, R, Args...>) {
      auto state = std::make_shared<detail::ResultState<R>>(detail::ItemsOf<I>::size(items));
      detail::start_items<detail::JobKind::map, R>(*core_, chunk.items, items, f, state, true, args...);
      return Job<R>(core_, std::move(state));
    } else {
      return Job<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }

  // The lowest position whose item satisfies pred(item, args...), with the item (for a
  // Range, the index), or nullopt. The same answer every run: items are claimed in
  // ascending order, items above the best match so far are skipped, items below it never
  // are. Returns as soon as every item below the match has settled: tasks still running
  // above it see stop_requested() and end in the background (the pool waits for them
  // before it closes). Throws the TaskError or WorkerDied of an item below the match.
  template <Items I, class F, class... Args>
  std::optional<std::pair<std::size_t, typename detail::ItemsOf<I>::value>>
  find_first(const I& items, F pred, const Args&... args) {
    using R = detail::task_result_t<I, F, Args...>;
    static_assert(std::is_convertible_v<R, bool>, "procshare::Pool::find_first: pred must return bool");
    static_assert(detail::check_items<I, F, Args...>());
    if constexpr (detail::items_fit_v<I, F, void, Args...> && std::is_convertible_v<R, bool>) {
      auto state = std::make_shared<detail::ResultState<void>>(detail::ItemsOf<I>::size(items));
      detail::start_items<detail::JobKind::find_first, void>(*core_, 0, items, pred, state, true,
                                                            args...);
      const std::optional<std::uint64_t> match = detail::wait_first(*core_, *state);
      state->throw_if_failed(match.value_or(UINT64_MAX));
      if (!match) return std::nullopt;
      return std::pair(static_cast<std::size_t>(*match), detail::ItemsOf<I>::at(items, *match));
    } else {
      return std::nullopt;
    }
  }

  // Streams (Python's imap, imap_unordered, as_completed): f(item, args...) over the
  // items, the outcomes yielded as they come, in input order (imap) or in completion
  // order (imap_unordered); see Stream. The task must return a value.
  template <Items I, class F, class... Args>
  auto imap(const I& items, F f, const Args&... args) {
    return stream(true, items, f, args...);
  }
  template <Items I, class F, class... Args>
  auto imap_unordered(const I& items, F f, const Args&... args) {
    return stream(false, items, f, args...);
  }

  // No new work; what was submitted still runs.
  void close();
  // After close(): waits for all work and for every worker and the supervisor to exit.
  void join();
  // Kills every worker and the supervisor now (within a second); pending futures and
  // jobs fail with PoolClosed.
  void terminate();
  // How many workers the pool keeps running.
  unsigned workers() const;
  // The pids of the workers running now.
  std::vector<int> worker_pids() const;
  // The supervisor's pid.
  int supervisor_pid() const;
  // The name of the control segment a controller can attach to.
  std::string control_segment() const;

private:
  friend struct detail::PoolAccess;
  // How many outcomes a stream's parent side holds (see Stream).
  static constexpr std::size_t stream_buffer = 1024;
  template <class I, class F, class... Args>
  auto stream(bool ordered, const I& items, F f, const Args&... args) {
    using R = detail::task_result_t<I, F, Args...>;
    static_assert(!std::is_void_v<R>, "procshare::Pool::imap: the task must return a value "
                                      "(use map_async for tasks that return nothing)");
    static_assert(detail::check_items<I, F, Args...>());
    static_assert(detail::check_result<R>());
    if constexpr (detail::items_fit_v<I, F, R, Args...> && !std::is_void_v<R>) {
      auto state = std::make_shared<detail::StreamState<R>>(ordered, stream_buffer);
      detail::start_items<detail::JobKind::map, R>(*core_, 0, items, f, state, false, args...);
      return Stream<R>(core_, std::move(state));
    } else {
      return Stream<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }

  std::shared_ptr<detail::PoolCore> core_;
};

inline const std::shared_ptr<detail::PoolCore>& detail::PoolAccess::core(const Pool& pool) {
  return pool.core_;
}

}  // namespace procshare
