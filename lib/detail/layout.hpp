// Internal: the segment's own layout (header and directory) and the process-local
// mapping behind every Segment handle.
#pragma once

#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <atomic>
#include <cstdint>
#include <string>

namespace procshare::detail {

inline constexpr std::uint64_t segment_magic = 0x314d48534f435250ULL;  // "PRCOSHM1"
inline constexpr std::uint32_t layout_version = 1;
inline constexpr std::uint32_t ready_word = 0x52454459;  // "READY"
inline constexpr std::size_t max_name_length = 200;       // segment names
inline constexpr std::size_t max_object_name_length = 63;
inline constexpr std::size_t max_type_name_length = 47;
inline constexpr std::uint32_t max_directory_slots = 65536;

// Directory slot states; each transition is one aligned store under the directory lock.
enum EntryState : std::uint32_t { entry_free = 0, entry_reserved = 1, entry_ready = 2 };

// One directory slot. Fields are written while the slot is FREE, then state is stored.
struct Entry {
  char name[max_object_name_length + 1];
  char type[max_type_name_length + 1];
  std::uint64_t tag_hash;
  std::uint64_t offset;   // of the object's ObjectHeader
  std::uint64_t bytes;    // total, header included
  std::uint64_t length;   // element count
  std::uint32_t kind;     // ObjectKind
  std::uint32_t elem_size;
  std::uint32_t elem_align;
  std::atomic<std::uint32_t> state;
};
static_assert(sizeof(Entry) % 8 == 0);

// The bytes an object of `kind` needs besides its elements (0: not a kind we know).
constexpr std::uint64_t minimum_object_bytes(ObjectKind kind) {
  switch (kind) {
    case ObjectKind::value:
    case ObjectKind::atomic:
    case ObjectKind::array:
    case ObjectKind::flag:
    case ObjectKind::mutex:
    case ObjectKind::recursive_mutex:
    case ObjectKind::semaphore:
    case ObjectKind::bounded_semaphore:
    case ObjectKind::event:
    case ObjectKind::condition: return 128;
    case ObjectKind::barrier: return 192;
    case ObjectKind::queue: return 192;
    case ObjectKind::pool: return 1024;
    case ObjectKind::vector:
    case ObjectKind::map:
    case ObjectKind::string: return 1280;  // the block and an arena of at least 1024 bytes
  }
  return 0;
}
// The bytes each of its `length` elements takes (0: the length takes no room).
constexpr std::uint64_t elements_bytes(ObjectKind kind, std::uint32_t elem_size) {
  switch (kind) {
    case ObjectKind::array: return elem_size;
    case ObjectKind::barrier: return 16;  // two watched-party slots per party
    case ObjectKind::queue: return elem_size;  // one slot per item
    default: return 0;
  }
}
// Whether objects of `kind` start with a RobustLock after their ObjectHeader.
constexpr bool has_lock(ObjectKind kind) {
  return kind == ObjectKind::value || kind == ObjectKind::array || kind == ObjectKind::mutex ||
         kind == ObjectKind::recursive_mutex || kind == ObjectKind::barrier ||
         kind == ObjectKind::queue || kind == ObjectKind::vector || kind == ObjectKind::map ||
         kind == ObjectKind::string;
}

// Offset 0 of every segment.
struct alignas(64) Header {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t header_bytes;      // sizeof(Header)
  Uuid uuid;
  std::int32_t creator_pid;
  std::uint32_t entry_bytes;       // sizeof(Entry)
  std::uint64_t creator_start_time;  // /proc/PID/stat field 22, clock ticks since boot
  std::int64_t created_unix_time;    // seconds
  std::uint64_t size;              // bytes of the file
  std::uint64_t directory_offset;
  std::uint64_t directory_slots;
  std::uint64_t data_offset;       // first object byte
  std::atomic<std::uint64_t> bump; // next free byte; only grows
  alignas(64) RobustLock lock;     // guards the directory and bump
  alignas(64) std::atomic<std::uint32_t> ready;  // ready_word, stored last at creation
};

// One process's mapping of a segment; shared by every Segment handle on it here.
struct Mapping {
  std::string name;
  boost::interprocess::shared_memory_object file;
  boost::interprocess::mapped_region region;
  std::size_t registry_slot = max_mapped_segments;  // none until validated and registered
  pid_t creator_pid = 0;  // the pid that created it through this mapping, or 0

  Header& header() const { return *static_cast<Header*>(region.get_address()); }
  std::byte* base() const { return static_cast<std::byte*>(region.get_address()); }
  std::size_t size() const { return region.get_size(); }
  Entry* directory() const {
    return reinterpret_cast<Entry*>(base() + header().directory_offset);
  }
  int fd() const { return file.get_mapping_handle().handle; }
  ~Mapping();
};

}  // namespace procshare::detail
