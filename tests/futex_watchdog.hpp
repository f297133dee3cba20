// Test support for faults inside locks: the lost wake-up watchdog, which samples
// processes' /proc/PID/syscall (one that sleeps in a futex wait for over `stale_limit`,
// 1 s, on a word that no longer holds the value it waits for, a free lock or a moved
// sequence word, has lost its wake-up); `repairing`, how the survivors of a death inside
// a write go on; and a pool task with nested locks, with the objects it locks.
#pragma once

#include "support.hpp"

#include <procshare/procshare.hpp>

#include <fmt/format.h>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <string>

namespace procshare::test {

using namespace std::chrono_literals;

inline constexpr auto stale_limit = 1s;  // asleep this long on a moved word: a lost wake-up

// What a process is doing, from /proc/PID/syscall: asleep in a futex wait on `address`
// expecting `expected`, or not.
struct FutexSleep {
  std::uintptr_t address = 0;
  std::uint32_t expected = 0;
  bool operator==(const FutexSleep&) const = default;
};

inline std::optional<FutexSleep> futex_sleep_of(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/syscall", pid));
  long number = -1;
  if (!(in >> number) || number != SYS_futex) return std::nullopt;
  std::string address, operation, expected;
  if (!(in >> address >> operation >> expected)) return std::nullopt;
  const unsigned long op = std::stoul(operation, nullptr, 16) & FUTEX_CMD_MASK;
  if (op != FUTEX_WAIT && op != FUTEX_WAIT_BITSET) return std::nullopt;
  return FutexSleep{std::stoul(address, nullptr, 16),
                    static_cast<std::uint32_t>(std::stoul(expected, nullptr, 16))};
}

// The 32-bit word at `address` in process `pid`.
inline std::optional<std::uint32_t> read_word(pid_t pid, std::uintptr_t address) {
  std::uint32_t word = 0;
  iovec local{&word, sizeof word};
  iovec remote{reinterpret_cast<void*>(address), sizeof word};
  if (::process_vm_readv(pid, &local, 1, &remote, 1, 0) != sizeof word) return std::nullopt;
  return word;
}

// Samples processes; remembers since when each has slept on a word that moved.
class Watchdog {
public:
  // Checks `pid` now; returns a description if it has slept on a moved word for longer
  // than stale_limit.
  std::optional<std::string> check(pid_t pid) {
    const auto sleep = futex_sleep_of(pid);
    std::optional<std::uint32_t> word;
    if (sleep) word = read_word(pid, sleep->address);
    if (!sleep || !word || *word == sleep->expected) {
      stale_.erase(pid);
      return std::nullopt;
    }
    const auto now = std::chrono::steady_clock::now();
    auto [entry, fresh] = stale_.try_emplace(pid, Stale{*sleep, now});
    if (!fresh && !(entry->second.sleep == *sleep)) entry->second = Stale{*sleep, now};
    if (now - entry->second.since < stale_limit) return std::nullopt;
    return fmt::format("process {} has slept {} ms in futex_wait on {:#x}, expecting {:#x}, "
                       "while the word holds {:#x}: a lost wake-up",
                       pid,
                       std::chrono::duration_cast<std::chrono::milliseconds>(now - entry->second.since).count(),
                       sleep->address, sleep->expected, *word);
  }

private:
  struct Stale {
    FutexSleep sleep;
    std::chrono::steady_clock::time_point since;
  };
  std::map<pid_t, Stale> stale_;
};

// Retries `f` after clearing `object`'s poison (a victim died inside its write: the
// survivors repair and go on, as a program would).
template <class Object, class F> void repairing(Object& object, F f) {
  for (;;) {
    try {
      f();
      return;
    } catch (const OwnerDied&) {
      object.clear_poison();
    }
  }
}

// A task with a guard on a Value and a second object's lock inside it, then a mark that
// it finished (a third lock).
inline std::int64_t locked_task(std::int64_t item, Value<std::int64_t> v, Array<std::int64_t> hits,
                         Array<std::uint8_t> finished) {
  repairing(v, [&] {
    auto g = v.lock();
    *g += 1;
    repairing(hits, [&] { hits.update(0, [](std::int64_t x) { return x + 1; }); });
  });
  repairing(finished, [&] { finished.store(static_cast<std::size_t>(item), 1); });
  return item;
}

// What locked_task works on, made before the pool forks its workers (so they have it)
// and reset each round: a Value, a second object's lock, and a mark per item.
struct LockedTaskObjects {
  static constexpr std::size_t max_items = 1u << 20;
  SegmentName name;
  Segment segment;
  Value<std::int64_t> v;
  Array<std::int64_t> hits;
  Array<std::uint8_t> finished;

  explicit LockedTaskObjects(const char* what)
      : name(what),
        segment(Segment::create(name, max_items + (1 << 16))),
        v(segment.create_value<std::int64_t>("v", 0)),
        hits(segment.create_array<std::int64_t>("hits", 1)),
        finished(segment.create_array<std::uint8_t>("finished", max_items)) {}
  void reset() {
    if (v.poisoned()) v.clear_poison();
    if (hits.poisoned()) hits.clear_poison();
    if (finished.poisoned()) finished.clear_poison();
    v.store(0);
    hits.store(0, 0);
    finished.fill(0);
  }
};

}  // namespace procshare::test
