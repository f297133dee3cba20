// Vector<T>: a growable array kept in the shared segment itself, under its own robust
// lock (Python's Manager().list(), without a manager process). The contract every
// container shares (its arena, the lock, visibility, owner death, SegmentFull, errors) is
// at the top of containers.hpp.
#pragma once

#include <procshare/detail/container.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace procshare {

// Vector<T>: a growable array in the segment (Python's Manager().list()).
template <class T> class Vector : public detail::ContainerObject<detail::VectorContainer<T>, ObjectKind::vector> {
  static_assert(detail::ContainerElement<T>,
                "procshare::Vector<T>: T must be std::string, or trivially copyable with a "
                "procshare::type_name<T>");
  using S = typename detail::Stored<T>::type;
  using C = detail::VectorContainer<T>;
  using Base = detail::ContainerObject<C, ObjectKind::vector>;
  using typename Base::Handle;
  using Base::handle_;

public:
  // Holds the vector's lock (marked dirty) for a read-modify-write sequence or iteration.
  // Move-only; unlocks on destruction, only in the process that took it. An exception
  // that unwinds through it poisons the vector only if a write was made through it (a
  // failed index check or a read leaves it as it was).
  class Guard : public detail::ContainerGuard<C, ObjectKind::vector> {
    using Base = detail::ContainerGuard<C, ObjectKind::vector>;
    using Base::c;
    using Base::handle_;
    using Base::mark_written;
    using Base::write;

  public:
    std::size_t size() const { return c().size(); }
    bool empty() const { return c().empty(); }
    // Element `index` (copied out). Throws IndexOutOfRange.
    T operator[](std::size_t index) const { return detail::Stored<T>::out(c().at(checked(index))); }
    void set(std::size_t index, const T& v) {
      checked(index);
      write([&] { c()[index] = detail::Stored<T>::in(v, handle_.allocator(c())); });
    }
    void push_back(const T& v) {
      write([&] { c().push_back(detail::Stored<T>::in(v, handle_.allocator(c()))); });
    }
    // Inserts `v` before element `index` (size() appends). Throws IndexOutOfRange if
    // index > size(), SegmentFull (nothing changed); neither poisons.
    void insert(std::size_t index, const T& v) {
      if (index > c().size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c().size());
      write([&] { c().insert(c().begin() + index, detail::Stored<T>::in(v, handle_.allocator(c()))); });
    }
    // Removes element `index`. Throws IndexOutOfRange.
    void erase(std::size_t index) {
      checked(index);
      mark_written();
      c().erase(c().begin() + index);
    }
    // Removes and returns element `index`. Throws IndexOutOfRange.
    T pop(std::size_t index) {
      T out = detail::Stored<T>::out(c()[checked(index)]);
      mark_written();
      c().erase(c().begin() + index);
      return out;
    }
    // Removes and returns the last element, or nullopt if empty.
    std::optional<T> pop_back() {
      if (c().empty()) return std::nullopt;
      T last = detail::Stored<T>::out(c().back());
      mark_written();
      c().pop_back();
      return last;
    }
    void clear() {
      mark_written();
      c().clear();
    }

  private:
    friend class Vector;
    explicit Guard(Handle handle) : Base(handle) {}
    std::size_t checked(std::size_t index) const {
      if (index >= c().size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c().size());
      return index;
    }
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Vector() = default;

  // Appends `v`. Throws SegmentFull (nothing changed), OwnerDied.
  void push_back(const T& v) {
    handle_.write([&](C& c) { c.push_back(detail::Stored<T>::in(v, handle_.allocator(c))); });
  }
  // Inserts `v` before element `index`, moving the later ones up (Python's
  // list.insert(i, v)); index == size() appends. Unlike Python, an index past the end is
  // an error rather than an append. Throws IndexOutOfRange if index > size(), SegmentFull
  // (nothing changed), OwnerDied.
  void insert(std::size_t index, const T& v) {
    handle_.write([&](C& c) {
      if (index > c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      c.insert(c.begin() + index, detail::Stored<T>::in(v, handle_.allocator(c)));
    });
  }
  // Removes element `index`, moving the later ones down (Python's del l[i]). Throws
  // IndexOutOfRange, OwnerDied.
  void erase(std::size_t index) {
    handle_.write([&](C& c) {
      if (index >= c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      c.erase(c.begin() + index);
    });
  }
  // Removes and returns element `index` (Python's list.pop(i)). Throws IndexOutOfRange
  // (an empty vector included: pop_back() is the form that returns nullopt instead),
  // OwnerDied.
  T pop(std::size_t index) {
    return handle_.write([&](C& c) {
      if (index >= c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      T out = detail::Stored<T>::out(c[index]);
      c.erase(c.begin() + index);
      return out;
    });
  }
  // Removes and returns the last element, or nullopt if empty (Python's list.pop(),
  // without its IndexError). Throws OwnerDied.
  std::optional<T> pop_back() {
    return handle_.write([](C& c) -> std::optional<T> {
      if (c.empty()) return std::nullopt;
      T last = detail::Stored<T>::out(c.back());
      c.pop_back();
      return last;
    });
  }
  // Element `index`. Throws IndexOutOfRange.
  T at(std::size_t index) const {
    return handle_.read([&](const C& c) {
      if (index >= c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      return detail::Stored<T>::out(c[index]);
    });
  }
  // Replaces element `index`. Throws IndexOutOfRange, SegmentFull, OwnerDied.
  void set(std::size_t index, const T& v) {
    handle_.write([&](C& c) {
      if (index >= c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      c[index] = detail::Stored<T>::in(v, handle_.allocator(c));
    });
  }
  std::size_t size() const { return handle_.read([](const C& c) { return c.size(); }); }
  void clear() { handle_.write([](C& c) { c.clear(); }); }
  // A copy of every element, taken under the lock.
  std::vector<T> snapshot() const {
    return handle_.read([](const C& c) {
      std::vector<T> out;
      out.reserve(c.size());
      for (const S& s : c) out.push_back(detail::Stored<T>::out(s));
      return out;
    });
  }
  // Locks the vector for a longer sequence (see Guard). Throws OwnerDied if poisoned.
  [[nodiscard]] Guard lock() { return Guard(handle_); }
  // (poisoned, reset, owner_deaths, free_bytes, name, handle: see ContainerObject)

private:
  friend class Segment;
  explicit Vector(detail::HandleCore core) : Base(core) {}
  static std::string type() { return std::string(detail::Stored<T>::name()); }
};

template <class T> Vector<T> Segment::create_vector(std::string_view name, std::size_t capacity) {
  return Vector<T>(Vector<T>::Handle::place(*this, name, detail::Intent::create, Vector<T>::type(), capacity));
}
template <class T> Vector<T> Segment::open_vector(std::string_view name) {
  return Vector<T>(Vector<T>::Handle::place(*this, name, detail::Intent::open, Vector<T>::type(), 0));
}
template <class T> Vector<T> Segment::vector(std::string_view name, std::size_t capacity) {
  return Vector<T>(Vector<T>::Handle::place(*this, name, detail::Intent::create_or_open, Vector<T>::type(), capacity));
}

}  // namespace procshare
