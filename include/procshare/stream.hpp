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

}  // namespace procshare
