// The futex layer: shared FUTEX_WAIT_BITSET with an absolute CLOCK_MONOTONIC deadline,
// slept in slices of recheck_interval (see futex.hpp).
#include <procshare/futex.hpp>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

namespace procshare::detail {

namespace {

// One FUTEX_WAIT_BITSET on `word` until `deadline`.
WaitResult wait_once(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                     Deadline deadline) noexcept {
  timespec when{};
  const timespec* timeout = nullptr;
  if (deadline != no_deadline) {
    const auto since_epoch = deadline.time_since_epoch();
    if (since_epoch.count() <= 0) return WaitResult::timed_out;
    const auto seconds = std::chrono::floor<std::chrono::seconds>(since_epoch);
    when.tv_sec = static_cast<time_t>(seconds.count());
    when.tv_nsec = static_cast<long>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - seconds).count());
    timeout = &when;
  }
  // Shared (no FUTEX_PRIVATE_FLAG); without FUTEX_CLOCK_REALTIME the absolute timeout of
  // FUTEX_WAIT_BITSET is measured on CLOCK_MONOTONIC, as steady_clock is.
  const long result = ::syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(&word),
                                FUTEX_WAIT_BITSET, expected, timeout, nullptr,
                                FUTEX_BITSET_MATCH_ANY);
  if (result == -1 && errno == ETIMEDOUT) return WaitResult::timed_out;
  return WaitResult::woken;  // woken, EAGAIN (word changed) or EINTR: the caller re-checks
}

}  // namespace

WaitResult futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                      Deadline deadline) noexcept {
  for (;;) {
    const Deadline slice_end = std::chrono::steady_clock::now() + recheck_interval;
    if (deadline <= slice_end) return wait_once(word, expected, deadline);
    // The slice ended with no wake-up: wait again. If the word moved meanwhile (its
    // wake-up went to a process that died), the kernel refuses the wait (EAGAIN): woken.
    if (wait_once(word, expected, slice_end) == WaitResult::woken) return WaitResult::woken;
  }
}

int futex_wake(const std::atomic<std::uint32_t>& word, int count) noexcept {
  const long result = ::syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(&word),
                                FUTEX_WAKE, count, nullptr, nullptr, 0);
  return result < 0 ? 0 : static_cast<int>(result);
}

}  // namespace procshare::detail
