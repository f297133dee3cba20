// as_completed: a set of Futures in the order their tasks end (Python's
// concurrent.futures.as_completed), for work submitted one task at a time; for the items
// of one job, Pool::imap_unordered does the same with bounded memory.
#pragma once

#include <procshare/error.hpp>
#include <procshare/pool.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <iterator>
#include <span>
#include <string>
#include <vector>

namespace procshare {

// The futures of `futures` as their tasks end: a range-for yields each Future<R>& once,
// as soon as it has ended (its get() then returns at once, or throws the task's failure:
// a failure does not end the loop). Futures of several pools may be mixed. With a
// timeout, the loop throws Timeout once `timeout` has passed since as_completed() was
// called and some future has still not ended (those that did were yielded; the rest go on
// running). The futures must outlive the loop; a null (moved-from) one is refused with
// InvalidArgument.
template <class R> class Completed {
public:
  class iterator {
  public:
    using value_type = Future<R>;
    using difference_type = std::ptrdiff_t;
    Future<R>& operator*() const { return *current_; }
    Future<R>* operator->() const { return current_; }
    iterator& operator++() {
      current_ = owner_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& i, std::default_sentinel_t) { return i.current_ == nullptr; }

  private:
    friend class Completed;
    explicit iterator(Completed* owner) : owner_(owner), current_(owner->next()) {}
    Completed* owner_;
    Future<R>* current_;
  };
  // Starts the iteration (waits for the first future to end).
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

private:
  template <class T> friend Completed<T> as_completed(std::span<Future<T>>);
  template <class T, class Rep, class Period>
  friend Completed<T> as_completed(std::span<Future<T>>, const std::chrono::duration<Rep, Period>&);

  Completed(std::span<Future<R>> futures, detail::Deadline deadline)
      : deadline_(deadline), start_(std::chrono::steady_clock::now()) {
    for (Future<R>& f : futures) {
      if (!f.state_)
        throw InvalidArgument("", "as_completed", "a future is empty (moved from)");
      pending_.push_back(&f);
    }
  }
  // The next future to end, waiting for it; null once all were yielded.
  Future<R>* next() {
    while (!pending_.empty()) {
      // The pending futures of the first one's pool; with others pending, wait for these
      // only briefly before looking at those.
      detail::PoolCore* core = pending_.front()->core_.get();
      std::vector<detail::JobState*> states;
      std::vector<std::size_t> positions;
      for (std::size_t i = 0; i < pending_.size(); ++i)
        if (pending_[i]->core_.get() == core) {
          states.push_back(pending_[i]->state_.get());
          positions.push_back(i);
        }
      auto deadline = deadline_;
      if (states.size() < pending_.size())
        deadline = std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(1));
      const std::size_t ended = detail::wait_any(*core, states, deadline);
      if (ended < states.size()) {
        Future<R>* f = pending_[positions[ended]];
        pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(positions[ended]));
        return f;
      }
      if (states.size() < pending_.size())  // (look at the other pools' futures next)
        std::rotate(pending_.begin(), pending_.begin() + 1, pending_.end());
      if (std::chrono::steady_clock::now() >= deadline_)
        detail::throw_completed_timeout(*pending_.front()->state_, pending_.size(),
                                        std::chrono::steady_clock::now() - start_);
    }
    return nullptr;
  }

  std::vector<Future<R>*> pending_;  // not yielded yet
  detail::Deadline deadline_;
  std::chrono::steady_clock::time_point start_;
};

template <class R> Completed<R> as_completed(std::span<Future<R>> futures) {
  return Completed<R>(futures, detail::no_deadline);
}
template <class R> Completed<R> as_completed(std::vector<Future<R>>& futures) {
  return as_completed(std::span<Future<R>>(futures));
}
template <class R, class Rep, class Period>
Completed<R> as_completed(std::span<Future<R>> futures, const std::chrono::duration<Rep, Period>& timeout) {
  return Completed<R>(futures, detail::deadline_after(timeout));
}
template <class R, class Rep, class Period>
Completed<R> as_completed(std::vector<Future<R>>& futures, const std::chrono::duration<Rep, Period>& timeout) {
  return as_completed(std::span<Future<R>>(futures), timeout);
}

}  // namespace procshare
