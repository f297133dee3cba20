// Semaphore, BoundedSemaphore, Event, Condition and Barrier: Python multiprocessing's
// synchronisation objects as named objects in a Segment, usable between processes and
// between threads.
//
// Waiting: every blocking call sleeps on a shared futex word (futex.hpp) and none uses
//   pthread_cond_t: a process killed while it waits leaves nothing behind, and later
//   wake-ups, sets and destruction work as if it had never waited. Timed calls take
//   std::chrono durations or time points; they return false (or throw, where stated)
//   no earlier than the deadline.
// Deaths never strand a waiter: no wait relies on a wake-up reaching it. Each sleeps in
//   slices of detail::recheck_interval (10 ms) and re-reads its futex word between
//   them, and every state change a waiter waits for moves that word before the wake-up
//   is sent. So a wake-up that dies with a process (a wake-one handed to a waiter killed
//   before it acted, or a waker killed between its store and its wake call) costs the
//   other waiters at most one slice. Each class below says why for its own waits.
// Visibility: release()/set()/notify_*()/a completed barrier round happen-before the
//   acquire()/wait() they release returns (acquire/release ordering).
// Owner death: Semaphore units held by a process that dies are not given back (as in
//   Python); an Event has no owner; a Condition relocks its Mutex like Mutex::lock(),
//   counting a dead holder; a Barrier breaks when a registered party dies (see Barrier).
// Errors: InvalidArgument for a bad count, party number or release; Timeout from
//   Semaphore::guard_for/guard_until; TypeMismatch,
//   AlreadyExists, NotFound, SegmentFull, InvalidName from the Segment factories;
//   NotFound when the handle's segment is not mapped in this process.
// Handles are small trivially copyable records: copy them freely, also into children.
#pragma once

#include <procshare/futex.hpp>
#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include <sys/types.h>

namespace procshare {

// Semaphore: a counter that acquire() decrements, waiting while it is 0, and release()
// increments (Python's multiprocessing.Semaphore). Lock-free: no process holds a lock.
// Scopes: `auto held = sem.guard();` takes a unit and gives it back when `held` goes
//   out of scope, also when an exception unwinds (Python's `with sem:`).
// Deaths: the count is the futex word. A release() raises it (one atomic step) before it
//   wakes anyone, so a waiter whose wake-up died (handed to a waiter killed before it
//   took the unit, or never sent by a releaser killed after its increment) sees the
//   count above 0 within one slice and takes the unit. A waiter killed while it sleeps
//   leaves a stale waiter count, which costs releases a wake-up call at most.
class PROCSHARE_API Semaphore {
public:
  // Guard: holds one unit of a Semaphore (or BoundedSemaphore) for a scope, from
  // guard(), guard_for() or guard_until(), and releases it when destroyed. Move-only; a
  // moved-from Guard holds nothing. It releases only in the process that acquired: a
  // copy that fork() put in a child gives nothing back (that would be a second release
  // of one unit). The destructor never throws: a release that fails (a BoundedSemaphore
  // that someone else released above its bound meanwhile, a segment no longer mapped)
  // is reported on stderr.
  class PROCSHARE_API Guard {
  public:
    Guard(Guard&& other) noexcept
        : core_(other.core_), kind_(other.kind_), holder_(std::exchange(other.holder_, 0)) {}
    Guard& operator=(Guard&&) = delete;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard();
    // Releases the unit now rather than at destruction (then the destructor does
    // nothing). Throws what Semaphore::release() throws; the guard holds nothing after.
    void release();
    // Whether this guard still holds its unit (false once released or moved from, and
    // in a forked child).
    bool held() const noexcept;

  private:
    friend class Semaphore;
    Guard(detail::HandleCore core, ObjectKind kind, pid_t holder) noexcept
        : core_(core), kind_(kind), holder_(holder) {}
    detail::HandleCore core_;
    ObjectKind kind_;
    pid_t holder_;  // the process that acquired the unit; 0: none held
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Semaphore() = default;

  // Takes one unit, sleeping while the count is 0.
  void acquire();
  // Takes one unit if the count is above 0; returns whether it did.
  bool try_acquire();
  // Takes one unit, sleeping at most `timeout`; returns whether it did.
  template <class Rep, class Period>
  bool try_acquire_for(const std::chrono::duration<Rep, Period>& timeout) {
    return acquire_until(detail::deadline_after(timeout));
  }
  // Takes one unit, sleeping until `deadline` at most; returns whether it did.
  template <class Clock, class Duration>
  bool try_acquire_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    return acquire_until(detail::to_deadline(deadline));
  }
  // Takes one unit as acquire() does and returns a Guard that releases it at the end of
  // its scope (Python's `with sem:`).
  [[nodiscard]] Guard guard();
  // As guard(), sleeping at most `timeout`: throws Timeout (taking nothing) if no unit
  // became free by then.
  template <class Rep, class Period>
  [[nodiscard]] Guard guard_for(const std::chrono::duration<Rep, Period>& timeout) {
    return guard_until_deadline(detail::deadline_after(timeout), "guard_for");
  }
  // As guard(), sleeping until `deadline` at most: throws Timeout if it passed.
  template <class Clock, class Duration>
  [[nodiscard]] Guard guard_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    return guard_until_deadline(detail::to_deadline(deadline), "guard_until");
  }
  // Gives back `units` (>= 1) and wakes as many sleepers. Throws InvalidArgument for
  // units == 0 or a count that would pass 2^31 - 1; the count is then unchanged.
  void release(std::uint32_t units = 1);
  // The current count (Python's get_value()).
  std::uint32_t value() const;
  // The name it has in its segment.
  std::string name() const;
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

protected:
  friend class Segment;
  Semaphore(detail::HandleCore core, ObjectKind kind) : core_(core), kind_(kind) {}
  bool acquire_until(detail::Deadline deadline);
  Guard guard_until_deadline(detail::Deadline deadline, std::string_view call);

  detail::HandleCore core_;
  ObjectKind kind_ = ObjectKind::semaphore;
};

// BoundedSemaphore: a Semaphore whose count may never exceed its initial value (Python's
// BoundedSemaphore): a release() that would is InvalidArgument and changes nothing.
class PROCSHARE_API BoundedSemaphore : public Semaphore {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  BoundedSemaphore() : Semaphore({}, ObjectKind::bounded_semaphore) {}
  // The initial value, which the count may not exceed.
  std::uint32_t bound() const;

private:
  friend class Segment;
  explicit BoundedSemaphore(detail::HandleCore core)
      : Semaphore(core, ObjectKind::bounded_semaphore) {}
};

// Event: a flag processes can sleep on until it is set (Python's multiprocessing.Event).
// set() wakes every waiter; a waiter returns true if the flag was set at any moment
// during its wait, even if it was cleared again before the waiter ran.
// Deaths: the flag and a count of sets share the futex word, which set() changes in one
//   step before it wakes. A setter killed between that step and its wake-up (after which
//   a later set() finds the flag set and wakes nobody) leaves waiters asleep at most one
//   slice: they re-read the word, see the set, and return true.
class PROCSHARE_API Event {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  Event() = default;

  // Sets the flag and wakes every waiter.
  void set();
  // Clears the flag.
  void clear();
  // Whether the flag is set.
  bool is_set() const;
  // Sleeps until the flag is set (returns at once if it is).
  void wait();
  // Sleeps at most `timeout`; returns whether the flag was set.
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    return wait_until_deadline(detail::deadline_after(timeout));
  }
  // Sleeps until `deadline` at most; returns whether the flag was set.
  template <class Clock, class Duration>
  bool wait_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    return wait_until_deadline(detail::to_deadline(deadline));
  }
  // The name it has in its segment.
  std::string name() const;
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

private:
  friend class Segment;
  explicit Event(detail::HandleCore core) : core_(core) {}
  bool wait_until_deadline(detail::Deadline deadline);

  detail::HandleCore core_;
};

// Condition: a condition variable bound to one Mutex of the same segment (Python's
// multiprocessing.Condition), used with std::unique_lock<Mutex>.
// Guarded by: the bound Mutex, which wait() releases while it sleeps and retakes before
//   it returns (also when the wait times out or throws).
// Waking: notify_one() wakes one waiter that is waiting when it is called, if there is
//   one, notify_all() every one of them; wait(lock) may also return spuriously (rarely:
//   after a waiter's death), so wait in a loop or use wait(lock, pred).
// Owner death: if the Mutex's holder dies, wait() retakes it as Mutex::lock() does (the
//   death is counted). A notify leaves a ticket per waiter it wakes (never more tickets
//   than waiters), moves the futex word (a sequence), then wakes; a waiter returns
//   notified when it takes a ticket. A notify_one() whose wake-up went to a waiter killed
//   before it took its ticket, or a notifier killed between moving the sequence and its
//   wake call, leaves the ticket to the other waiters, who see the sequence moved within
//   one slice (10 ms) and take it. A waiter killed while it sleeps stays counted as a
//   waiter: a later notify_all() may then leave tickets no one takes, and a later notify
//   wake more waiters than asked (spurious wake-ups), never fewer.
// Errors: InvalidArgument when the lock is of another Mutex than the bound one;
//   NotOwner when it is not held.
class PROCSHARE_API Condition {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  Condition() = default;

  // Releases `lock`, sleeps until notified (or spuriously), retakes `lock`.
  void wait(std::unique_lock<Mutex>& lock);
  // As wait(lock), looping until pred() is true (checked with the lock held).
  template <class Predicate> void wait(std::unique_lock<Mutex>& lock, Predicate pred) {
    while (!pred()) wait(lock);
  }
  // As wait(lock), sleeping at most `timeout`: std::cv_status::timeout if it passed.
  template <class Rep, class Period>
  std::cv_status wait_for(std::unique_lock<Mutex>& lock,
                          const std::chrono::duration<Rep, Period>& timeout) {
    return wait_until_deadline(lock, detail::deadline_after(timeout));
  }
  // As wait(lock, pred), sleeping at most `timeout`; returns pred() at the end.
  template <class Rep, class Period, class Predicate>
  bool wait_for(std::unique_lock<Mutex>& lock, const std::chrono::duration<Rep, Period>& timeout,
                Predicate pred) {
    const detail::Deadline deadline = detail::deadline_after(timeout);
    while (!pred())
      if (wait_until_deadline(lock, deadline) == std::cv_status::timeout) return pred();
    return true;
  }
  // As wait_for, with a deadline.
  template <class Clock, class Duration>
  std::cv_status wait_until(std::unique_lock<Mutex>& lock,
                            const std::chrono::time_point<Clock, Duration>& deadline) {
    return wait_until_deadline(lock, detail::to_deadline(deadline));
  }
  // Wakes one sleeping waiter, if any.
  void notify_one();
  // Wakes every sleeping waiter.
  void notify_all();
  // The Mutex it is bound to.
  Mutex mutex() const;
  // The name it has in its segment.
  std::string name() const;
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

private:
  friend class Segment;
  explicit Condition(detail::HandleCore core) : core_(core) {}
  std::cv_status wait_until_deadline(std::unique_lock<Mutex>& lock, detail::Deadline deadline);

  detail::HandleCore core_;
};

// Barrier: `parties` processes or threads wait for each other, round after round
// (Python's multiprocessing.Barrier).
// Rounds: arrive_and_wait() returns once `parties` callers have arrived in the round,
//   each with a different index 0 .. parties-1 (its arrival order), and the barrier is
//   ready for the next round.
// Broken: a timed-out wait_for(), abort(), or reset() with callers waiting breaks the
//   round: every waiter throws BrokenBarrier, and so does every later arrival until
//   reset() (Python's semantics). Its message says why, the same in every process it
//   reaches: the pid of the party that died, or of the process whose wait timed out, or
//   that called abort() or reset().
// Dead parties: waiters wake at least every 100 ms to check that the processes the
//   barrier watches are alive, and break it if one has died instead of waiting for ever.
//   It watches every process waiting in the current round, and every process that
//   called register_party() (so that dying before it arrives also breaks the barrier),
//   until it calls unregister_party().
// Owner death: the barrier's own lock repairs itself; a holder dying mid-update breaks
//   the barrier rather than leaving it inconsistent. Its lock is waited for in slices
//   (mutex.hpp) and a round's end bumps the futex word (the epoch) before the wake-up,
//   so no waiter depends on a wake-up: the liveness check above is always reached.
class PROCSHARE_API Barrier {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  Barrier() = default;

  // Waits for the round to fill; returns this caller's index. Throws BrokenBarrier.
  std::uint32_t arrive_and_wait();
  // As arrive_and_wait(), but a wait longer than `timeout` breaks the barrier for every
  // waiter and throws BrokenBarrier.
  template <class Rep, class Period>
  std::uint32_t wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    return arrive_until(detail::deadline_after(timeout));
  }
  // Registers the calling process as a member, so that its death breaks the barrier even
  // while it is not waiting (say, before its first arrival).
  void register_party();
  // Ends the calling process's membership (call it before leaving for good).
  void unregister_party();
  // Breaks the barrier: waiters and later arrivals throw BrokenBarrier until reset().
  void abort();
  // Makes the barrier whole and empty again; callers waiting in the current round throw
  // BrokenBarrier. Forgets watched processes that have died.
  void reset();
  // Whether the barrier is broken.
  bool broken() const;
  // How many parties a round needs.
  std::uint32_t parties() const;
  // How many have arrived in the current round.
  std::uint32_t waiting() const;
  // The name it has in its segment.
  std::string name() const;
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

private:
  friend class Segment;
  explicit Barrier(detail::HandleCore core) : core_(core) {}
  std::uint32_t arrive_until(detail::Deadline deadline);
  // "broken" or "N of M waiting", for Segment::value_text; throws Timeout if its lock is
  // still held at `deadline`.
  std::string state_text(detail::Deadline deadline) const;

  detail::HandleCore core_;
};

// Locks every one of `locks` (Mutex or RecursiveMutex handles, two or more) without
// deadlock, however other processes order the same locks: they are always taken in one
// global order (by segment and offset), never by try-and-back-off. If a lock() throws,
// the ones already taken are released and the exception propagates.
template <class... Locks>
  requires(sizeof...(Locks) >= 2)
void lock(Locks&... locks) {
  struct Entry {
    const detail::HandleCore* key;
    void (*lock)(void*);
    void (*unlock)(void*);
    void* object;
  };
  Entry entries[] = {Entry{&locks.handle(), [](void* l) { static_cast<Locks*>(l)->lock(); },
                           [](void* l) { static_cast<Locks*>(l)->unlock(); }, &locks}...};
  auto before = [](const Entry& a, const Entry& b) {
    const auto& x = *a.key;
    const auto& y = *b.key;
    if (x.segment.high != y.segment.high) return x.segment.high < y.segment.high;
    if (x.segment.low != y.segment.low) return x.segment.low < y.segment.low;
    return x.offset < y.offset;
  };
  std::sort(std::begin(entries), std::end(entries), before);
  std::size_t taken = 0;
  try {
    for (; taken < sizeof...(Locks); ++taken) entries[taken].lock(entries[taken].object);
  } catch (...) {
    while (taken > 0) {
      --taken;
      entries[taken].unlock(entries[taken].object);
    }
    throw;
  }
}

}  // namespace procshare
