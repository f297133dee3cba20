// Queue<T>: a bounded multi-producer, multi-consumer FIFO stored under a name in a
// Segment (Python's multiprocessing.Queue, without its feeder thread or pipe).
//
// Shared: `capacity` item slots, head and tail counters, a closed mark, and a robust lock.
//   T is Shareable (trivially copyable, canonical name) or std::string, stored in slots
//   of max_item_bytes (fixed at creation; a longer string is InvalidArgument).
// Guarded by: the lock, held while one item is copied in or out; never while a caller
//   waits. Items from one producer come out in the order it pushed them.
// Visibility: everything a producer wrote before push() is visible to the consumer whose
//   pop() returns that item.
// Waiting: a push to a full queue, or a pop from an empty one, first spins (polling
//   without the lock) for the handle's spin time (default 50 us, set_spin()), then sleeps
//   on a shared futex until a pop (push) makes room (an item), the queue is closed, or the
//   deadline passes. Spinning makes hand-offs between running processes fast; set_spin(0)
//   sleeps at once and saves CPU when waits are long.
// Closing: after close(), push() throws QueueClosed; pop() returns what is left, then
//   throws QueueClosed. Every sleeper wakes.
// Owner death: an item is published by one store after it is copied in, and consumed by
//   one store after it is copied out, so a producer or consumer killed at any point loses
//   at most its own item and never wedges the queue (the lock repairs itself). A waiter
//   killed while it sleeps costs later pushes and pops an extra wake-up call at most.
//   A push (pop) bumps the items (space) sequence under the lock before it wakes one
//   sleeper, and sleepers wait in slices that re-read that word (futex.hpp): a wake-up
//   handed to a waiter killed before it acted, or lost with a waker killed before its
//   wake call, delays the other sleepers one slice (10 ms), never for ever.
// Errors: InvalidArgument for a capacity of 0 or above 2^31, or a string longer than
//   max_item_bytes; QueueClosed as above; TypeMismatch, AlreadyExists, NotFound,
//   SegmentFull, InvalidName from the Segment factories.
#pragma once

#include <procshare/futex.hpp>
#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>
#include <procshare/value.hpp>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>

namespace procshare {

// What a Queue can carry: a Shareable T, or std::string.
template <class T>
concept QueueItem = Shareable<T> || std::is_same_v<T, std::string>;

namespace detail {

struct alignas(64) QueueBlock {
  ObjectHeader header;
  RobustLock lock;                        // guards everything below but the read-only
  std::atomic<std::uint32_t> head;        // fields; head and tail are read unlocked by
  std::atomic<std::uint32_t> tail;        // spinners. Both count modulo 2^32.
  alignas(64) std::atomic<std::uint32_t> items_sequence;  // futex word for consumers
  std::atomic<std::uint32_t> space_sequence;               // futex word for producers
  std::uint32_t consumers_waiting;
  std::uint32_t producers_waiting;
  std::atomic<std::uint32_t> closed;
  std::uint32_t capacity;   // read-only after creation
  std::uint32_t slot_bytes; // read-only after creation
};
static_assert(sizeof(QueueBlock) == 192);
inline constexpr std::size_t queue_data_offset = sizeof(QueueBlock);

// How Ts travel through slots: a Shareable T as itself; a string as length + bytes.
template <class T> struct QueueSlots {
  static std::uint32_t slot_bytes(std::uint32_t) { return sizeof(T); }
  static std::string_view type() { return type_name<T>::value; }
  static void check(const HandleCore&, const T&, std::uint32_t) {}
  static void write(std::byte* slot, const T& item, std::uint32_t) {
    std::memcpy(slot, &item, sizeof(T));
  }
  static T read(const std::byte* slot) {
    T item;
    std::memcpy(&item, slot, sizeof(T));
    return item;
  }
};

// Throws InvalidArgument for a string of `bytes` in a queue of `max` bytes per item.
[[noreturn]] PROCSHARE_API void throw_item_too_long(const HandleCore& handle, std::size_t bytes,
                                                    std::size_t max);
// Throws QueueClosed for `operation` on the queue `handle`.
[[noreturn]] PROCSHARE_API void throw_queue_closed(const HandleCore& handle,
                                                   std::string_view operation);
// Throws InvalidArgument for a bad capacity or item size at creation.
[[noreturn]] PROCSHARE_API void throw_bad_queue(const Segment& segment, std::string_view name,
                                                std::string_view why);

template <> struct QueueSlots<std::string> {
  static std::uint32_t slot_bytes(std::uint32_t max_item_bytes) {
    return (4 + max_item_bytes + 3) / 4 * 4;
  }
  static std::string_view type() { return "string"; }
  static void check(const HandleCore& handle, const std::string& item, std::uint32_t slot) {
    if (item.size() > slot - 4) throw_item_too_long(handle, item.size(), slot - 4);
  }
  static void write(std::byte* slot, const std::string& item, std::uint32_t) {
    const auto size = static_cast<std::uint32_t>(item.size());
    std::memcpy(slot, &size, 4);
    std::memcpy(slot + 4, item.data(), size);
  }
  static std::string read(const std::byte* slot) {
    std::uint32_t size;
    std::memcpy(&size, slot, 4);
    return std::string(reinterpret_cast<const char*>(slot + 4), size);
  }
};

}  // namespace detail

template <class T>
class Queue {
  static_assert(QueueItem<T>,
                "procshare::Queue<T>: T must be std::string, or trivially copyable with a "
                "procshare::type_name<T>");
  using Slots = detail::QueueSlots<T>;

public:
  // An empty handle: every call throws NotFound until one is assigned.
  Queue() = default;

  // Appends `item`, waiting while the queue is full. Throws QueueClosed, InvalidArgument
  // (string too long; nothing is pushed).
  void push(const T& item) { push_until(item, detail::no_deadline); }
  // Appends `item` if there is room now; returns whether it did. Throws as push().
  bool try_push(const T& item) { return push_until(item, std::chrono::steady_clock::now()); }
  // Appends `item`, waiting at most `timeout` for room; returns whether it did.
  template <class Rep, class Period>
  bool push_for(const T& item, const std::chrono::duration<Rep, Period>& timeout) {
    return push_until(item, detail::deadline_after(timeout));
  }
  // Removes and returns the oldest item, waiting while the queue is empty. Throws
  // QueueClosed once the queue is closed and empty.
  T pop() { return *pop_until(detail::no_deadline); }
  // The oldest item if there is one now, else nullopt. Throws QueueClosed once closed
  // and empty.
  std::optional<T> try_pop() { return pop_until(std::chrono::steady_clock::now()); }
  // The oldest item, waiting at most `timeout`; nullopt if none came. Throws QueueClosed
  // once closed and empty.
  template <class Rep, class Period>
  std::optional<T> pop_for(const std::chrono::duration<Rep, Period>& timeout) {
    return pop_until(detail::deadline_after(timeout));
  }
  // Closes the queue for pushes and wakes every sleeper (see top of file).
  void close() {
    auto& b = block();
    {
      detail::ScopedLock held(b.lock, core_, kind);
      b.closed.store(1, std::memory_order_release);
      b.items_sequence.fetch_add(1, std::memory_order_relaxed);
      b.space_sequence.fetch_add(1, std::memory_order_relaxed);
    }
    detail::futex_wake(b.items_sequence);
    detail::futex_wake(b.space_sequence);
  }
  // Whether close() was called.
  bool closed() const { return block().closed.load(std::memory_order_acquire) != 0; }
  // Items in the queue now.
  std::uint32_t size() const {
    auto& b = block();
    return b.tail.load(std::memory_order_acquire) - b.head.load(std::memory_order_acquire);
  }
  // How many items it holds at most.
  std::uint32_t capacity() const { return block().capacity; }
  // How long this handle's blocked push/pop spins before sleeping (default 50 us; 0:
  // sleep at once). A property of the handle, not of the shared queue.
  void set_spin(std::chrono::nanoseconds spin) noexcept { spin_ns_ = spin.count() < 0 ? 0 : spin.count(); }
  // The name it has in its segment.
  std::string name() const { return detail::object_name(core_); }
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

private:
  friend class Segment;
  static constexpr ObjectKind kind = ObjectKind::queue;
  using Block = detail::QueueBlock;

  explicit Queue(detail::HandleCore core) : core_(core) {}

  Block& block() const {
    return *reinterpret_cast<Block*>(detail::resolve(core_, kind, sizeof(Block)));
  }
  static std::byte* slot(Block& b, std::uint32_t index) {
    return reinterpret_cast<std::byte*>(&b) + detail::queue_data_offset +
           std::size_t{index % b.capacity} * b.slot_bytes;
  }
  // Spins (without the lock) until ready() or the spin time or `deadline` passes.
  template <class Ready> void spin(Ready ready, detail::Deadline deadline) const {
    if (spin_ns_ == 0 || ready()) return;
    const auto until = std::min(deadline, std::chrono::steady_clock::now() +
                                              std::chrono::nanoseconds(spin_ns_));
    for (int i = 1;; ++i) {
      __builtin_ia32_pause();
      if (ready()) return;
      if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return;
    }
  }
  void lock(Block& b) const {
    if (const int error = detail::lock(b.lock)) detail::throw_lock_error(core_, kind, "lock", error);
  }

  bool push_until(const T& item, detail::Deadline deadline) {
    Block& b = block();
    Slots::check(core_, item, b.slot_bytes);
    spin([&b] {
      return b.tail.load(std::memory_order_relaxed) - b.head.load(std::memory_order_relaxed) <
                 b.capacity || b.closed.load(std::memory_order_relaxed);
    }, deadline);
    lock(b);
    for (;;) {
      if (b.closed.load(std::memory_order_relaxed)) {
        detail::unlock(b.lock);
        detail::throw_queue_closed(core_, "push");
      }
      const std::uint32_t tail = b.tail.load(std::memory_order_relaxed);
      if (tail - b.head.load(std::memory_order_relaxed) < b.capacity) {
        Slots::write(slot(b, tail), item, b.slot_bytes);
        b.tail.store(tail + 1, std::memory_order_release);  // publishes the item
        const bool wake = b.consumers_waiting != 0;
        if (wake) b.items_sequence.fetch_add(1, std::memory_order_relaxed);
        detail::unlock(b.lock);
        if (wake) detail::futex_wake(b.items_sequence, 1);
        return true;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        detail::unlock(b.lock);
        return false;
      }
      ++b.producers_waiting;
      const std::uint32_t sequence = b.space_sequence.load(std::memory_order_relaxed);
      detail::unlock(b.lock);
      detail::futex_wait(b.space_sequence, sequence, deadline);
      lock(b);
      --b.producers_waiting;
    }
  }

  std::optional<T> pop_until(detail::Deadline deadline) {
    Block& b = block();
    spin([&b] {
      return b.tail.load(std::memory_order_relaxed) != b.head.load(std::memory_order_relaxed) ||
             b.closed.load(std::memory_order_relaxed);
    }, deadline);
    lock(b);
    for (;;) {
      const std::uint32_t head = b.head.load(std::memory_order_relaxed);
      if (b.tail.load(std::memory_order_relaxed) != head) {
        std::optional<T> item;
        try {
          item.emplace(Slots::read(slot(b, head)));
        } catch (...) {  // std::string's allocation: the item stays queued
          detail::unlock(b.lock);
          throw;
        }
        b.head.store(head + 1, std::memory_order_release);  // consumes it
        const bool wake = b.producers_waiting != 0;
        if (wake) b.space_sequence.fetch_add(1, std::memory_order_relaxed);
        detail::unlock(b.lock);
        if (wake) detail::futex_wake(b.space_sequence, 1);
        return item;
      }
      if (b.closed.load(std::memory_order_relaxed)) {
        detail::unlock(b.lock);
        detail::throw_queue_closed(core_, "pop");
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        detail::unlock(b.lock);
        return std::nullopt;
      }
      ++b.consumers_waiting;
      const std::uint32_t sequence = b.items_sequence.load(std::memory_order_relaxed);
      detail::unlock(b.lock);
      detail::futex_wait(b.items_sequence, sequence, deadline);
      lock(b);
      --b.consumers_waiting;
    }
  }

  static Queue place(Segment& segment, std::string_view name, detail::Intent intent,
                     std::uint32_t capacity, std::uint32_t max_item_bytes) {
    if (intent != detail::Intent::open) {
      if (capacity == 0 || capacity > 0x80000000u)
        detail::throw_bad_queue(segment, name, "capacity must be 1 to 2^31");
      if (std::is_same_v<T, std::string> && (max_item_bytes == 0 || max_item_bytes > (1u << 24)))
        detail::throw_bad_queue(segment, name, "max_item_bytes must be 1 to 2^24");
    }
    const std::uint32_t slot_bytes = Slots::slot_bytes(max_item_bytes);
    const std::uint64_t bytes =
        detail::queue_data_offset + std::uint64_t{capacity} * slot_bytes;
    // A string queue opened by name takes whatever item size it was made with.
    const bool any_size = intent == detail::Intent::open && std::is_same_v<T, std::string>;
    const detail::ObjectSpec spec{kind, Slots::type(), any_size ? 0u : slot_bytes,
                                  std::is_same_v<T, std::string> ? 4u : alignof(T),
                                  intent == detail::Intent::open ? 0 : capacity,
                                  intent == detail::Intent::open ? 0 : bytes};
    auto init = [](detail::ObjectHeader* object, const void*) {
      auto* b = reinterpret_cast<Block*>(object);
      if (detail::init_lock(b->lock, false) != 0) return false;
      b->capacity = static_cast<std::uint32_t>(object->length);
      b->slot_bytes = object->elem_size;
      return true;
    };
    return Queue(detail::place(segment, name, spec, intent, init, nullptr).handle);
  }

  detail::HandleCore core_;
  std::int64_t spin_ns_ = 50'000;
};

template <class T>
Queue<T> Segment::create_queue(std::string_view name, std::uint32_t capacity,
                               std::uint32_t max_item_bytes) {
  return Queue<T>::place(*this, name, detail::Intent::create, capacity, max_item_bytes);
}
template <class T> Queue<T> Segment::open_queue(std::string_view name) {
  return Queue<T>::place(*this, name, detail::Intent::open, 0, 0);
}
template <class T>
Queue<T> Segment::queue(std::string_view name, std::uint32_t capacity,
                        std::uint32_t max_item_bytes) {
  return Queue<T>::place(*this, name, detail::Intent::create_or_open, capacity, max_item_bytes);
}

}  // namespace procshare
