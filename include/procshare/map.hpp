// Map<K, V>: an ordered map kept in the shared segment itself, under its own robust lock
// (Python's Manager().dict(), without a manager process). The contract every container
// shares (its arena, the lock, visibility, owner death, SegmentFull, errors) is at the top
// of containers.hpp.
#pragma once

#include <procshare/detail/container.hpp>

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <utility>

namespace procshare {

// Map<K, V>: an ordered map in the segment (Python's Manager().dict()). K is an integral
// type or std::string; V any container element.
template <class K, class V>
class Map : public detail::ContainerObject<detail::MapContainer<K, V>, ObjectKind::map> {
  static_assert((std::is_integral_v<K> && Shareable<K>) || std::is_same_v<K, std::string>,
                "procshare::Map<K, V>: K must be an integral type or std::string");
  static_assert(detail::ContainerElement<V>,
                "procshare::Map<K, V>: V must be std::string, or trivially copyable with a "
                "procshare::type_name<V>");
  using SK = typename detail::Stored<K>::type;
  using SV = typename detail::Stored<V>::type;
  using C = detail::MapContainer<K, V>;
  using Base = detail::ContainerObject<C, ObjectKind::map>;
  using typename Base::Handle;
  using Base::handle_;

  static void assign(C& c, const K& k, const V& v, const detail::ArenaAllocator<char>& a, bool& inserted) {
    auto it = c.find(k);
    if (it != c.end()) {
      it->second = detail::Stored<V>::in(v, a);
      inserted = false;
    } else {
      c.emplace(detail::Stored<K>::in(k, a), detail::Stored<V>::in(v, a));
      inserted = true;
    }
  }

public:
  // Holds the map's lock (marked dirty) for a read-modify-write sequence or iteration.
  // Move-only; unlocks on destruction, only in the process that took it. An exception
  // that unwinds through it poisons the map only if a write was made through it.
  class Guard : public detail::ContainerGuard<C, ObjectKind::map> {
    using Base = detail::ContainerGuard<C, ObjectKind::map>;
    using Base::c;
    using Base::handle_;
    using Base::mark_written;
    using Base::write;

  public:
    std::optional<V> get(const K& k) const {
      auto it = c().find(k);
      if (it == c().end()) return std::nullopt;
      return detail::Stored<V>::out(it->second);
    }
    bool contains(const K& k) const { return c().find(k) != c().end(); }
    // Inserts or replaces; returns whether it inserted. Throws SegmentFull (unchanged).
    bool insert_or_assign(const K& k, const V& v) {
      bool inserted = false;
      write([&] { assign(c(), k, v, handle_.allocator(c()), inserted); });
      return inserted;
    }
    bool erase(const K& k) {
      auto it = c().find(k);
      if (it == c().end()) return false;
      mark_written();
      c().erase(it);
      return true;
    }
    std::size_t size() const { return c().size(); }
    // Calls f(key, value) for every entry in key order (copies).
    template <class F> void for_each(F&& f) const {
      for (const auto& [k, v] : c()) f(detail::Stored<K>::out(k), detail::Stored<V>::out(v));
    }

  private:
    friend class Map;
    explicit Guard(Handle handle) : Base(handle) {}
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Map() = default;

  // Inserts or replaces k's value; returns whether it inserted. Throws SegmentFull
  // (nothing changed), OwnerDied.
  bool insert_or_assign(const K& k, const V& v) {
    return handle_.write([&](C& c) {
      bool inserted = false;
      assign(c, k, v, handle_.allocator(c), inserted);
      return inserted;
    });
  }
  // Removes k; returns whether it was there. Throws OwnerDied.
  bool erase(const K& k) {
    return handle_.write([&](C& c) {
      auto it = c.find(k);
      if (it == c.end()) return false;
      c.erase(it);
      return true;
    });
  }
  // A copy of k's value, or nullopt.
  std::optional<V> get(const K& k) const {
    return handle_.read([&](const C& c) -> std::optional<V> {
      auto it = c.find(k);
      if (it == c.end()) return std::nullopt;
      return detail::Stored<V>::out(it->second);
    });
  }
  bool contains(const K& k) const { return handle_.read([&](const C& c) { return c.find(k) != c.end(); }); }
  std::size_t size() const { return handle_.read([](const C& c) { return c.size(); }); }
  void clear() { handle_.write([](C& c) { c.clear(); }); }
  // A copy of every entry, taken under the lock.
  std::map<K, V> snapshot() const {
    return handle_.read([](const C& c) {
      std::map<K, V> out;
      for (const auto& [k, v] : c) out.emplace(detail::Stored<K>::out(k), detail::Stored<V>::out(v));
      return out;
    });
  }
  // Locks the map for a longer sequence (see Guard). Throws OwnerDied if poisoned.
  [[nodiscard]] Guard lock() { return Guard(handle_); }
  // (poisoned, reset, owner_deaths, free_bytes, name, handle: see ContainerObject)

private:
  friend class Segment;
  explicit Map(detail::HandleCore core) : Base(core) {}
  static std::string type() {
    return std::string(detail::Stored<K>::name()) + "," + std::string(detail::Stored<V>::name());
  }
};

template <class K, class V> Map<K, V> Segment::create_map(std::string_view name, std::size_t capacity) {
  return Map<K, V>(Map<K, V>::Handle::place(*this, name, detail::Intent::create, Map<K, V>::type(), capacity));
}
template <class K, class V> Map<K, V> Segment::open_map(std::string_view name) {
  return Map<K, V>(Map<K, V>::Handle::place(*this, name, detail::Intent::open, Map<K, V>::type(), 0));
}
template <class K, class V> Map<K, V> Segment::map(std::string_view name, std::size_t capacity) {
  return Map<K, V>(Map<K, V>::Handle::place(*this, name, detail::Intent::create_or_open, Map<K, V>::type(), capacity));
}

}  // namespace procshare
