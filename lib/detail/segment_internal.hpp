// Internal: what the segment's files share (segment.cpp, segment_checks.cpp,
// segment_registry.cpp, directory.cpp, segment_files.cpp): the handle registry's
// lookups, the checks every opener makes, the directory lock and small helpers.
#pragma once

#include "layout.hpp"

#include <boost/interprocess/shared_memory_object.hpp>

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace procshare::detail {

// ---------------------------------------------------------------- registry (segment_registry.cpp)

// The mapping of segment `uuid` if this process has it open, else null.
std::shared_ptr<Mapping> find_mapped(const Uuid& uuid);
// Enters a new mapping in the handle registry (a free slot, published under its seqlock).
void register_mapping(const std::shared_ptr<Mapping>& mapping);

// ---------------------------------------------------------------- checks (segment_checks.cpp)

// Calls the test fault hook (set_fault_hook) at a named step of creation or placement.
void fault_point(const char* step);

constexpr std::uint64_t align_up(std::uint64_t n, std::uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

std::uint64_t hash_tag(const ObjectSpec& spec);
// A random non-zero segment uuid (getrandom); Error naming `segment` if none can be drawn.
Uuid random_uuid(const std::string& segment);
// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot, which
// tells a live creator from an unrelated process that reuses its pid. 0 if unknown.
std::uint64_t process_start_time(pid_t pid);

// InvalidName unless `name` is a usable segment name (a file name in /dev/shm).
void validate_segment_name(std::string_view name);
// InvalidName unless `name` is a usable object name in `mapping`.
void validate_object_name(const Mapping& mapping, ObjectKind kind, std::string_view name);
// Rethrows an OS error (errno `error`) met while opening or creating segment `name`, as
// the procshare exception that fits it.
[[noreturn]] void rethrow_os(const std::string& name, std::string_view what, int error);
// Takes flock(`operation` | LOCK_NB), retrying for up to a second while another process
// holds a conflicting lock (a creator initialising, or a cleaner).
void lock_file(const Mapping& mapping, int operation);
// Unlinks `name` if it still names the file `fd` is open on.
void unlink_if_same(const std::string& name, int fd);

// The reason a header read from a file of `size` bytes is not a usable segment's, or ""
// if it is.
std::string invalid_header_reason(const Header& h, std::uint64_t size);
std::string invalid_header_reason(const Mapping& mapping);
// Why `entry` is not usable, or "" if it describes an object inside the segment, big
// enough for its kind and length, matching the object's own header, and (for a lockable
// kind) holding a lock that init_lock made.
std::string_view entry_problem(const Mapping& mapping, const Entry& entry);
bool entry_in_bounds(const Mapping& mapping, const Entry& entry);
std::string_view entry_name(const Entry& entry);
std::string_view entry_type(const Entry& entry);

// A process-local Mapping of the file `file` (not yet mapped), named `name`.
std::shared_ptr<Mapping> map_file(const std::string& name,
                                  boost::interprocess::shared_memory_object file);

// Holds the directory lock of `mapping`; discards entries left RESERVED by a process that
// died mid-allocation (only a holder of this lock can be in the middle of one). Waits at
// most the directory wait limit (set_lock_wait_limits), then throws Timeout.
class DirectoryLock {
public:
  explicit DirectoryLock(Mapping& mapping);
  ~DirectoryLock() { detail::unlock(mapping_.header().lock); }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

private:
  Mapping& mapping_;
};

}  // namespace procshare::detail
