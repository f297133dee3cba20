// Array<T>: a fixed number of Ts stored under a name in a Segment, under one lock
// (Python's multiprocessing.Array).
//
// Shared: the elements and one robust lock. T is Shareable (segment.hpp). The length is
//   fixed at creation; reopening with another length is TypeMismatch.
// Guarded by: the lock, held for the whole of load(i), store(i, v), update(i, f),
//   fill(v), snapshot() and for the life of a Guard from lock(), which gives a std::span
//   over all elements for longer work.
// Visibility: once a write returns in one process, every later read anywhere sees it.
// Owner death: as Value<T> (value.hpp): the death is counted; a death during a
//   multi-store write (fill, a non-scalar element, or while a Guard is held) poisons the
//   array: reads work, writes throw OwnerDied until clear_poison(). An exception through
//   a Guard that gave access to the elements poisons it too.
// Errors: IndexOutOfRange for an index at or past size(), naming index, size, array
//   and segment; InvalidArgument for a length of 0 at creation; TypeMismatch, SegmentFull,
//   AlreadyExists, NotFound, InvalidName on creation or opening; OwnerDied on writes to a
//   poisoned array.
#pragma once

#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>
#include <procshare/value.hpp>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <span>
#include <vector>

namespace procshare {
namespace detail {

// Throws IndexOutOfRange for `index` in the array `handle` of `size` elements.
[[noreturn]] PROCSHARE_API void throw_index_out_of_range(const HandleCore& handle,
                                                         std::size_t index, std::size_t size);
// Throws InvalidArgument for an array length of 0.
[[noreturn]] PROCSHARE_API void throw_empty_array(const Segment& segment, std::string_view name);

// Elements start on the cache line after the lock's.
inline constexpr std::size_t array_data_offset = sizeof(LockBlock);

}  // namespace detail

template <class T>
class Array : public detail::DataObject<ObjectKind::array, detail::type_tag<ObjectKind::array, T>()> {
  static_assert((detail::check_shareable<T>(), true));
  using Base = detail::DataObject<ObjectKind::array, detail::type_tag<ObjectKind::array, T>()>;
  using Base::core_;
  using Base::kind;

public:
  // Holds the array's lock and gives a span over its elements; the array is marked dirty
  // meanwhile, so a holder that dies poisons it, and so does an exception that unwinds
  // through the guard once it gave access to the elements (the work may be half done).
  // Inside it, the array's own calls work (the lock is re-entrant for its holder, as
  // Python's Array lock is). Move-only; unlocks on destruction, only in the process that
  // took it. Not to be handed to another thread.
  class Guard {
  public:
    // The locked elements.
    std::span<T> span() const noexcept { return touch(); }
    T& operator[](std::size_t index) const noexcept { return touch()[index]; }
    std::size_t size() const noexcept { return elements_.size(); }
    auto begin() const noexcept { return touch().begin(); }
    auto end() const noexcept { return touch().end(); }
    // Unlocks now rather than at destruction.
    void unlock() noexcept { held_.release(); }

  private:
    friend class Array;
    Guard(detail::LockBlock& block, std::span<T> elements, detail::GuardState state) noexcept
        : held_(block.lock, state), elements_(elements) {}
    // The elements, noting that they were reached through this guard.
    std::span<T> touch() const noexcept {
      held_.touch();
      return elements_;
    }
    detail::HeldGuard held_;
    std::span<T> elements_;
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Array() = default;

  // The number of elements (fixed at creation).
  std::size_t size() const { return block().header.length; }
  // Reads element `index`. Throws IndexOutOfRange.
  T load(std::size_t index) const {
    auto& b = block();
    check(index, b);
    detail::ScopedLock held(b.lock, core_, kind);
    return data(b)[index];
  }
  // Writes element `index`. Throws IndexOutOfRange, OwnerDied.
  void store(std::size_t index, const T& desired) {
    auto& b = block();
    check(index, b);
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    detail::write_guarded(b.lock, data(b)[index], desired);
  }
  // Stores f(element) at `index` and returns it, under the lock; f works on a copy, so
  // if it throws or its process dies the element is unchanged. Throws IndexOutOfRange,
  // OwnerDied, and whatever f throws.
  template <class F>
    requires std::is_invocable_r_v<T, F&, const T&>
  T update(std::size_t index, F&& f) {
    auto& b = block();
    check(index, b);
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    T next = std::invoke(f, std::as_const(data(b)[index]));
    detail::write_guarded(b.lock, data(b)[index], next);
    return next;
  }
  // Sets every element to `v`. Throws OwnerDied.
  void fill(const T& v) {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    detail::DirtyScope dirty(b.lock);
    std::fill_n(data(b), b.header.length, v);
  }
  // A copy of every element, taken under the lock (also when poisoned).
  std::vector<T> snapshot() const {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    return std::vector<T>(data(b), data(b) + b.header.length);
  }
  // Locks the array for longer work over all elements (see Guard). Throws OwnerDied if
  // poisoned.
  [[nodiscard]] Guard lock() {
    auto& b = block();
    return Guard(b, std::span<T>(data(b), b.header.length), detail::begin_guard(b.lock, core_, kind));
  }

  // (poisoned, clear_poison, owner_deaths, last_dead_owner, name, handle: see
  // detail::DataObject and detail::LockedObject in mutex.hpp)

private:
  friend class Segment;

  explicit Array(detail::HandleCore core) : Base(core) {}

  // Bytes for `length` elements; saturates (and so fails as SegmentFull) on overflow.
  static std::size_t bytes_for(std::size_t length) {
    constexpr std::size_t most = (SIZE_MAX - detail::array_data_offset) / sizeof(T);
    return length > most ? SIZE_MAX : detail::array_data_offset + length * sizeof(T);
  }
  detail::LockBlock& block() const {
    return *reinterpret_cast<detail::LockBlock*>(this->resolved(detail::array_data_offset));
  }
  static T* data(detail::LockBlock& b) noexcept {
    return reinterpret_cast<T*>(reinterpret_cast<std::byte*>(&b) + detail::array_data_offset);
  }
  void check(std::size_t index, const detail::LockBlock& b) const {
    if (index >= b.header.length) [[unlikely]]
      detail::throw_index_out_of_range(core_, index, b.header.length);
  }
  static Array place(Segment& segment, std::string_view name, detail::Intent intent,
                     std::size_t length, const T* initial) {
    if (intent != detail::Intent::open && length == 0) detail::throw_empty_array(segment, name);
    const detail::ObjectSpec spec{kind, type_name<T>::value, sizeof(T), alignof(T), length,
                                  intent == detail::Intent::open ? 0 : bytes_for(length)};
    auto init = [](detail::ObjectHeader* object, const void* context) {
      auto* b = reinterpret_cast<detail::LockBlock*>(object);
      if (detail::init_lock(b->lock, false) != 0) return false;
      T* elements = data(*b);
      for (std::uint64_t i = 0; i < object->length; ++i)
        ::new (static_cast<void*>(elements + i)) T(*static_cast<const T*>(context));
      return true;
    };
    return Array(detail::place(segment, name, spec, intent, init, initial).handle);
  }
};

template <class T>
Array<T> Segment::create_array(std::string_view name, std::size_t length, const T& initial) {
  return Array<T>::place(*this, name, detail::Intent::create, length, &initial);
}
template <class T> Array<T> Segment::open_array(std::string_view name) {
  return Array<T>::place(*this, name, detail::Intent::open, 0, nullptr);
}
template <class T>
Array<T> Segment::array(std::string_view name, std::size_t length, const T& initial) {
  return Array<T>::place(*this, name, detail::Intent::create_or_open, length, &initial);
}

}  // namespace procshare
