// Robust locks: initialisation, owner-death recovery, timed locking, lock errors.
#include <procshare/mutex.hpp>

#include "detail/names.hpp"

#include <fmt/format.h>

#include <pthread.h>
#include <unistd.h>

#include <ctime>

// ThreadSanitizer builds (`bash run.sh tsan`): GCC 12's libtsan intercepts
// pthread_mutex_lock and pthread_mutex_timedlock but not pthread_mutex_clocklock, so a
// lock taken by lock_until would be invisible to it ("unlock of an unlocked mutex", and
// false races on what the lock guards). lock_until announces it with TSan's own mutex
// annotations instead; nothing changes in other builds.
#if defined(__SANITIZE_THREAD__)
#define PROCSHARE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PROCSHARE_TSAN 1
#endif
#endif
#ifdef PROCSHARE_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace procshare::detail {

pid_t cached_pid = [] {
  ::pthread_atfork(nullptr, nullptr, [] { cached_pid = ::getpid(); });
  return ::getpid();
}();

int init_lock(RobustLock& lock, bool recursive) noexcept {
  pthread_mutexattr_t attributes;
  if (const int error = ::pthread_mutexattr_init(&attributes)) return error;
  int error = ::pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  if (error == 0) error = ::pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
  if (error == 0)
    error = ::pthread_mutexattr_settype(
        &attributes, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
  if (error == 0) error = ::pthread_mutex_init(&lock.mutex, &attributes);
  ::pthread_mutexattr_destroy(&attributes);
  lock.owner_pid = 0;
  lock.last_dead_pid.store(0, std::memory_order_relaxed);
  lock.deaths.store(0, std::memory_order_relaxed);
  lock.dirty = 0;
  lock.poisoned.store(0, std::memory_order_relaxed);
  return error;
}

namespace {

// The type word glibc keeps in a mutex that init_lock made (robust, process-shared, and
// recursive or error-checking).
int kind_word(bool recursive) noexcept {
  RobustLock probe{};
  if (init_lock(probe, recursive) != 0) return -1;
  const int kind = probe.mutex.__data.__kind;
  ::pthread_mutex_destroy(&probe.mutex);
  return kind;
}

}  // namespace

bool lock_intact(const RobustLock& lock, bool recursive) noexcept {
  static const int errorcheck_kind = kind_word(false);
  static const int recursive_kind = kind_word(true);
  const int expected = recursive ? recursive_kind : errorcheck_kind;
  return expected != -1 && lock.mutex.__data.__kind == expected;
}

int finish_lock(RobustLock& lock, int result) noexcept {
  if (result == 0) {
    lock.owner_pid = cached_pid;
    return 0;
  }
  if (result != EOWNERDEAD) return result;
  // The previous holder died holding the lock: we hold it now. Repair, record, go on.
  ::pthread_mutex_consistent(&lock.mutex);
  lock.last_dead_pid.store(lock.owner_pid, std::memory_order_relaxed);
  lock.deaths.fetch_add(1, std::memory_order_relaxed);
  if (lock.dirty != 0) {
    lock.poisoned.store(static_cast<std::uint8_t>(PoisonCause::holder_died), std::memory_order_relaxed);
    lock.dirty = 0;
  }
  lock.owner_pid = cached_pid;
  return 0;
}

namespace {

// One pthread_mutex_clocklock until `deadline`; returns its result.
int clocklock(RobustLock& lock, Deadline deadline) noexcept {
  // steady_clock is CLOCK_MONOTONIC on Linux.
  const auto since_epoch = deadline.time_since_epoch();
  const auto seconds = std::chrono::floor<std::chrono::seconds>(since_epoch);
  timespec when{};
  if (since_epoch.count() > 0) {
    when.tv_sec = static_cast<time_t>(seconds.count());
    when.tv_nsec = static_cast<long>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - seconds).count());
  }
#ifdef PROCSHARE_TSAN
  __tsan_mutex_pre_lock(&lock.mutex, __tsan_mutex_try_lock);
  const int result = ::pthread_mutex_clocklock(&lock.mutex, CLOCK_MONOTONIC, &when);
  const bool taken = result == 0 || result == EOWNERDEAD;
  __tsan_mutex_post_lock(&lock.mutex,
                         __tsan_mutex_try_lock | (taken ? 0 : __tsan_mutex_try_lock_failed), 0);
  return result;
#else
  return ::pthread_mutex_clocklock(&lock.mutex, CLOCK_MONOTONIC, &when);
#endif
}

}  // namespace

int lock_until(RobustLock& lock, Deadline deadline) noexcept {
  // In slices (see mutex.hpp): a sleeper whose wake-up died with another process retries
  // the lock when its slice ends, and takes it if it is free.
  for (;;) {
    const Deadline slice_end = std::chrono::steady_clock::now() + recheck_interval;
    const bool last = deadline <= slice_end;
    const int result = clocklock(lock, last ? deadline : slice_end);
    if (result != ETIMEDOUT || last) return finish_lock(lock, result);
  }
}

void throw_lock_error(const HandleCore& handle, ObjectKind kind, std::string_view operation,
                      int error, pid_t holder) {
  const std::string segment = segment_name(handle);
  const std::string object = describe(handle, kind);
  switch (error) {
    case EPERM: {
      std::string held_by = "it is not locked, or its holder is not known";
      if (holder == cached_pid) held_by = fmt::format("another thread of this process ({}) holds it", holder);
      else if (holder != 0) held_by = fmt::format("process {} holds it", holder);
      throw NotOwner(segment, object,
                     fmt::format("{}: the calling thread does not hold the lock ({})", operation, held_by));
    }
    case EDEADLK:
      throw InvalidArgument(segment, object,
                            fmt::format("{}: the calling thread already holds the lock", operation));
    case ETIMEDOUT:
      throw Timeout(segment, object,
                    fmt::format("{}: the lock is still held by another thread or process", operation));
    case ENOTRECOVERABLE:
    case EINVAL:
      throw CorruptSegment(segment, object,
                           fmt::format("{}: not a usable lock: {}", operation, os_reason(error)));
    default:
      throw Error(segment, object, fmt::format("{}: {}", operation, os_reason(error)));
  }
}

void throw_poisoned(const RobustLock& lock, const HandleCore& handle, ObjectKind kind) {
  const pid_t dead = lock.last_dead_pid.load(std::memory_order_relaxed);
  const std::uint32_t deaths = lock.deaths.load(std::memory_order_relaxed);
  const bool by_exception = lock.poisoned.load(std::memory_order_relaxed) ==
                            static_cast<std::uint8_t>(PoisonCause::exception);
  std::string why;
  if (by_exception)
    why = "an exception unwound through a guard that was writing it, so a write may be half done";
  else if (dead != 0)
    why = fmt::format("process {} died while writing it", dead);
  else
    why = "a process died while writing it (before it recorded its pid)";
  const bool container =
      kind == ObjectKind::vector || kind == ObjectKind::map || kind == ObjectKind::string;
  const char* remedy = container
                           ? "reads and writes throw OwnerDied until reset() empties and repairs it"
                           : "reads still work; writes throw OwnerDied until clear_poison()";
  throw OwnerDied(segment_name(handle), describe(handle, kind),
                  fmt::format("poisoned: {} (owner deaths so far: {}); {}", why, deaths, remedy),
                  by_exception ? 0 : dead, deaths);
}

}  // namespace procshare::detail
