// fmt formatters for every procshare object, so `fmt::print("{}", done)` prints what a
// program means by it.
//
// - Value<T>, Atomic<T>: the current value, formatted as T (format specs pass through:
//   "{:>8}", "{:.2f}"). Value takes its lock for the read; Atomic loads it (seq_cst).
// - Array<T>: "[1, 2, 3]" from one snapshot taken under the lock; the spec applies to each
//   element ("{:.1f}" -> "[1.0, 2.5]").
// - Flag: "set" or "clear".
// - Mutex, RecursiveMutex: "mutex 'name'", plus " (2 owner deaths, last pid 4711)" if any.
// - Segment: "segment 'name' (used 9216 of 65536 bytes, 3 objects)".
// - Semaphore: "3" (its count); BoundedSemaphore: "1 of 2".
// - Event: "set" or "clear". Condition: "condition 'cv' on mutex 'm'".
// - Barrier: "2 of 3 waiting", or "broken".
// - Queue<T>: "3 of 16 items", plus ", closed" once closed.
// - Vector<T>: "[1, 2, 3]"; Map<K, V>: "{1: 2, 3: 4}" (one snapshot under the lock);
//   String: its text. Strings inside containers print as they are.
// Errors: as the read they make (NotFound for a handle whose segment is not mapped here).
#pragma once

#include <procshare/array.hpp>
#include <procshare/containers.hpp>
#include <procshare/flag.hpp>
#include <procshare/mutex.hpp>
#include <procshare/queue.hpp>
#include <procshare/segment.hpp>
#include <procshare/sync.hpp>
#include <procshare/value.hpp>

#include <fmt/format.h>

namespace procshare::detail {


// "mutex 'name'" plus the owner-death count when there is one.
template <class Lock> std::string describe_lock(const Lock& lock, std::string_view kind) {
  std::string text = fmt::format("{} '{}'", kind, lock.name());
  if (const auto deaths = lock.owner_deaths())
    text += fmt::format(" ({} owner death{}, last pid {})", deaths, deaths == 1 ? "" : "s",
                        lock.last_dead_owner());
  return text;
}

}  // namespace procshare::detail

template <class T>
  requires fmt::is_formattable<T>::value
struct fmt::formatter<procshare::Value<T>> : fmt::formatter<T> {
  template <class Context>
  auto format(const procshare::Value<T>& value, Context& context) const {
    return fmt::formatter<T>::format(value.load(), context);
  }
};

template <class T>
  requires fmt::is_formattable<T>::value
struct fmt::formatter<procshare::Atomic<T>> : fmt::formatter<T> {
  template <class Context>
  auto format(const procshare::Atomic<T>& value, Context& context) const {
    return fmt::formatter<T>::format(value.load(), context);
  }
};

template <class T>
  requires fmt::is_formattable<T>::value
struct fmt::formatter<procshare::Array<T>> : fmt::formatter<T> {
  template <class Context>
  auto format(const procshare::Array<T>& array, Context& context) const {
    const std::vector<T> elements = array.snapshot();
    auto out = context.out();
    *out++ = '[';
    for (std::size_t i = 0; i < elements.size(); ++i) {
      if (i != 0) out = fmt::format_to(out, ", ");
      context.advance_to(out);
      out = fmt::formatter<T>::format(elements[i], context);
    }
    *out++ = ']';
    return out;
  }
};

template <> struct fmt::formatter<procshare::Flag> : fmt::formatter<std::string_view> {
  template <class Context> auto format(const procshare::Flag& flag, Context& context) const {
    return fmt::formatter<std::string_view>::format(flag.is_set() ? "set" : "clear", context);
  }
};

template <> struct fmt::formatter<procshare::Mutex> : fmt::formatter<std::string_view> {
  template <class Context> auto format(const procshare::Mutex& lock, Context& context) const {
    return fmt::formatter<std::string_view>::format(procshare::detail::describe_lock(lock, "mutex"),
                                                    context);
  }
};

template <> struct fmt::formatter<procshare::RecursiveMutex> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::RecursiveMutex& lock, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        procshare::detail::describe_lock(lock, "recursive_mutex"), context);
  }
};

template <> struct fmt::formatter<procshare::Segment> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Segment& segment, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        fmt::format("segment '{}' (used {} of {} bytes, {} objects)", segment.name(),
                    segment.used(), segment.size(), segment.objects().size()),
        context);
  }
};

template <> struct fmt::formatter<procshare::Semaphore> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Semaphore& semaphore, Context& context) const {
    return fmt::formatter<std::string_view>::format(fmt::format("{}", semaphore.value()), context);
  }
};

template <>
struct fmt::formatter<procshare::BoundedSemaphore> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::BoundedSemaphore& semaphore, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        fmt::format("{} of {}", semaphore.value(), semaphore.bound()), context);
  }
};

template <> struct fmt::formatter<procshare::Event> : fmt::formatter<std::string_view> {
  template <class Context> auto format(const procshare::Event& event, Context& context) const {
    return fmt::formatter<std::string_view>::format(event.is_set() ? "set" : "clear", context);
  }
};

template <> struct fmt::formatter<procshare::Condition> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Condition& condition, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        fmt::format("condition '{}' on mutex '{}'", condition.name(), condition.mutex().name()),
        context);
  }
};

template <> struct fmt::formatter<procshare::Barrier> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Barrier& barrier, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        barrier.broken() ? std::string("broken")
                         : fmt::format("{} of {} waiting", barrier.waiting(), barrier.parties()),
        context);
  }
};

template <class T> struct fmt::formatter<procshare::Queue<T>> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Queue<T>& queue, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        fmt::format("{} of {} items{}", queue.size(), queue.capacity(),
                    queue.closed() ? ", closed" : ""),
        context);
  }
};

template <class T>
  requires fmt::is_formattable<T>::value
struct fmt::formatter<procshare::Vector<T>> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Vector<T>& vector, Context& context) const {
    return fmt::formatter<std::string_view>::format(
        fmt::format("[{}]", fmt::join(vector.snapshot(), ", ")), context);
  }
};

template <class K, class V>
  requires(fmt::is_formattable<K>::value && fmt::is_formattable<V>::value)
struct fmt::formatter<procshare::Map<K, V>> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procshare::Map<K, V>& map, Context& context) const {
    std::string text = "{";
    for (const auto& [k, v] : map.snapshot()) text += fmt::format("{}{}: {}", text.size() > 1 ? ", " : "", k, v);
    return fmt::formatter<std::string_view>::format(text + "}", context);
  }
};

template <> struct fmt::formatter<procshare::String> : fmt::formatter<std::string_view> {
  template <class Context> auto format(const procshare::String& string, Context& context) const {
    return fmt::formatter<std::string_view>::format(string.load(), context);
  }
};
