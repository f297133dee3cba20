// Flag: an atomic boolean stored under a name in a Segment, for "stop now" and "someone
// found it" signals between processes.
//
// Shared: one 32-bit atomic word (0 clear, 1 set); no lock, so no owner death to handle:
//   every operation is one atomic instruction.
// Visibility: set() and clear() are release stores, is_set() an acquire load, and
//   test_and_set() a sequentially consistent exchange: whatever a process wrote before
//   set() is visible to a process that then sees is_set() return true.
// test_and_set() picks exactly one winner among racing processes: the one for which it
//   returns false (the flag was clear).
// Errors: TypeMismatch, SegmentFull, AlreadyExists, NotFound, InvalidName on creation or
//   opening; NotFound when the handle's segment is not mapped in this process.
#pragma once

#include <procshare/segment.hpp>

#include <atomic>
#include <cstdint>

namespace procshare {
namespace detail {

struct alignas(64) FlagBlock {
  ObjectHeader header;
  std::atomic<std::uint32_t> word;
};

}  // namespace detail

class Flag {
public:
  // An empty handle: every call throws NotFound until one is assigned.
  Flag() = default;

  // Sets the flag (release).
  void set() { word().store(1, std::memory_order_release); }
  // Clears the flag (release).
  void clear() { word().store(0, std::memory_order_release); }
  // Whether the flag is set (acquire).
  bool is_set() const { return word().load(std::memory_order_acquire) != 0; }
  // Sets the flag and returns whether it was already set: false for exactly one of any
  // number of racing callers.
  bool test_and_set() { return word().exchange(1, std::memory_order_seq_cst) != 0; }
  // The name it has in its segment (a directory lookup: not for hot paths).
  std::string name() const { return detail::object_name(core_); }
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

private:
  friend class Segment;
  explicit Flag(detail::HandleCore core) : core_(core) {}
  std::atomic<std::uint32_t>& word() const {
    auto* header = detail::resolve(core_, ObjectKind::flag, sizeof(detail::FlagBlock));
    return reinterpret_cast<detail::FlagBlock*>(header)->word;
  }

  detail::HandleCore core_;
};

}  // namespace procshare
