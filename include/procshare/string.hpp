// String: one growable string kept in the shared segment itself, under its own robust
// lock. The contract every container shares (its arena, the lock, visibility, owner death,
// SegmentFull, errors) is at the top of containers.hpp.
#pragma once

#include <procshare/detail/container.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace procshare {

// String: one shared string (a Manager().Value(c_char_p) that can grow).
class String : public detail::ContainerObject<detail::SharedString, ObjectKind::string> {
  using C = detail::SharedString;

public:
  // An empty handle: every call throws NotFound until one is assigned.
  String() = default;
  // A copy of the text.
  std::string load() const { return handle_.read([](const C& c) { return std::string(c.data(), c.size()); }); }
  // Replaces the text. Throws SegmentFull (unchanged), OwnerDied.
  void store(std::string_view text) { handle_.write([&](C& c) { c.assign(text.data(), text.size()); }); }
  // Appends to it. Throws SegmentFull (unchanged), OwnerDied.
  void append(std::string_view text) { handle_.write([&](C& c) { c.append(text.data(), text.size()); }); }
  std::size_t size() const { return handle_.read([](const C& c) { return c.size(); }); }
  // (poisoned, reset, owner_deaths, free_bytes, name, handle: see ContainerObject)

private:
  friend class Segment;
  explicit String(detail::HandleCore core) : ContainerObject(core) {}
};

inline String Segment::create_string(std::string_view name, std::size_t capacity) {
  return String(detail::ContainerHandle<detail::SharedString, ObjectKind::string>::place(*this, name, detail::Intent::create, "", capacity));
}
inline String Segment::open_string(std::string_view name) {
  return String(detail::ContainerHandle<detail::SharedString, ObjectKind::string>::place(*this, name, detail::Intent::open, "", 0));
}
inline String Segment::string(std::string_view name, std::size_t capacity) {
  return String(detail::ContainerHandle<detail::SharedString, ObjectKind::string>::place(*this, name, detail::Intent::create_or_open, "", capacity));
}

}  // namespace procshare
