// Internal (detail): waiting on a 32-bit word in shared memory with the Linux futex.
//
// Every blocking wait in procshare is one of these: a process reads a sequence word,
// releases whatever it holds, and sleeps until the word changes or a deadline passes.
// The futexes are shared (not FUTEX_PRIVATE_FLAG), so a waker in one process wakes a
// sleeper in another; deadlines are absolute CLOCK_MONOTONIC (std::chrono::steady_clock).
// A sleeper that dies leaves nothing behind in the kernel's wait queue, but a wake-up
// can die with a process: a wake-one handed to a sleeper that is killed before it acts,
// or a waker killed between changing the word and waking. So no sleep relies on a
// wake-up: futex_wait sleeps in slices of at most `recheck_interval` and re-reads the
// word between them, so a sleeper whose word has moved wakes within one slice even if
// its wake-up was lost. That slice is the most a death can add to any procshare wait.
// Never pthread_cond_t or std::atomic::wait in shared memory: see DESIGN.md.
#pragma once

#include <procshare/detail/config.hpp>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace procshare::detail {

using Deadline = std::chrono::steady_clock::time_point;

// No deadline: wait for ever.
inline constexpr Deadline no_deadline = Deadline::max();

// The longest a procshare wait sleeps in the kernel before it re-checks its state
// (futex_wait re-reads its word; lock_until retries the lock): the bound on what a lost
// wake-up (a death) can cost a survivor. A sleeper costs one wake-up per interval.
inline constexpr std::chrono::milliseconds recheck_interval{10};

// The outcome of one futex_wait.
enum class WaitResult {
  woken,      // woken, or the word no longer held `expected`, or interrupted: re-check
  timed_out,  // the deadline passed
};

// Sleeps while `word` holds `expected`, until woken or `deadline`: in slices of at most
// recheck_interval, re-reading `word` between them, so a change of `word` ends the sleep
// within one slice even when its wake-up was lost (taken by a process that died). May
// return `woken` spuriously: callers re-check their condition in a loop.
PROCSHARE_API WaitResult futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                                    Deadline deadline) noexcept;

// Wakes up to `count` sleepers on `word` (INT_MAX: all). Returns how many were woken.
PROCSHARE_API int futex_wake(const std::atomic<std::uint32_t>& word, int count = INT_MAX) noexcept;

// steady_clock deadline `timeout` from now; a negative timeout is "now", and one of
// over a century is no deadline at all.
template <class Rep, class Period>
Deadline deadline_after(const std::chrono::duration<Rep, Period>& timeout) {
  const auto now = std::chrono::steady_clock::now();
  if (timeout <= timeout.zero()) return now;
  if (std::chrono::duration<double>(timeout).count() > 3.2e9) return no_deadline;
  return now + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout);
}

// How long a wait of `timeout` waited, for messages: 0 if it is not positive, saturated
// if it does not fit.
template <class Rep, class Period>
std::chrono::nanoseconds waited_for(const std::chrono::duration<Rep, Period>& timeout) {
  if (timeout <= timeout.zero()) return std::chrono::nanoseconds::zero();
  if (std::chrono::duration<double>(timeout).count() > 9.2e9) return std::chrono::nanoseconds::max();
  return std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
}

// A deadline on any clock, converted to steady_clock.
template <class Clock, class Duration>
Deadline to_deadline(const std::chrono::time_point<Clock, Duration>& deadline) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return std::chrono::time_point_cast<std::chrono::steady_clock::duration>(deadline);
  } else {
    return deadline_after(deadline - Clock::now());
  }
}

}  // namespace procshare::detail
