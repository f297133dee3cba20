// Mutex and RecursiveMutex: robust, process-shared locks stored by name in a Segment.
//
// Shared: a process-shared robust pthread mutex (error-checking, or recursive), the pid
//   of its current holder, and an owner-death record (count and last dead pid).
// Guarded by: whatever the program decides; the mutex knows nothing of it.
// Visibility: everything written before unlock() in one process is seen by the next
//   process whose lock() returns (acquire/release ordering).
// Owner death: lock() never throws because a holder died, whether a process was killed
//   or a thread exited holding it. It makes the mutex consistent, records the dead holder
//   (owner_deaths(), last_dead_owner()) and returns with the lock held; the program
//   decides whether what the lock guarded needs repair. The shared objects (Value,
//   Array, ...) do that themselves: see "Poisoning" in value.hpp.
// Waiting: a free lock is taken at once; a held one is waited for in slices of
//   detail::recheck_interval (10 ms), retrying the lock between them. A glibc robust
//   mutex can lose its sleepers' wake-up when a process dies (a waiter woken by the
//   unlock is killed before it takes the lock, and a newcomer's takeover drops the lock
//   word's "waiters" bit, so no later unlock wakes anyone): a slice bounds what that
//   costs a survivor. Every lock in procshare (objects, containers, queues, barriers,
//   the pool, segment directories) is taken through this path.
// Errors: NotOwner when unlock() is called by a thread that does not hold the lock (the
//   message names the holder's pid when one is recorded); InvalidArgument when a thread
//   lock()s a (non-recursive) Mutex it already holds (try_lock and try_lock_for then
//   return false instead);
//   NotFound when the handle's segment is not mapped in this process.
//
// Both are TimedLockable, so std::scoped_lock, std::unique_lock and try_lock_for work.
// A handle is a small trivially copyable record: copy it freely, also into children.
#pragma once

#include <procshare/futex.hpp>
#include <procshare/segment.hpp>

#include <pthread.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <exception>
#include <string>
#include <utility>

namespace procshare {
namespace detail {

// The lock inside every lockable object, in shared memory.
struct RobustLock {
  pthread_mutex_t mutex;                     // robust, process-shared
  std::int32_t owner_pid;                    // pid of the holder, written after each lock
  std::atomic<std::int32_t> last_dead_pid;   // pid of the last holder that died holding it
  std::atomic<std::uint32_t> deaths;         // how many holders died holding it
  std::uint8_t dirty;                        // a multi-store write or a guard is under way;
                                             // written only by the holder
  std::atomic<std::uint8_t> poisoned;        // a PoisonCause: why writes are refused
};

// Why an object is poisoned (RobustLock::poisoned).
enum class PoisonCause : std::uint8_t {
  none = 0,
  holder_died = 1,  // its holder died while the object was dirty
  exception = 2,    // an exception unwound through a guard that may have written
};

// This process's pid, cached (refreshed in forked children).
PROCSHARE_API extern pid_t cached_pid;

// Initialises `lock` in place (robust, process-shared; recursive or error-checking).
// Returns 0 or an errno value.
PROCSHARE_API int init_lock(RobustLock& lock, bool recursive) noexcept;

// The slow half of lock(): handles EOWNERDEAD (makes the mutex consistent, records the
// death, poisons a dirty object) and returns 0, or returns the error.
PROCSHARE_API int finish_lock(RobustLock& lock, int result) noexcept;

// Whether `lock` is a lock init_lock(lock, recursive) made: robust, process-shared, of the
// right type. A lock read from a file that fails this is never locked, as glibc would
// misbehave on it (assert, or wait for ever in a priority-inheritance path).
PROCSHARE_API bool lock_intact(const RobustLock& lock, bool recursive) noexcept;

// Locks with a CLOCK_MONOTONIC deadline (no_deadline: for ever); returns 0, ETIMEDOUT or
// another errno value. Sleeps in slices of recheck_interval, retrying the lock between
// them: a glibc robust mutex can lose the wake-up of its sleepers when a process dies
// (a waiter woken by an unlock is killed before it takes the lock, and a newcomer's
// plain 0 -> tid takeover drops the lock word's "waiters" bit, so no later unlock wakes
// the rest), and the slices bound that loss to one interval. See DESIGN.md.
PROCSHARE_API int lock_until(RobustLock& lock, Deadline deadline) noexcept;

// Locks; returns 0 or an errno value (EDEADLK: this thread holds it already). The free
// lock is taken at once; a held one is waited for through lock_until, in slices.
inline int lock(RobustLock& lock) noexcept {
  const int result = pthread_mutex_trylock(&lock.mutex);
  if (result == 0) [[likely]] {
    lock.owner_pid = cached_pid;
    return 0;
  }
  if (result == EBUSY) return lock_until(lock, no_deadline);
  return finish_lock(lock, result);
}

// Tries to lock; returns 0, EBUSY or another errno value.
inline int try_lock(RobustLock& lock) noexcept {
  const int result = pthread_mutex_trylock(&lock.mutex);
  if (result == 0) [[likely]] {
    lock.owner_pid = cached_pid;
    return 0;
  }
  return finish_lock(lock, result);
}


// Unlocks; returns 0, or EPERM if the calling thread does not hold the lock. The holder
// pid is cleared first, so that a holder killed before it records itself is reported as
// unknown (0) rather than as the previous holder.
inline int unlock(RobustLock& lock) noexcept {
  const std::int32_t holder = lock.owner_pid;
  if (holder == cached_pid) lock.owner_pid = 0;
  const int result = pthread_mutex_unlock(&lock.mutex);
  if (result != 0) lock.owner_pid = holder;  // not ours to clear after all
  return result;
}


// Records a holder that died, if there is one, by taking the lock for a moment when it is
// free: the kernel marks a dead holder's lock, and only a locker sees the mark. Lets
// poisoned() and owner_deaths() report a death before the next real lock.
inline void observe_deaths(RobustLock& lock) noexcept {
  if (try_lock(lock) == 0) unlock(lock);
}

// Throws the procshare error for a lock operation on `handle` that returned `error`;
// `holder`: the pid recorded as holding the lock, named by NotOwner (0: not known).
[[noreturn]] PROCSHARE_API void throw_lock_error(const HandleCore& handle, ObjectKind kind,
                                                 std::string_view operation, int error,
                                                 pid_t holder = 0);

// A lockable object's shared state: ObjectHeader, then the lock on its own cache line.
struct alignas(64) LockBlock {
  ObjectHeader header;
  RobustLock lock;
};

// Holds an object's lock for a scope. Re-entrant for the holding thread, as Python's
// RLock-guarded Value and Array are: a call made while this thread already holds the
// lock (inside its own Guard, or from update's f) runs under that hold and leaves the
// lock to it. Throws the object's error if locking fails.
class ScopedLock {
public:
  ScopedLock(RobustLock& lock, const HandleCore& handle, ObjectKind kind) : lock_(lock) {
    const int error = detail::lock(lock);
    reentered_ = error == EDEADLK;  // an error-checking lock this thread holds already
    if (error != 0 && !reentered_) throw_lock_error(handle, kind, "lock", error);
  }
  ~ScopedLock() {
    if (!reentered_) detail::unlock(lock_);
  }
  ScopedLock(const ScopedLock&) = delete;
  ScopedLock& operator=(const ScopedLock&) = delete;

private:
  RobustLock& lock_;
  bool reentered_ = false;
};

// Holds an object's lock for a scope, waiting at most until `deadline`: for readers that
// must not hang on a lock held for ever (procshare-ctl on a wedged or forged segment).
// Throws Timeout when the deadline passes, or the object's error if locking fails.
// Re-entrant for the holding thread, as ScopedLock.
class DeadlineLock {
public:
  DeadlineLock(RobustLock& lock, const HandleCore& handle, ObjectKind kind, Deadline deadline)
      : lock_(lock) {
    const int error = detail::lock_until(lock, deadline);
    reentered_ = error == EDEADLK;
    if (error != 0 && !reentered_) throw_lock_error(handle, kind, "lock", error);
  }
  ~DeadlineLock() {
    if (!reentered_) detail::unlock(lock_);
  }
  DeadlineLock(const DeadlineLock&) = delete;
  DeadlineLock& operator=(const DeadlineLock&) = delete;

private:
  RobustLock& lock_;
  bool reentered_ = false;
};

// Throws OwnerDied for an access refused because `lock`'s object `handle` is poisoned:
// the message says why (the dead holder's pid and the death count, or an exception
// through a guard) and the call that clears it (clear_poison(), or reset() for a
// container); the exception carries the pid and the count.
[[noreturn]] PROCSHARE_API void throw_poisoned(const RobustLock& lock, const HandleCore& handle,
                                               ObjectKind kind);

// Called with the lock held before a write: throws OwnerDied if the object is poisoned.
inline void check_writable(const RobustLock& lock, const HandleCore& handle, ObjectKind kind) {
  if (lock.poisoned.load(std::memory_order_relaxed)) [[unlikely]]
    throw_poisoned(lock, handle, kind);
}

// Marks an object dirty (with its lock held): a holder dying from here until
// clear_dirty() poisons it. The marks are ordered before and after the writes they
// surround.
inline void mark_dirty(RobustLock& lock) noexcept {
  lock.dirty = 1;
  std::atomic_thread_fence(std::memory_order_release);
}
inline void clear_dirty(RobustLock& lock) noexcept {
  std::atomic_thread_fence(std::memory_order_release);
  lock.dirty = 0;
}

// Marks an object dirty for a scope, with the lock held (see mark_dirty); then restores
// the mark it found, so that a write made inside a Guard leaves the Guard's mark on.
class DirtyScope {
public:
  explicit DirtyScope(RobustLock& lock) noexcept : lock_(lock), was_dirty_(lock.dirty) {
    mark_dirty(lock_);
  }
  ~DirtyScope() {
    std::atomic_thread_fence(std::memory_order_release);
    lock_.dirty = was_dirty_;
  }
  DirtyScope(const DirtyScope&) = delete;
  DirtyScope& operator=(const DirtyScope&) = delete;

private:
  RobustLock& lock_;
  std::uint8_t was_dirty_;
};

// What begin_guard found, for end_guard to restore.
struct GuardState {
  bool reentered = false;      // this thread held the lock already (a guard in a guard)
  std::uint8_t was_dirty = 0;  // the dirty mark before the guard
};

// Starts a guard (Value::lock(), Array::lock(), a container's lock()): locks (re-entrant
// for the holding thread, as ScopedLock), refuses a poisoned object with OwnerDied
// (unlocking again), and marks the object dirty until end_guard().
inline GuardState begin_guard(RobustLock& lock, const HandleCore& handle, ObjectKind kind) {
  const int error = detail::lock(lock);
  const GuardState state{error == EDEADLK, lock.dirty};
  if (error != 0 && !state.reentered) throw_lock_error(handle, kind, "lock", error);
  if (lock.poisoned.load(std::memory_order_relaxed)) [[unlikely]] {
    if (!state.reentered) detail::unlock(lock);
    throw_poisoned(lock, handle, kind);
  }
  mark_dirty(lock);
  return state;
}
// Ends a guard: restores the dirty mark and unlocks (unless the guard was re-entered),
// only in the process that holds the lock (a guard copied into a forked child by fork()
// must not unmark its parent's write). `poison`: an exception is unwinding through a guard
// that may have written, so the write may be half done, as if the holder had died.
inline void end_guard(RobustLock& lock, GuardState state, bool poison) noexcept {
  if (lock.owner_pid != cached_pid) return;
  if (poison)
    lock.poisoned.store(static_cast<std::uint8_t>(PoisonCause::exception), std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  lock.dirty = state.was_dirty;
  if (!state.reentered) detail::unlock(lock);
}

// The one guard mechanism behind Value::Guard, Array::Guard and the containers' guards:
// holds an object's lock from begin_guard until release(), and on release poisons the
// object if an exception is unwinding through the guard after the data was reached
// through it (touch()), since a write may then be half done. Move-only; releases once,
// only in the process that took the lock (end_guard).
class HeldGuard {
public:
  HeldGuard(RobustLock& lock, GuardState state) noexcept : lock_(&lock), state_(state) {}
  HeldGuard(HeldGuard&& other) noexcept
      : lock_(std::exchange(other.lock_, nullptr)),
        state_(other.state_),
        touched_(other.touched_),
        exceptions_(other.exceptions_) {}
  HeldGuard& operator=(HeldGuard&&) = delete;
  ~HeldGuard() { release(); }
  // Notes that the data was reached through the guard (so it may have been written).
  void touch() const noexcept { touched_ = true; }
  bool touched() const noexcept { return touched_; }
  // Takes a touch back (a container write that failed whole, changing nothing).
  void set_touched(bool touched) noexcept { touched_ = touched; }
  // Unlocks (end_guard) unless already released.
  void release() noexcept {
    if (lock_ != nullptr)
      end_guard(*std::exchange(lock_, nullptr), state_,
                touched_ && std::uncaught_exceptions() > exceptions_);
  }

private:
  RobustLock* lock_;
  GuardState state_;
  mutable bool touched_ = false;
  int exceptions_ = std::uncaught_exceptions();  // in flight when the guard was made
};

// What every object with a robust lock reports once: the deaths of its lock's holders,
// its name and its handle; DataObject adds poisoning for objects that hold data. Every
// such object's block starts with a LockBlock (header, then lock). Tag: the type tag a
// handle must carry (0: the kind alone decides, as for Mutex).
template <ObjectKind K, std::uint64_t Tag = 0> class LockedObject {
public:
  // How many holders died holding this lock (a death is seen as soon as the lock is
  // free, or when the next locker takes it).
  std::uint32_t owner_deaths() const {
    RobustLock& lock = lock_word();
    observe_deaths(lock);
    return lock.deaths.load(std::memory_order_relaxed);
  }
  // The pid of the last holder that died holding it; 0 if none, or if it died within
  // the few instructions between taking the lock and recording itself.
  pid_t last_dead_owner() const {
    RobustLock& lock = lock_word();
    observe_deaths(lock);
    return lock.last_dead_pid.load(std::memory_order_relaxed);
  }
  // The name it has in its segment (a directory lookup: not for hot paths).
  std::string name() const { return object_name(core_); }
  // The handle's record (segment uuid, offset, type hash).
  const HandleCore& handle() const noexcept { return core_; }

protected:
  static constexpr ObjectKind kind = K;
  LockedObject() = default;
  explicit LockedObject(HandleCore core) : core_(core) {}
  // The object's block, at least `bytes` long: an empty, stale or mistyped handle throws.
  ObjectHeader* resolved(std::size_t bytes) const {
    if constexpr (Tag != 0)
      if (core_.tag_hash != Tag) [[unlikely]]
        throw_unresolved(core_, K);
    return resolve(core_, K, bytes);
  }
  RobustLock& lock_word() const {
    return reinterpret_cast<LockBlock*>(resolved(sizeof(LockBlock)))->lock;
  }

  HandleCore core_;
};

// A LockedObject that holds data (Value, Array): a holder's death mid-write, or an
// exception through a guard that wrote, poisons it.
template <ObjectKind K, std::uint64_t Tag> class DataObject : public LockedObject<K, Tag> {
public:
  // Whether a holder died mid-write (reads work; writes throw OwnerDied until
  // clear_poison()).
  bool poisoned() const {
    RobustLock& lock = this->lock_word();
    observe_deaths(lock);
    return lock.poisoned.load(std::memory_order_relaxed) != 0;
  }
  // Makes a poisoned object writable again, keeping its current contents.
  void clear_poison() {
    RobustLock& lock = this->lock_word();
    ScopedLock held(lock, this->core_, K);
    lock.poisoned.store(0, std::memory_order_relaxed);
  }

protected:
  using LockedObject<K, Tag>::LockedObject;
};

// The one lock implementation behind Mutex (K = mutex) and RecursiveMutex (K =
// recursive_mutex): both are this class with their own name and constructor. The members
// below are theirs; where the two kinds differ, the comment says so.
template <ObjectKind K>
class BasicMutex : public LockedObject<K> {
  using LockedObject<K>::core_;
  using LockedObject<K>::lock_word;

public:
  // Blocks until this thread holds the lock (a RecursiveMutex: holds it again, one level
  // more). After a holder died, returns holding the lock and counts the death (see top of
  // file). A Mutex throws InvalidArgument if this thread holds it already.
  void lock() {
    if (const int error = detail::lock(lock_word())) throw_lock_error(core_, K, "lock", error);
  }
  // Takes the lock if free (a RecursiveMutex: or held by this thread); returns false at
  // once if another thread holds it, or, for a Mutex, if this thread does (Python's
  // Lock.acquire(blocking=False)).
  // (EDEADLK, this thread holding the non-recursive lock, is a plain false for the try
  // calls, at once: no other thread can release it.)
  bool try_lock() {
    const int error = detail::try_lock(lock_word());
    if (error == EBUSY || error == EDEADLK) return false;
    if (error) throw_lock_error(core_, K, "try_lock", error);
    return true;
  }
  // Blocks at most `timeout` (steady clock); returns false if the lock was not taken. If
  // this thread holds a Mutex already, returns false at once (waiting could not help).
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout) {
    const int error = detail::lock_until(lock_word(), deadline_after(timeout));
    if (error == ETIMEDOUT || error == EDEADLK) return false;
    if (error) throw_lock_error(core_, K, "try_lock_for", error);
    return true;
  }
  // Blocks until `deadline` at most; returns false if the lock was not taken.
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    const int error = detail::lock_until(lock_word(), to_deadline(deadline));
    if (error == ETIMEDOUT || error == EDEADLK) return false;
    if (error) throw_lock_error(core_, K, "try_lock_until", error);
    return true;
  }
  // Releases the lock (a RecursiveMutex: one level). Throws NotOwner if this thread does
  // not hold it (naming the holder's pid when one is recorded).
  void unlock() {
    RobustLock& lock = lock_word();
    const pid_t holder = lock.owner_pid;  // read before: names who holds it in the error
    if (const int error = detail::unlock(lock)) throw_lock_error(core_, K, "unlock", error, holder);
  }
  // (owner_deaths, last_dead_owner, name, handle: see LockedObject)

protected:
  // An empty handle: every call throws NotFound until one is assigned.
  BasicMutex() = default;
  explicit BasicMutex(HandleCore core) : LockedObject<K>(core) {}
};

}  // namespace detail

// Mutex: a non-recursive robust lock (Python's multiprocessing.Lock).
// Made by Segment::create_mutex / open_mutex / mutex(name). Its members (lock, try_lock,
// try_lock_for, try_lock_until, unlock, owner_deaths, last_dead_owner, name, handle) are
// detail::BasicMutex's, documented there.
class Mutex : public detail::BasicMutex<ObjectKind::mutex> {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  Mutex() = default;

private:
  friend class Segment;
  friend class Condition;  // Condition::mutex() returns its bound Mutex
  explicit Mutex(detail::HandleCore core) : BasicMutex(core) {}
};

// RecursiveMutex: a robust lock the holding thread may take again (Python's RLock); it is
// released when unlock() has been called as often as lock(). Same contract as Mutex, and
// the same members (detail::BasicMutex).
class RecursiveMutex : public detail::BasicMutex<ObjectKind::recursive_mutex> {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  RecursiveMutex() = default;

private:
  friend class Segment;
  explicit RecursiveMutex(detail::HandleCore core) : BasicMutex(core) {}
};

}  // namespace procshare
