// Outcome<R> and Stream<R>: what became of each item of a pool job, and the outcomes of
// a streaming job (Pool::imap, Pool::imap_unordered) as they come. Made by Pool
// (pool.hpp); see Stream below for ordering, bounded memory and cancellation.
#pragma once

#include <procshare/detail/pool_job.hpp>
#include <procshare/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace procshare {

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

// An allocator whose resize() leaves trivial elements uninitialized (they are copied
// over at once).
template <class T> struct UninitializedAllocator : std::allocator<T> {
  template <class U> struct rebind { using other = UninitializedAllocator<U>; };
  template <class U, class... A> void construct(U* p, A&&... a) {
    if constexpr (sizeof...(A) == 0) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};

// A stream's state in the parent. Outcomes arrive in blocks: a run of results for
// consecutive items (a worker's batch, or results that followed each other), or one
// failure. Besides the block it yields from (`current`), it holds about `limit`
// outcomes (a batch may take it past that once); the rest wait in the workers' rings,
// and workers whose ring is full wait for room (back-pressure). Yielding a result of a
// block costs a move, so a stream keeps up with workers that return trivial results.
// Locking: the pool's calls (under PoolCore::mutex, from any thread) add blocks and
// read `held`/`next`; take_block() runs under that lock too (see wait_stream). The
// current block and the at/stop cursor are the consumer's alone.
template <class R> struct StreamState : JobState {
  struct Block {
    std::uint64_t first = 0;   // its first item's index
    std::vector<R, UninitializedAllocator<R>> values;  // done items: one result each
    std::exception_ptr error;  // or one failed item's failure (values empty)
    std::size_t size() const { return error ? 1 : values.size(); }
    std::uint64_t end() const { return first + size(); }
  };

  bool ordered;
  std::size_t limit;
  std::uint64_t next = 0;                 // ordered: the index after the current block
  std::size_t held = 0;                   // outcomes in `waiting`/`arrived`
  std::map<std::uint64_t, Block> waiting; // ordered: by first index
  std::deque<Block> arrived;              // unordered: in arrival order
  // The block being yielded (out of the containers), whether its first outcome is still
  // to be yielded, and its results not yet yielded.
  Block current;
  bool fresh = false;
  R* at = nullptr;
  R* stop = nullptr;
  std::uint64_t at_index = 0;

  StreamState(bool ordered_, std::size_t limit_) : ordered(ordered_), limit(limit_) {}
  // Unordered: while fewer than `limit` wait. Ordered: the `limit` indices from `next`
  // on (so the one it waits for always, and its successors in bulk).
  bool admits(std::uint64_t index) const override {
    return ordered ? index < next + limit : held < limit;
  }
  // The block that results for `index` extend (one of results ending just before it),
  // or null.
  Block* extended_by(std::uint64_t index) {
    Block* b = nullptr;
    if (!ordered) {
      if (!arrived.empty()) b = &arrived.back();
    } else if (auto it = waiting.lower_bound(index); it != waiting.begin()) {
      b = &std::prev(it)->second;
    }
    return b != nullptr && !b->error && b->end() == index ? b : nullptr;
  }
  // Adds a block; null if an ordered stream has one for that index already (an item is
  // yielded once).
  Block* add(Block&& b) {
    if (!ordered) return &arrived.emplace_back(std::move(b));
    const std::uint64_t first = b.first;
    auto [it, added] = waiting.emplace(first, std::move(b));
    return added ? &it->second : nullptr;
  }
  void accept(std::uint64_t index, Reader& r) override {
    R value = Transport<R>::read(r);
    Block* b = extended_by(index);
    if (b == nullptr) b = add(Block{index, {}, nullptr});
    if (b == nullptr) return;
    b->values.push_back(std::move(value));
    ++held;
  }
  void accept_batch(std::uint64_t first, const std::byte* data, std::size_t count,
                    std::size_t item) override {
    if constexpr (Transport<R>::fixed && !std::is_same_v<R, bool>) {
      if (item == sizeof(R)) {
        Block* b = extended_by(first);
        if (b == nullptr) b = add(Block{first, {}, nullptr});
        if (b == nullptr) return;
        const std::size_t end = b->values.size();
        b->values.resize(end + count);
        std::memcpy(static_cast<void*>(b->values.data() + end), data, count * sizeof(R));
        held += count;
        return;
      }
    }
    JobState::accept_batch(first, data, count, item);
  }
  // Failures (task errors, deaths) become blocks of one; the failure list is emptied.
  void absorb() {
    for (const Failure& f : failures)
      if (add(Block{f.index, {}, failure_error(f)}) != nullptr) ++held;
    failures.clear();
  }
  // The block to yield from next, or null. Once the job ended, an ordered stream skips
  // the items that never ran.
  Block* front() {
    if (!ordered) return arrived.empty() ? nullptr : &arrived.front();
    if (waiting.empty()) return nullptr;
    Block& b = waiting.begin()->second;
    return b.first == next || finished ? &b : nullptr;
  }
  // Under the pool's lock: makes the next block current, if there is one (or says that
  // the current one still has outcomes).
  bool take_block() {
    if (fresh || at != stop) return true;
    absorb();
    Block* b = front();
    if (b == nullptr) return false;
    current = std::move(*b);
    if (ordered)
      waiting.erase(waiting.begin());
    else
      arrived.pop_front();
    held -= current.size();
    next = current.end();
    fresh = true;
    return true;
  }
  static bool ready(JobState& state) { return static_cast<StreamState&>(state).take_block(); }
  // The consumer's side, without the lock. Moves the next outcome of the current block
  // into `o`; false if it has none. `o` keeps its state and error while it yields the
  // results of one block.
  bool yield(Outcome<R>& o) {
    if (!fresh) return yield_result(o);
    fresh = false;
    o.index_ = current.first;
    if (current.error) {
      o.state_ = ItemState::failed;
      o.error_ = current.error;
      o.stored.reset();
      at = stop = nullptr;
      return true;
    }
    o.state_ = ItemState::done;
    o.error_ = nullptr;
    at = current.values.data();
    stop = at + current.values.size();
    at_index = current.first;
    return yield_result(o);
  }
  // The next result of the current block, if there is one (the common case: inline).
  bool yield_result(Outcome<R>& o) {
    if (at == stop) return false;
    o.index_ = at_index++;
    o.stored = std::move(*at++);
    return true;
  }
};

}  // namespace detail

// Stream<R>: the outcomes of a streaming job (Pool::imap, Pool::imap_unordered) as they
// come, in input order or in completion order (Python's imap, imap_unordered and
// concurrent.futures.as_completed). Iterate it with a range-for (or next()): each
// element is an Outcome<R> (index, value() or the item's failure), so a failed item does
// not end the loop; the consumer is woken as each result arrives. Memory stays bounded
// however many items there are: the parent holds the block of results it yields from (a
// worker's batch: up to 64 KiB of fixed-size results) and about 1,024 outcomes more; the
// rest wait in the workers' result rings, and the workers wait when those are full. (A
// progress() takes no more than that either. A wait for anything else of the pool, such
// as another stream's next outcome or a future's get(), takes this stream's outcomes out
// of the rings when they stand in its way, rather than stall.) One thread at a time uses
// a Stream; other threads may use the pool meanwhile. Leaving the loop early, or destroying
// the stream, cancels the job. An ordered stream waiting for a slow item holds back its
// successors: in the rare case that this would stall (a dead worker's items rerun behind
// others), it takes them all. A worker's death fails only the item it ran (WorkerDied):
// the results it held back for a batch are in shared memory already, and arrive. Every
// item is yielded exactly once. Not for tasks that return nothing (use map_async).
// Move-only: a moved-from Stream throws InvalidArgument.
template <class R> class Stream {
public:
  Stream(Stream&& other) noexcept = default;
  Stream& operator=(Stream&&) = delete;
  ~Stream() {
    if (state_) {
      try {
        detail::cancel_job(*core_, *state_);  // (nothing to do if the job ended)
      } catch (...) {  // (a pool that ended has nothing left to stop)
      }
    }
  }

  // The next outcome, waiting for it; nullopt once every item that ran was yielded (see
  // stopped()). Throws PoolClosed if the pool ended first.
  std::optional<Outcome<R>> next() {
    Outcome<R> o;
    if (!advance(o)) return std::nullopt;
    return o;
  }

  class iterator {
  public:
    using value_type = Outcome<R>;
    using difference_type = std::ptrdiff_t;
    const Outcome<R>& operator*() const { return current_; }
    const Outcome<R>* operator->() const { return &current_; }
    iterator& operator++() {
      if (!stream_->state_->yield_result(current_)) more_ = stream_->advance(current_);
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& i, std::default_sentinel_t) { return !i.more_; }

  private:
    friend class Stream;
    explicit iterator(Stream* stream) : stream_(stream) { more_ = stream_->advance(current_); }
    Stream* stream_;
    Outcome<R> current_;  // (refilled in place: one outcome is live at a time)
    bool more_ = false;
  };
  // Starts the iteration (waits for the first outcome).
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

  // Stops the job: items not started never run; the stream yields what had arrived.
  void cancel() { detail::cancel_job(*core_, state("cancel()")); }
  // Items done, failed and skipped so far, and the total.
  detail::Progress progress() { return detail::job_progress(*core_, state("progress()")); }
  // After the end: whether the job was stopped, so that some items never ran.
  bool stopped() const { return state("stopped()").stopped; }
  // The job's id in the pool's control segment.
  std::uint64_t id() const { return state("id()").id; }

private:
  friend class Pool;
  // Moves the next outcome into `o`, waiting for it; false at the end.
  bool advance(Outcome<R>& o) {
    auto& s = state("next()");
    if (s.yield(o)) return true;  // (the rings are read once the current block is out)
    detail::wait_stream(*core_, s, &detail::StreamState<R>::ready);
    if (s.yield(o)) return true;
    if (!s.closed.empty()) throw PoolClosed(s.segment, "pool", s.closed);
    return false;
  }
  // The state; throws InvalidArgument for a moved-from Stream.
  detail::StreamState<R>& state(const char* call) const {
    if (!state_)
      throw InvalidArgument("", "stream", std::string(call) + " on a moved-from Stream");
    return *state_;
  }
  Stream(std::shared_ptr<detail::PoolCore> core, std::shared_ptr<detail::StreamState<R>> state)
      : core_(std::move(core)), state_(std::move(state)) {}
  std::shared_ptr<detail::PoolCore> core_;
  std::shared_ptr<detail::StreamState<R>> state_;
};

}  // namespace procshare
