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

#include <procshare/error.hpp>
#include <procshare/futex.hpp>
#include <procshare/segment.hpp>
#include <procshare/transport.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace procshare {

// The indices [first, end) as the items of map, map_async and find_first (Python's
// range(first, end)): the task receives each index as a std::uint64_t. Nothing is made
// per item: find_first over Range{0, 1'000'000'000} uses the same memory as over ten.
struct Range {
  std::uint64_t first = 0;
  std::uint64_t end = 0;
  // How many indices (0 if end <= first).
  constexpr std::uint64_t size() const noexcept { return end > first ? end - first : 0; }
};

namespace detail {

template <class F> consteval bool check_stateless() {
  static_assert(std::is_empty_v<F> || std::is_pointer_v<F>,
                "procshare::Pool: a task must be a function pointer or a capture-less lambda: "
                "a worker runs it in another process, where captured state would not exist. "
                "Pass data as explicit arguments instead");
  return true;
}

// Whether task F, with items and arguments Ts and result R, passes check_stateless and
// check_transportable: the pool's calls compile their bodies only then, so that a failed
// check is the only error the compiler reports.
template <class F, class R, class... Ts>
inline constexpr bool task_fits_v = (std::is_empty_v<F> || std::is_pointer_v<F>) &&
                                    (Transportable<Ts> && ...) &&
                                    (std::is_void_v<R> || Transportable<R>);

// ---------------------------------------------------------------- running tasks

using AnyFunction = void (*)();

struct ChunkContext;

// What the worker loop (lib/) offers a running chunk for the rare events.
struct ChunkOps {
  // A variable-size result for `index`.
  void (*emit)(ChunkContext&, std::uint64_t index, const std::byte* data, std::size_t size);
  // Item `index` threw an exception of (mangled) type `type` with `message`.
  void (*fail)(ChunkContext&, std::uint64_t index, const char* type, const char* message);
  // find_first: item `index` matched.
  void (*found)(ChunkContext&, std::uint64_t index);
  // A stream's fixed-size result for `index`, held back to be sent in a batch.
  void (*batch)(ChunkContext&, std::uint64_t index, const void* data, std::size_t size);
  // Sends the held-back results; the items before `covered` need no more (they are over
  // and were not batched: failed, skipped).
  void (*flush)(ChunkContext&, std::uint64_t covered);
};

// One claimed range of one job, as a worker runs it. Per item, run_chunk publishes its
// progress with one store into the worker's own slot: 2i+1 while item first+i runs, 2i+2
// once it is over, so a supervisor settling a death knows exactly which item was cut.
struct ChunkContext {
  const ChunkOps* ops;
  void* worker;                        // the worker loop's own state
  AnyFunction function;                // the task, when it is a function pointer
  const std::byte* items;              // fixed-size items, or serialized ones
  const std::uint64_t* item_offsets;   // offsets of serialized items (null when fixed)
  std::uint64_t items_size;            // bytes at `items`
  const std::byte* args;               // the serialized argument tuple
  std::uint64_t args_size;
  std::byte* results;                  // fixed-size result slots (null when variable)
  std::uint64_t first;                 // the range [first, end)
  std::uint64_t end;
  std::atomic<std::uint64_t>* progress;       // the worker slot's progress word
  std::atomic<std::uint64_t>* skipped;        // the worker slot's skipped count
  const std::atomic<std::uint32_t>* stop;     // the job's stop flag
  const std::atomic<std::uint64_t>* best;     // find_first's best match so far
  std::uint64_t range_first;                  // a Range job: item k is range_first + k
};

using ChunkFn = void (*)(ChunkContext&);

template <class F, class... A> decltype(auto) call_task(AnyFunction function, A&&... a) {
  if constexpr (std::is_pointer_v<F>)
    return reinterpret_cast<F>(function)(std::forward<A>(a)...);
  else
    return F{}(std::forward<A>(a)...);
}

// The item type a task receives for items of type T (a Range's are indices).
template <class T> using item_t = std::conditional_t<std::is_same_v<T, Range>, std::uint64_t, T>;

template <class T> item_t<T> read_item(const ChunkContext& c, std::uint64_t index) {
  if constexpr (std::is_same_v<T, Range>) {
    return c.range_first + index;
  } else if constexpr (Transport<T>::fixed) {
    T item;
    std::memcpy(&item, c.items + index * sizeof(T), sizeof(T));
    return item;
  } else {
    Reader r{c.items + c.item_offsets[index], c.items + c.items_size};
    return Transport<T>::read(r);
  }
}

template <class R> void store_result(ChunkContext& c, std::uint64_t index, const R& value) {
  if constexpr (Transport<R>::fixed) {
    if (c.results != nullptr)
      std::memcpy(c.results + index * sizeof(R), &value, sizeof(R));
    else  // a stream: sent in batches
      c.ops->batch(c, index, &value, sizeof(R));
  } else {
    std::vector<std::byte> bytes;
    Writer w{bytes};
    Transport<R>::write(w, value);
    c.ops->emit(c, index, bytes.data(), bytes.size());
  }
}

enum class JobKind : std::uint32_t { submit = 1, map = 2, find_first = 3 };

// Runs one chunk of a job: submit (T = void: no item), map, or find_first (R = bool
// from the predicate).
template <JobKind Kind, class F, class T, class R, class... Args>
void run_chunk(ChunkContext& c) {
  // The arguments are read inside the first item's try, so that a user's transport<T>::read
  // that throws fails items (each with its exception) rather than the worker.
  std::optional<std::tuple<Args...>> args;
  std::uint64_t skipped = 0;
  for (std::uint64_t k = c.first; k < c.end; ++k) {
    const std::uint64_t step = 2 * (k - c.first);
    if (c.stop->load(std::memory_order_relaxed) != 0 || k > c.best->load(std::memory_order_relaxed)) {
      // The rest of the chunk is stopped, or above the match, too (stop is never lowered,
      // best never raised): skip it at once.
      c.ops->flush(c, c.end);
      skipped += c.end - k;
      c.skipped->store(skipped, std::memory_order_relaxed);
      c.progress->store(2 * (c.end - c.first), std::memory_order_release);
      break;
    }
    c.progress->store(step + 1, std::memory_order_release);  // item k runs
    try {
      if (!args) {
        Reader args_reader{c.args, c.args + c.args_size};
        args.emplace(Transport<std::tuple<Args...>>::read(args_reader));
      }
      auto call = [&](auto&&... item) -> decltype(auto) {
        return std::apply(
            [&](auto&... a) -> decltype(auto) { return call_task<F>(c.function, item..., a...); },
            *args);
      };
      if constexpr (Kind == JobKind::submit) {
        if constexpr (std::is_void_v<R>)
          call();
        else
          store_result<R>(c, 0, call());
      } else if constexpr (Kind == JobKind::map) {
        if constexpr (std::is_void_v<R>)
          call(read_item<T>(c, k));
        else
          store_result<R>(c, k, call(read_item<T>(c, k)));
      } else {
        if (call(read_item<T>(c, k))) c.ops->found(c, k);
      }
    } catch (const std::exception& e) {
      c.ops->fail(c, k, typeid(e).name(), e.what());
    } catch (...) {
      c.ops->fail(c, k, "", "an exception not derived from std::exception");
    }
    c.progress->store(step + 2, std::memory_order_release);  // item k is over
  }
}

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
  bool stopped = false;            // the job's stop flag was raised
  bool cancelled = false;          // Future::cancel() took it before any worker did
  std::string closed;              // why the pool could not finish it ("" if it did)
  std::vector<Failure> failures;   // in arrival order
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
PROCSHARE_API bool wait_job(PoolCore& core, JobState& state, Deadline deadline);
// A stream's next(): waits until `ready()` or the job ended, taking only the outcomes the
// stream admits out of the rings (and everything, should that leave nothing to take).
PROCSHARE_API void wait_stream(PoolCore& core, JobState& state, bool (*ready)(JobState&));
// find_first: waits until the match is final (every item below it settled) or the job
// ended; returns the match, or nullopt if there is none.
PROCSHARE_API std::optional<std::uint64_t> wait_first(PoolCore& core, JobState& state);
PROCSHARE_API void cancel_job(PoolCore& core, JobState& state);
// Future::cancel(): stops the job if no worker has claimed any of it; returns whether
// it did (or had already).
PROCSHARE_API bool cancel_unstarted(PoolCore& core, JobState& state);
// Throws InvalidArgument: Job::outcomes() after get() moved the results out.
[[noreturn]] PROCSHARE_API void throw_results_taken(const JobState& state);
// Throws Timeout: `call` (Future::get, Job::get) gave up after `waited`.
[[noreturn]] PROCSHARE_API void throw_job_timeout(const JobState& state, const char* call,
                                                  std::chrono::nanoseconds waited);
PROCSHARE_API Progress job_progress(PoolCore& core, JobState& state);
PROCSHARE_API unsigned pool_workers(const PoolCore& core);

// Serializes `args` as one tuple.
template <class... Args> std::vector<std::byte> pack_args(const Args&... args) {
  std::vector<std::byte> bytes;
  Writer w{bytes};
  Transport<std::tuple<Args...>>::write(w, std::tuple<Args...>(args...));
  return bytes;
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

}  // namespace detail

namespace detail {
template <class R> struct StreamState;
}  // namespace detail

// How an item of a job ended.
enum class ItemState : std::uint8_t {
  done,     // its task returned
  failed,   // its task threw (TaskError) or its worker died running it (WorkerDied)
  skipped,  // it never ran: the job was stopped (Stopped) or the pool ended (PoolClosed)
};

// What became of one item of a map job (Python: one future per item); see
// Job::outcomes(). Its value() is the result or throws what the item ended with.
template <class R> class Outcome : private detail::OutcomeValue<R> {
public:
  // The item's position in the job's input.
  std::size_t index() const noexcept { return index_; }
  ItemState state() const noexcept { return state_; }
  // Whether its task returned.
  bool ok() const noexcept { return state_ == ItemState::done; }
  // The result. Throws TaskError or WorkerDied (failed), Stopped or PoolClosed (skipped).
  template <class U = R>
    requires(!std::is_void_v<U>)
  const U& value() const {
    if (error_) std::rethrow_exception(error_);
    return *this->stored;
  }
  // What value() would throw; null if the task returned.
  std::exception_ptr error() const noexcept { return error_; }

private:
  template <class> friend class Job;
  template <class> friend struct detail::StreamState;
  std::size_t index_ = 0;
  ItemState state_ = ItemState::done;
  std::exception_ptr error_;
};

namespace detail {

// A stream's state in the parent: outcomes as they arrive, in a buffer of at most
// `limit`; the rest wait in the workers' rings, and workers whose ring is full wait for
// room (back-pressure).
template <class R> struct StreamState : JobState {
  bool ordered;
  std::size_t limit;
  std::uint64_t next = 0;                        // ordered: the index to yield next
  std::map<std::uint64_t, Outcome<R>> waiting;   // ordered: arrived, by index
  std::deque<Outcome<R>> arrived;                // unordered: in arrival order
  std::size_t failures_seen = 0;                 // failures turned into outcomes

  StreamState(bool ordered_, std::size_t limit_) : ordered(ordered_), limit(limit_) {}
  std::size_t buffered() const { return ordered ? waiting.size() : arrived.size(); }
  // Unordered: while fewer than `limit` wait. Ordered: the `limit` indices from `next`
  // on (so the one it waits for always, and its successors in bulk).
  bool admits(std::uint64_t index) const override {
    return ordered ? index < next + limit : buffered() < limit;
  }
  void put(Outcome<R>&& o) {
    if (ordered)
      waiting.emplace(o.index_, std::move(o));
    else
      arrived.push_back(std::move(o));
  }
  void accept(std::uint64_t index, Reader& r) override {
    Outcome<R> o;
    o.index_ = index;
    o.stored = Transport<R>::read(r);
    put(std::move(o));
  }
  void accept_batch(std::uint64_t first, const std::byte* data, std::size_t count,
                    std::size_t item) override {
    if constexpr (Transport<R>::fixed && !std::is_same_v<R, bool>) {
      if (item == sizeof(R)) {
        for (std::size_t k = 0; k < count; ++k) {
          Outcome<R> o;
          o.index_ = first + k;
          o.stored.emplace();
          std::memcpy(static_cast<void*>(&*o.stored), data + k * item, sizeof(R));
          put(std::move(o));
        }
        return;
      }
    }
    JobState::accept_batch(first, data, count, item);
  }
  // Failures (task errors, deaths) become outcomes too.
  void absorb() {
    for (; failures_seen < failures.size(); ++failures_seen) {
      Outcome<R> o;
      o.index_ = failures[failures_seen].index;
      o.state_ = ItemState::failed;
      o.error_ = failure_error(failures[failures_seen]);
      put(std::move(o));
    }
  }
  // Whether take() has an outcome for the caller now. Once the job ended, an ordered
  // stream skips the items that never ran.
  bool has_next() {
    absorb();
    if (!ordered) return !arrived.empty();
    return waiting.count(next) != 0 || (finished && !waiting.empty());
  }
  static bool ready(JobState& state) { return static_cast<StreamState&>(state).has_next(); }
  std::optional<Outcome<R>> take() {
    if (!has_next()) return std::nullopt;
    if (!ordered) {
      Outcome<R> o = std::move(arrived.front());
      arrived.pop_front();
      return o;
    }
    auto it = waiting.find(next);
    if (it == waiting.end()) it = waiting.begin();  // (ended: past items that never ran)
    Outcome<R> o = std::move(it->second);
    waiting.erase(it);
    next = o.index_ + 1;
    return o;
  }
};

}  // namespace detail

// Stream<R>: the outcomes of a streaming job (Pool::imap, Pool::imap_unordered) as they
// come, in input order or in completion order (Python's imap, imap_unordered and
// concurrent.futures.as_completed). Iterate it with a range-for: each element is an
// Outcome<R> (index, value() or the item's failure), so a failed item does not end the
// loop. The parent holds at most about 1,024 outcomes (the rest wait in the workers'
// result rings, and the workers wait when those are full): memory stays bounded however
// many items there are. Leaving the loop early, or destroying the stream, cancels the
// job. An ordered stream waiting for a slow item holds back its successors: in the rare
// case that this would stall (a dead worker's items rerun behind others), it takes them
// all. Not for tasks that return nothing (use map_async). Move-only.
template <class R> class Stream {
public:
  Stream(Stream&& other) noexcept = default;
  Stream& operator=(Stream&&) = delete;
  ~Stream() {
    if (state_ && !state_->finished) {
      try {
        detail::cancel_job(*core_, *state_);
      } catch (...) {  // (a pool that ended has nothing left to stop)
      }
    }
  }

  // The next outcome, waiting for it; nullopt once every item that ran was yielded (see
  // stopped()). Throws PoolClosed if the pool ended first.
  std::optional<Outcome<R>> next() {
    if (auto o = state_->take()) return o;  // (the rings are read once the buffer is empty)
    detail::wait_stream(*core_, *state_, &detail::StreamState<R>::ready);
    if (auto o = state_->take()) return o;
    if (!state_->closed.empty()) throw PoolClosed(state_->segment, "pool", state_->closed);
    return std::nullopt;
  }

  class iterator {
  public:
    using value_type = Outcome<R>;
    using difference_type = std::ptrdiff_t;
    const Outcome<R>& operator*() const { return *current_; }
    const Outcome<R>* operator->() const { return &*current_; }
    iterator& operator++() {
      current_ = stream_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& i, std::default_sentinel_t) { return !i.current_; }

  private:
    friend class Stream;
    explicit iterator(Stream* stream) : stream_(stream), current_(stream->next()) {}
    Stream* stream_;
    std::optional<Outcome<R>> current_;
  };
  // Starts the iteration (waits for the first outcome).
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

  // Stops the job: items not started never run; the stream yields what had arrived.
  void cancel() { detail::cancel_job(*core_, *state_); }
  // Items done, failed and skipped so far, and the total.
  detail::Progress progress() { return detail::job_progress(*core_, *state_); }
  // After the end: whether the job was stopped, so that some items never ran.
  bool stopped() const noexcept { return state_->stopped; }
  // The job's id in the pool's control segment.
  std::uint64_t id() const noexcept { return state_->id; }

private:
  friend class Pool;
  Stream(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::StreamState<R>> state)
      : core_(std::move(core)), state_(std::move(state)) {}
  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<detail::StreamState<R>> state_;
};

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
      detail::throw_job_timeout(*state_, "Future::get",
                                std::chrono::duration_cast<std::chrono::nanoseconds>(timeout));
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
  // Waits for the job; returns the results in input order. Throws the lowest-index
  // TaskError or WorkerDied after every other item ran, Stopped if it was stopped,
  // PoolClosed if the pool was terminated.
  auto get() {
    detail::wait_job(*core_, *state_, detail::no_deadline);
    state_->throw_if_failed();
    if constexpr (!std::is_void_v<R>) return state_->take();
  }
  // As get(), waiting at most `timeout`: throws Timeout if the job has not ended by then
  // (it goes on running; get() may be called again). Python's AsyncResult.get(timeout).
  template <class Rep, class Period> auto get(const std::chrono::duration<Rep, Period>& timeout) {
    if (!wait_for(timeout))
      detail::throw_job_timeout(*state_, "Job::get",
                                std::chrono::duration_cast<std::chrono::nanoseconds>(timeout));
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
    if (state_->taken) detail::throw_results_taken(*state_);
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
                           function_of(f), {}, {}, args_bytes, 1, fixed_size<R>(), 1};
      // (a submit is a job of one item)
      detail::start_job(*core_, spec, state);
      return Future<R>(core_, std::move(state));
    } else {
      return Future<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }

  // Applies f(item, args...) to every item, in parallel; results in input order. Throws
  // the lowest-index TaskError / WorkerDied once every other item has run; Stopped;
  // PoolClosed. `chunk` items go to a worker at a time (0: automatic).
  template <class T, class F, class... Args>
  auto map(std::span<const T> items, F f, const Args&... args) {
    return map(Chunk{0}, items, f, args...);
  }
  template <class T, class F, class... Args>
  auto map(const std::vector<T>& items, F f, const Args&... args) {
    return map(std::span<const T>(items), f, args...);
  }
  // As map(), without waiting: a Job to watch, cancel and get() later.
  template <class T, class F, class... Args>
  auto map_async(std::span<const T> items, F f, const Args&... args) {
    return map_async(Chunk{0}, items, f, args...);
  }
  template <class T, class F, class... Args>
  auto map_async(const std::vector<T>& items, F f, const Args&... args) {
    return map_async(Chunk{0}, std::span<const T>(items), f, args...);
  }
  // map and map_async with a fixed chunk size (see Chunk; Chunk{0} is automatic).
  template <class T, class F, class... Args>
  auto map_async(Chunk chunk, std::span<const T> items, F f, const Args&... args) {
    using R = std::invoke_result_t<F, const T&, const Args&...>;
    static_assert(detail::check_stateless<F>() && detail::check_transportable<T>() &&
                  (detail::check_transportable<Args>() && ...));
    static_assert(detail::check_result<R>());
    if constexpr (detail::task_fits_v<F, R, T, Args...>) {
      auto state = std::make_shared<detail::ResultState<R>>(items.size());
      start_items<detail::JobKind::map, T, R, F, Args...>(chunk, items, f, state, args...);
      return Job<R>(core_, std::move(state));
    } else {
      return Job<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }
  template <class T, class F, class... Args>
  auto map_async(Chunk chunk, const std::vector<T>& items, F f, const Args&... args) {
    return map_async(chunk, std::span<const T>(items), f, args...);
  }
  template <class T, class F, class... Args>
  auto map(Chunk chunk, std::span<const T> items, F f, const Args&... args) {
    using R = std::invoke_result_t<F, const T&, const Args&...>;
    if constexpr (detail::task_fits_v<F, R, T, Args...>) {
      return map_async(chunk, items, f, args...).get();
    } else {
      map_async(chunk, items, f, args...);  // (never built: for its one compile-time error)
      if constexpr (!std::is_void_v<R>) return std::vector<R>{};
    }
  }
  template <class T, class F, class... Args>
  auto map(Chunk chunk, const std::vector<T>& items, F f, const Args&... args) {
    return map(chunk, std::span<const T>(items), f, args...);
  }

  // The lowest index whose item satisfies pred(item, args...), with the item, or nullopt.
  // The same answer every run: items are claimed in ascending order, items above the
  // best match so far are skipped, items below it never are. Returns as soon as every
  // item below the match has settled: tasks still running above it see stop_requested()
  // and end in the background (the pool waits for them before it closes). Throws the
  // TaskError or WorkerDied of an item below the match.
  template <class T, class F, class... Args>
  std::optional<std::pair<std::size_t, T>> find_first(std::span<const T> items, F pred,
                                                      const Args&... args) {
    using R = std::invoke_result_t<F, const T&, const Args&...>;
    static_assert(std::is_convertible_v<R, bool>, "procshare::Pool::find_first: pred must return bool");
    static_assert(detail::check_stateless<F>() && detail::check_transportable<T>() &&
                  (detail::check_transportable<Args>() && ...));
    if constexpr (detail::task_fits_v<F, void, T, Args...> && std::is_convertible_v<R, bool>) {
      auto state = std::make_shared<detail::ResultState<void>>(items.size());
      start_items<detail::JobKind::find_first, T, void, F, Args...>(Chunk{0}, items, pred, state, args...);
      const std::optional<std::uint64_t> match = detail::wait_first(*core_, *state);
      state->throw_if_failed(match.value_or(UINT64_MAX));
      if (!match) return std::nullopt;
      return std::pair<std::size_t, T>(*match, items[*match]);
    } else {
      return std::nullopt;
    }
  }
  template <class T, class F, class... Args>
  std::optional<std::pair<std::size_t, T>> find_first(const std::vector<T>& items, F pred,
                                                      const Args&... args) {
    return find_first(std::span<const T>(items), pred, args...);
  }

  // map, map_async and find_first over a Range of indices: f(index, args...) gets each
  // index as a std::uint64_t, and nothing is allocated per item (map's results aside).
  // find_first returns the position in the range and the index itself.
  template <class F, class... Args>
  auto map_async(Chunk chunk, Range range, F f, const Args&... args) {
    using R = std::invoke_result_t<F, std::uint64_t, const Args&...>;
    static_assert(detail::check_stateless<F>() && (detail::check_transportable<Args>() && ...));
    static_assert(detail::check_result<R>());
    if constexpr (detail::task_fits_v<F, R, Args...>) {
      auto state = std::make_shared<detail::ResultState<R>>(range.size());
      start_range<detail::JobKind::map, R, F, Args...>(chunk, range, f, state, args...);
      return Job<R>(core_, std::move(state));
    } else {
      return Job<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }
  template <class F, class... Args>
  auto map_async(Range range, F f, const Args&... args) {
    return map_async(Chunk{0}, range, f, args...);
  }
  template <class F, class... Args>
  auto map(Chunk chunk, Range range, F f, const Args&... args) {
    using R = std::invoke_result_t<F, std::uint64_t, const Args&...>;
    if constexpr (detail::task_fits_v<F, R, Args...>) {
      return map_async(chunk, range, f, args...).get();
    } else {
      map_async(chunk, range, f, args...);  // (never built: for its one compile-time error)
      if constexpr (!std::is_void_v<R>) return std::vector<R>{};
    }
  }
  template <class F, class... Args>
  auto map(Range range, F f, const Args&... args) {
    return map(Chunk{0}, range, f, args...);
  }
  template <class F, class... Args>
  std::optional<std::pair<std::size_t, std::uint64_t>> find_first(Range range, F pred,
                                                                  const Args&... args) {
    using R = std::invoke_result_t<F, std::uint64_t, const Args&...>;
    static_assert(std::is_convertible_v<R, bool>, "procshare::Pool::find_first: pred must return bool");
    static_assert(detail::check_stateless<F>() && (detail::check_transportable<Args>() && ...));
    if constexpr (detail::task_fits_v<F, void, Args...> && std::is_convertible_v<R, bool>) {
      auto state = std::make_shared<detail::ResultState<void>>(range.size());
      start_range<detail::JobKind::find_first, void, F, Args...>(Chunk{0}, range, pred, state, args...);
      const std::optional<std::uint64_t> match = detail::wait_first(*core_, *state);
      state->throw_if_failed(match.value_or(UINT64_MAX));
      if (!match) return std::nullopt;
      return std::pair<std::size_t, std::uint64_t>(*match, range.first + *match);
    } else {
      return std::nullopt;
    }
  }

  // Streams (Python's imap, imap_unordered, as_completed): f(item, args...) over the
  // items (a span, a vector or a Range), the outcomes yielded as they come, in input
  // order (imap) or in completion order (imap_unordered); see Stream. The task must
  // return a value.
  template <class T, class F, class... Args>
  auto imap(std::span<const T> items, F f, const Args&... args) {
    return stream<T, F, Args...>(true, items, f, args...);
  }
  template <class T, class F, class... Args>
  auto imap(const std::vector<T>& items, F f, const Args&... args) {
    return stream<T, F, Args...>(true, std::span<const T>(items), f, args...);
  }
  template <class F, class... Args>
  auto imap(Range range, F f, const Args&... args) {
    return stream_range<F, Args...>(true, range, f, args...);
  }
  template <class T, class F, class... Args>
  auto imap_unordered(std::span<const T> items, F f, const Args&... args) {
    return stream<T, F, Args...>(false, items, f, args...);
  }
  template <class T, class F, class... Args>
  auto imap_unordered(const std::vector<T>& items, F f, const Args&... args) {
    return stream<T, F, Args...>(false, std::span<const T>(items), f, args...);
  }
  template <class F, class... Args>
  auto imap_unordered(Range range, F f, const Args&... args) {
    return stream_range<F, Args...>(false, range, f, args...);
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
  template <class R> static constexpr std::uint64_t fixed_size() {
    if constexpr (std::is_void_v<R>) return 0;
    else return detail::Transport<R>::fixed ? sizeof(R) : 0;
  }
  template <class F> static detail::AnyFunction function_of(F f) {
    if constexpr (std::is_pointer_v<F>) return reinterpret_cast<detail::AnyFunction>(f);
    else return nullptr;
  }
  // (results_in_slots: fixed-size map results go to shared slots, copied out at the end;
  // a stream's go through the result rings, as they come)
  template <detail::JobKind Kind, class T, class R, class F, class... Args>
  void start_items(Chunk chunk, std::span<const T> items, F f,
                   const std::shared_ptr<detail::JobState>& state, const Args&... args) {
    start_items<Kind, T, R, F, Args...>(chunk, items, f, state, true, args...);
  }
  template <detail::JobKind Kind, class T, class R, class F, class... Args>
  void start_items(Chunk chunk, std::span<const T> items, F f,
                   const std::shared_ptr<detail::JobState>& state, bool results_in_slots,
                   const Args&... args) {
    const auto args_bytes = detail::pack_args(args...);
    std::vector<std::byte> serialized;
    std::vector<std::uint64_t> offsets;
    std::span<const std::byte> item_bytes;
    if constexpr (detail::Transport<T>::fixed) {
      item_bytes = std::as_bytes(items);
    } else {
      offsets.reserve(items.size());
      Writer w{serialized};
      for (const T& item : items) {
        offsets.push_back(serialized.size());
        detail::Transport<T>::write(w, item);
      }
      item_bytes = serialized;
    }
    detail::JobSpec spec{Kind, &detail::run_chunk<Kind, F, T, R, Args...>, function_of(f),
                         item_bytes, offsets, args_bytes, items.size(),
                         Kind == detail::JobKind::map && results_in_slots ? fixed_size<R>() : 0,
                         chunk.items};
    detail::start_job(*core_, spec, state);
  }

  // How many outcomes a stream's parent side holds (see Stream).
  static constexpr std::size_t stream_buffer = 1024;
  template <class T, class F, class... Args>
  auto stream(bool ordered, std::span<const T> items, F f, const Args&... args) {
    using R = std::invoke_result_t<F, const T&, const Args&...>;
    static_assert(!std::is_void_v<R>, "procshare::Pool::imap: the task must return a value "
                                      "(use map_async for tasks that return nothing)");
    static_assert(detail::check_stateless<F>() && detail::check_transportable<T>() &&
                  (detail::check_transportable<Args>() && ...));
    static_assert(detail::check_result<R>());
    if constexpr (detail::task_fits_v<F, R, T, Args...> && !std::is_void_v<R>) {
      auto state = std::make_shared<detail::StreamState<R>>(ordered, stream_buffer);
      start_items<detail::JobKind::map, T, R, F, Args...>(Chunk{0}, items, f, state, false, args...);
      return Stream<R>(core_, std::move(state));
    } else {
      return Stream<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }
  template <class F, class... Args>
  auto stream_range(bool ordered, Range range, F f, const Args&... args) {
    using R = std::invoke_result_t<F, std::uint64_t, const Args&...>;
    static_assert(!std::is_void_v<R>, "procshare::Pool::imap: the task must return a value "
                                      "(use map_async for tasks that return nothing)");
    static_assert(detail::check_stateless<F>() && (detail::check_transportable<Args>() && ...));
    static_assert(detail::check_result<R>());
    if constexpr (detail::task_fits_v<F, R, Args...> && !std::is_void_v<R>) {
      auto state = std::make_shared<detail::StreamState<R>>(ordered, stream_buffer);
      start_range<detail::JobKind::map, R, F, Args...>(Chunk{0}, range, f, state, false, args...);
      return Stream<R>(core_, std::move(state));
    } else {
      return Stream<R>(core_, nullptr);  // (never built: a check above failed)
    }
  }
  template <detail::JobKind Kind, class R, class F, class... Args>
  void start_range(Chunk chunk, Range range, F f, const std::shared_ptr<detail::JobState>& state,
                   const Args&... args) {
    start_range<Kind, R, F, Args...>(chunk, range, f, state, true, args...);
  }
  template <detail::JobKind Kind, class R, class F, class... Args>
  void start_range(Chunk chunk, Range range, F f, const std::shared_ptr<detail::JobState>& state,
                   bool results_in_slots, const Args&... args) {
    const auto args_bytes = detail::pack_args(args...);
    detail::JobSpec spec{Kind, &detail::run_chunk<Kind, F, Range, R, Args...>, function_of(f),
                         {}, {}, args_bytes, range.size(),
                         Kind == detail::JobKind::map && results_in_slots ? fixed_size<R>() : 0,
                         chunk.items, range.first};
    detail::start_job(*core_, spec, state);
  }

  std::shared_ptr<detail::PoolCore> core_;
};

}  // namespace procshare
