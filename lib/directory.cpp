// The directory: placing an object by name (create, open or either, checking kind, type
// and length; allocating from the bump pointer), listing objects (Segment::objects), the
// untyped objects' factories (Mutex, RecursiveMutex, Flag) and the array errors.
#include <procshare/array.hpp>
#include <procshare/flag.hpp>
#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>

#include "detail/layout.hpp"
#include "detail/names.hpp"
#include "detail/segment_internal.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace procshare {
namespace detail {

// ---------------------------------------------------------------- place

Placement place(Segment& segment, std::string_view name, const ObjectSpec& spec, Intent intent,
                InitFn init, const void* context) {
  if (!segment.mapping_)
    throw NotFound("", describe_object(spec.kind, name), "the Segment handle was moved from");
  Mapping& mapping = *segment.mapping_;
  validate_object_name(mapping, spec.kind, name);
  const std::string object = describe_object(spec.kind, name);
  const std::uint64_t tag_hash = hash_tag(spec);
  Header& h = mapping.header();
  Entry* entries = mapping.directory();

  DirectoryLock held(mapping);
  Entry* free_slot = nullptr;
  for (std::uint64_t i = 0; i < h.directory_slots; ++i) {
    Entry& entry = entries[i];
    const auto state = entry.state.load(std::memory_order_acquire);
    if (state == entry_free) {
      if (free_slot == nullptr) free_slot = &entry;
      continue;
    }
    if (entry_name(entry) != name) continue;
    if (intent == Intent::create)
      throw AlreadyExists(mapping.name, object, "an object of that name already exists");
    const auto stored_kind = static_cast<ObjectKind>(entry.kind);
    if (entry.kind != static_cast<std::uint32_t>(spec.kind) || entry_type(entry) != spec.type ||
        (spec.elem_size != 0 && entry.elem_size != spec.elem_size) ||
        entry.elem_align != spec.elem_align ||
        (spec.length != 0 && entry.length != spec.length)) {
      const std::string created = describe_type(stored_kind, entry_type(entry), entry.length);
      const std::string asked =
          describe_type(spec.kind, spec.type, spec.length ? spec.length : entry.length);
      // Alike by name, they differ in element size (a string queue's item size, say).
      const std::string sizes =
          created != asked ? std::string()
                           : fmt::format(" (elements of {} bytes, not {})", entry.elem_size,
                                         spec.elem_size);
      throw TypeMismatch(mapping.name, object,
                         fmt::format("type mismatch: it was created as {}, not {}{}", created,
                                     asked, sizes));
    }
    if (const auto problem = entry_problem(mapping, entry); !problem.empty())
      throw CorruptSegment(mapping.name, object, problem);
    return {{h.uuid, entry.offset, entry.tag_hash}, entry.length, entry.bytes, false};
  }
  if (intent == Intent::open) throw NotFound(mapping.name, object, "no object of that name");
  if (spec.type.size() > max_type_name_length ||
      std::any_of(spec.type.begin(), spec.type.end(),
                  [](char c) { return c <= ' ' || c >= 0x7f; }))
    throw InvalidName(mapping.name, object,
                      fmt::format("type name '{}' is not up to {} printable characters without "
                                  "spaces",
                                  printable(spec.type), max_type_name_length));
  if (free_slot == nullptr)
    throw SegmentFull(mapping.name, object,
                      fmt::format("the directory is full ({} objects)", h.directory_slots));
  const std::uint64_t offset = align_up(h.bump.load(std::memory_order_relaxed), 64);
  const std::uint64_t bytes = spec.bytes > mapping.size() ? spec.bytes : align_up(spec.bytes, 64);
  if (offset > mapping.size() || bytes > mapping.size() - offset)
    throw SegmentFull(mapping.name, object,
                      fmt::format("needs {} bytes, but only {} of the segment's {} are free",
                                  spec.bytes, mapping.size() - std::min<std::uint64_t>(offset, mapping.size()),
                                  mapping.size()));

  // Fill the slot while it is FREE (nobody reads it), then publish each step with one store.
  Entry& entry = *free_slot;
  std::memset(entry.name, 0, sizeof entry.name);
  std::memcpy(entry.name, name.data(), name.size());
  std::memset(entry.type, 0, sizeof entry.type);
  std::memcpy(entry.type, spec.type.data(), spec.type.size());
  entry.tag_hash = tag_hash;
  entry.offset = offset;
  entry.bytes = bytes;
  entry.length = spec.length;
  entry.kind = static_cast<std::uint32_t>(spec.kind);
  entry.elem_size = spec.elem_size;
  entry.elem_align = spec.elem_align;
  entry.state.store(entry_reserved, std::memory_order_release);
  fault_point("reserved");
  h.bump.store(offset + bytes, std::memory_order_release);
  fault_point("bumped");
  std::byte* memory = mapping.base() + offset;
  // (no memset: memory above the bump pointer has never been written, and tmpfs pages
  // reserved by posix_fallocate read as zeros)
  auto* header = ::new (memory) ObjectHeader{tag_hash, static_cast<std::uint32_t>(spec.kind),
                                             spec.elem_size, spec.length};
  if (!init(header, context)) {
    entry.state.store(entry_free, std::memory_order_release);
    throw Error(mapping.name, object, fmt::format("cannot initialise its lock: {}", os_reason(errno ? errno : EINVAL)));
  }
  fault_point("constructed");
  entry.state.store(entry_ready, std::memory_order_release);
  return {{h.uuid, offset, tag_hash}, spec.length, bytes, true};
}

}  // namespace detail

std::vector<ObjectInfo> Segment::objects() const {
  using namespace detail;
  std::vector<ObjectInfo> result;
  if (!mapping_) return result;
  Mapping& mapping = *mapping_;
  DirectoryLock held(mapping);
  const Entry* entries = mapping.directory();
  for (std::uint64_t i = 0; i < mapping.header().directory_slots; ++i) {
    const Entry& entry = entries[i];
    if (entry.state.load(std::memory_order_acquire) != entry_ready) continue;
    const auto kind = static_cast<ObjectKind>(entry.kind);
    if (const auto problem = entry_problem(mapping, entry); !problem.empty())
      throw CorruptSegment(mapping.name, describe_object(kind, entry_name(entry)), problem);
    ObjectInfo info{std::string(entry_name(entry)), kind, std::string(entry_type(entry)),
                    describe_type(kind, entry_type(entry), entry.length), entry.length,
                    entry.bytes, false, 0, 0};
    if (has_lock(kind)) {
      auto& block = *reinterpret_cast<LockBlock*>(mapping.base() + entry.offset);
      observe_deaths(block.lock);
      info.poisoned = block.lock.poisoned.load(std::memory_order_relaxed) != 0;
      info.owner_deaths = block.lock.deaths.load(std::memory_order_relaxed);
      info.last_dead_owner = block.lock.last_dead_pid.load(std::memory_order_relaxed);
    }
    result.push_back(std::move(info));
  }
  return result;
}

// ---------------------------------------------------------------- untyped objects

namespace {

template <ObjectKind K>
detail::HandleCore place_lock(Segment& segment, std::string_view name, detail::Intent intent) {
  const detail::ObjectSpec spec{K, "", 0, 0, 1,
                                intent == detail::Intent::open ? 0 : sizeof(detail::LockBlock)};
  auto init = [](detail::ObjectHeader* object, const void*) {
    return detail::init_lock(reinterpret_cast<detail::LockBlock*>(object)->lock,
                             K == ObjectKind::recursive_mutex) == 0;
  };
  return detail::place(segment, name, spec, intent, init, nullptr).handle;
}

}  // namespace

Mutex Segment::create_mutex(std::string_view name) {
  return Mutex(place_lock<ObjectKind::mutex>(*this, name, detail::Intent::create));
}
Mutex Segment::open_mutex(std::string_view name) {
  return Mutex(place_lock<ObjectKind::mutex>(*this, name, detail::Intent::open));
}
Mutex Segment::mutex(std::string_view name) {
  return Mutex(place_lock<ObjectKind::mutex>(*this, name, detail::Intent::create_or_open));
}
RecursiveMutex Segment::create_recursive_mutex(std::string_view name) {
  return RecursiveMutex(place_lock<ObjectKind::recursive_mutex>(*this, name, detail::Intent::create));
}
RecursiveMutex Segment::open_recursive_mutex(std::string_view name) {
  return RecursiveMutex(place_lock<ObjectKind::recursive_mutex>(*this, name, detail::Intent::open));
}
RecursiveMutex Segment::recursive_mutex(std::string_view name) {
  return RecursiveMutex(place_lock<ObjectKind::recursive_mutex>(*this, name, detail::Intent::create_or_open));
}

namespace {

detail::HandleCore place_flag(Segment& segment, std::string_view name, detail::Intent intent, bool initial) {
  const detail::ObjectSpec spec{ObjectKind::flag, "", 0, 0, 1,
                                intent == detail::Intent::open ? 0 : sizeof(detail::FlagBlock)};
  auto init = [](detail::ObjectHeader* object, const void* context) {
    reinterpret_cast<detail::FlagBlock*>(object)->word.store(*static_cast<const bool*>(context));
    return true;
  };
  return detail::place(segment, name, spec, intent, init, &initial).handle;
}

}  // namespace

Flag Segment::create_flag(std::string_view name, bool initial) {
  return Flag(place_flag(*this, name, detail::Intent::create, initial));
}
Flag Segment::open_flag(std::string_view name) {
  return Flag(place_flag(*this, name, detail::Intent::open, false));
}
Flag Segment::flag(std::string_view name, bool initial) {
  return Flag(place_flag(*this, name, detail::Intent::create_or_open, initial));
}

namespace detail {

void throw_index_out_of_range(const HandleCore& handle, std::size_t index, std::size_t size) {
  throw IndexOutOfRange(segment_name(handle), describe(handle, ObjectKind::array),
                        fmt::format("index {} out of range (size {})", index, size));
}

void throw_empty_array(const Segment& segment, std::string_view name) {
  throw InvalidArgument(segment.name(), describe_object(ObjectKind::array, name),
                        "length 0: an array needs at least one element");
}

}  // namespace detail
}  // namespace procshare
