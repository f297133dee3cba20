// The handle registry: which segments this process has mapped (slots read lock-free by
// every handle access, see segment.hpp), the Mapping's close (which keeps a segment mapped
// while this process holds a lock inside it), and the errors of handles that no longer
// resolve (naming the segment and object even after the segment was closed).
#include <procshare/segment.hpp>

#include "detail/layout.hpp"
#include "detail/names.hpp"
#include "detail/segment_internal.hpp"

#include <fmt/format.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <new>
#include <utility>
#include <vector>


namespace procshare::detail {

RegistrySlot registry_slots[max_mapped_segments];
std::atomic<std::uint32_t> registry_used{0};

namespace {

std::mutex registry_mutex;                                    // guards registration
std::weak_ptr<Mapping> registry_owners[max_mapped_segments];  // by slot

}  // namespace

std::shared_ptr<Mapping> find_mapped(const Uuid& uuid) {
  std::lock_guard guard(registry_mutex);
  for (std::uint32_t i = 0; i < registry_used.load(); ++i) {
    RegistrySlot& slot = registry_slots[i];
    if (slot.base.load() != nullptr && slot.uuid_high.load() == uuid.high &&
        slot.uuid_low.load() == uuid.low)
      if (auto mapping = registry_owners[i].lock()) return mapping;
  }
  return nullptr;
}

void register_mapping(const std::shared_ptr<Mapping>& mapping) {
  std::lock_guard guard(registry_mutex);
  std::uint32_t index = 0;
  const std::uint32_t used = registry_used.load();
  while (index < used && registry_slots[index].base.load() != nullptr) ++index;
  if (index == max_mapped_segments)
    throw InvalidArgument(mapping->name, "",
                          fmt::format("cannot map more than {} segments in one process",
                                      max_mapped_segments));
  RegistrySlot& slot = registry_slots[index];
  const Uuid uuid = mapping->header().uuid;
  slot.version.fetch_add(1, std::memory_order_acq_rel);  // odd: being changed
  slot.uuid_high.store(uuid.high, std::memory_order_relaxed);
  slot.uuid_low.store(uuid.low, std::memory_order_relaxed);
  slot.size.store(mapping->size(), std::memory_order_relaxed);
  slot.base.store(mapping->base(), std::memory_order_release);
  slot.version.fetch_add(1, std::memory_order_release);
  registry_owners[index] = mapping;
  mapping->registry_slot = index;
  if (index == used) registry_used.store(used + 1, std::memory_order_release);
}

namespace {

std::shared_ptr<Mapping> mapping_of(const Uuid& uuid) { return find_mapped(uuid); }

// The last segments this process closed, with their objects' names by offset, so that a
// stale handle's error can name its segment and object (guarded by registry_mutex).
struct ClosedSegment {
  Uuid uuid;
  std::string name;
  std::vector<std::pair<std::uint64_t, std::string>> objects;
};
constexpr std::size_t closed_segments_kept = 16;
std::vector<ClosedSegment> closed_segments;  // oldest first

// Whether a thread of this process holds `lock` (glibc keeps the holder's tid in it).
bool held_here(const RobustLock& lock) {
  const int tid = lock.mutex.__data.__owner;
  return tid > 0 && ::syscall(SYS_tgkill, ::getpid(), tid, 0) == 0;
}

// Whether a thread of this process holds a lock inside `mapping`.
bool holds_lock_inside(const Mapping& mapping) {
  if (held_here(mapping.header().lock)) return true;
  const Entry* entries = mapping.directory();
  for (std::uint64_t i = 0; i < mapping.header().directory_slots; ++i) {
    const Entry& entry = entries[i];
    if (entry.state.load(std::memory_order_acquire) != entry_ready ||
        !has_lock(static_cast<ObjectKind>(entry.kind)) || !entry_in_bounds(mapping, entry))
      continue;
    if (held_here(reinterpret_cast<const LockBlock*>(mapping.base() + entry.offset)->lock))
      return true;
  }
  return false;
}

}  // namespace

Mapping::~Mapping() {
  if (region.get_address() == nullptr || registry_slot >= max_mapped_segments) return;
  {
    std::lock_guard guard(registry_mutex);
    RegistrySlot& slot = registry_slots[registry_slot];
    if (slot.base.load() == base()) {
      slot.version.fetch_add(1, std::memory_order_acq_rel);  // odd: being changed
      slot.base.store(nullptr, std::memory_order_release);
      slot.uuid_high.store(0, std::memory_order_relaxed);
      slot.uuid_low.store(0, std::memory_order_relaxed);
      slot.version.fetch_add(1, std::memory_order_release);
      registry_owners[registry_slot].reset();
      ClosedSegment closed{header().uuid, name, {}};
      const Entry* entries = directory();
      for (std::uint64_t i = 0; i < header().directory_slots; ++i)
        if (entries[i].state.load(std::memory_order_acquire) == entry_ready)
          closed.objects.emplace_back(entries[i].offset, std::string(entry_name(entries[i])));
      if (closed_segments.size() == closed_segments_kept) closed_segments.erase(closed_segments.begin());
      closed_segments.push_back(std::move(closed));
    }
  }
  // Unmapping a lock this process holds would hide it from the kernel's robust-futex
  // cleanup: if the holder then died, every other process would wait on it for ever.
  // Such a mapping stays mapped (and the holder can still unlock through its guard).
  if (holds_lock_inside(*this)) {
    std::fprintf(stderr,
                 "procshare: segment '%s' closed while this process holds a lock inside it; "
                 "keeping its memory mapped\n",
                 name.c_str());
    new boost::interprocess::mapped_region(std::move(region));  // deliberately never unmapped
  }
}

// ---------------------------------------------------------------- handles

void throw_unresolved(const HandleCore& handle, ObjectKind kind) {
  if (handle.segment == Uuid{})
    throw NotFound("", std::string(to_string(kind)),
                   "empty handle (default-constructed, never assigned an object)");
  const auto mapping = mapping_of(handle.segment);
  if (!mapping) {
    std::unique_lock guard(registry_mutex);
    for (const ClosedSegment& closed : closed_segments) {
      if (!(closed.uuid == handle.segment)) continue;
      std::string object = fmt::format("{} at offset {}", to_string(kind), handle.offset);
      for (const auto& [offset, name] : closed.objects)
        if (offset == handle.offset) object = describe_object(kind, name);
      const std::string segment = closed.name;
      guard.unlock();
      throw NotFound(segment, object,
                     "its segment is no longer open in this process (it was closed, or removed "
                     "and recreated)");
    }
  }
  if (!mapping)
    throw NotFound("", std::string(to_string(kind)),
                   fmt::format("its segment (uuid {:016x}{:016x}) is not open in this process: "
                               "it was closed, or removed and recreated",
                               handle.segment.high, handle.segment.low));
  const std::string object = describe(handle, kind);
  if (handle.offset % 64 != 0 || handle.offset >= mapping->size())
    throw CorruptSegment(mapping->name, object,
                         fmt::format("handle offset {} lies outside the segment", handle.offset));
  throw TypeMismatch(mapping->name, object, "the handle was made for another type of object");
}

std::string segment_name(const HandleCore& handle) {
  const auto mapping = mapping_of(handle.segment);
  return mapping ? mapping->name : std::string();
}

std::string object_name(const HandleCore& handle) {
  const auto mapping = mapping_of(handle.segment);
  if (!mapping) return {};
  const Entry* entries = mapping->directory();
  for (std::uint64_t i = 0; i < mapping->header().directory_slots; ++i)
    if (entries[i].state.load(std::memory_order_acquire) == entry_ready &&
        entries[i].offset == handle.offset)
      return std::string(entry_name(entries[i]));
  return {};
}

std::string describe(const HandleCore& handle, ObjectKind kind) {
  const std::string name = object_name(handle);
  if (name.empty()) return fmt::format("{} at offset {}", to_string(kind), handle.offset);
  return describe_object(kind, name);
}

}  // namespace procshare::detail
