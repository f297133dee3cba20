// The checks every opener of a segment makes: names, headers, directory entries, the
// segment file's flock and the directory lock; the uuid and process start time a segment
// records; the test fault hook and the lock wait limits.
#include <procshare/segment.hpp>

#include "detail/layout.hpp"
#include "detail/names.hpp"
#include "detail/segment_internal.hpp"

#include <fmt/format.h>

#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

namespace bip = boost::interprocess;

namespace procshare::detail {

namespace {

std::atomic<void (*)(const char*)> fault_hook{nullptr};

// How long directory work and inspection reads wait for a lock (see set_lock_wait_limits).
std::atomic<std::chrono::milliseconds> directory_wait_limit{std::chrono::seconds(5)};
std::atomic<std::chrono::milliseconds> inspection_wait_limit{std::chrono::seconds(1)};

}  // namespace


void fault_point(const char* step) {
  if (auto hook = fault_hook.load(std::memory_order_relaxed)) hook(step);
}

std::uint64_t hash_tag(const ObjectSpec& spec) {
  return tag_hash(spec.kind, spec.type, spec.elem_size, spec.elem_align);
}

Uuid random_uuid(const std::string& segment) {
  Uuid uuid;
  std::byte bytes[sizeof(Uuid)];
  std::size_t got = 0;
  while (got < sizeof bytes) {
  const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
  if (n < 0 && errno != EINTR)
    throw Error(segment, "", fmt::format("cannot draw a uuid: getrandom: {}", os_reason(errno)));
  if (n > 0) got += static_cast<std::size_t>(n);
  }
  std::memcpy(&uuid, bytes, sizeof uuid);
  if (uuid == Uuid{}) uuid.low = 1;
  return uuid;
}

// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot, which
// tells a live creator from an unrelated process that reuses its pid. 0 if unknown.
std::uint64_t process_start_time(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::size_t position = paren + 2;  // field 3 starts here
  for (int field = 3; field < 22 && position < text.size(); ++field)
  position = text.find(' ', position) + 1;
  return std::strtoull(text.c_str() + position, nullptr, 10);
}

void validate_segment_name(std::string_view name) {
  auto invalid = [&](std::string_view why) {
  throw InvalidName(printable(name), "", fmt::format("invalid segment name: {}", why));
  };
  if (name.empty()) invalid("it is empty");
  if (name.size() > max_name_length)
  invalid(fmt::format("it is {} characters long (at most {})", name.size(), max_name_length));
  if (name == "." || name == "..") invalid("'.' and '..' are not segment names");
  for (const char c : name) {
  if (c == '/') invalid("it contains '/'");
  const auto byte = static_cast<unsigned char>(c);
  if (byte <= 0x20 || byte >= 0x7f) invalid("it contains a space or non-printable character");
  }
}

void validate_object_name(const Mapping& mapping, ObjectKind kind, std::string_view name) {
  auto invalid = [&](std::string_view why) {
  throw InvalidName(mapping.name, describe_object(kind, name),
                    fmt::format("invalid object name: {}", why));
  };
  if (name.empty()) invalid("it is empty");
  if (name.size() > max_object_name_length)
  invalid(fmt::format("it is {} characters long (at most {})", name.size(),
                      max_object_name_length));
  for (const char c : name) {
  const auto byte = static_cast<unsigned char>(c);
  if (byte < 0x20 || byte >= 0x7f) invalid("it contains a non-printable character");
  }
}

// Rethrows a Boost exception met while opening or creating segment `name`.
[[noreturn]] void rethrow_os(const std::string& name, std::string_view what, int error) {
  const std::string detail = fmt::format("{}: {}", what, os_reason(error));
  switch (error) {
  case ENOENT: throw NotFound(name, "", fmt::format("{}: no such segment", what));
  case EEXIST: throw AlreadyExists(name, "", fmt::format("{}: it already exists", what));
  case EACCES:
  case EPERM: throw PermissionDenied(name, "", detail);
  case ENOSPC: throw SegmentFull(name, "", detail);
  case ENAMETOOLONG: throw InvalidName(name, "", detail);
  default: throw Error(name, "", detail);
  }
}

// Takes flock(`operation` | LOCK_NB), retrying for up to a second while another process
// holds a conflicting lock (a creator initialising, or a cleaner).
void lock_file(const Mapping& mapping, int operation) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (::flock(mapping.fd(), operation | LOCK_NB) != 0) {
  if (errno == EINTR) continue;
  if (errno != EWOULDBLOCK) rethrow_os(mapping.name, "cannot lock segment file", errno);
  if (std::chrono::steady_clock::now() > deadline)
    throw Timeout(mapping.name, "",
                  "another process has held the segment file's exclusive lock for over a second");
  std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Unlinks `name` if it still names the file `fd` is open on.
void unlink_if_same(const std::string& name, int fd) {
  struct stat mine{}, named{};
  if (::fstat(fd, &mine) != 0) return;
  if (::stat(fmt::format("/dev/shm/{}", name).c_str(), &named) != 0) return;
  if (mine.st_ino != named.st_ino || mine.st_dev != named.st_dev) return;
  ::shm_unlink(fmt::format("/{}", name).c_str());
}

// The reason a header read from a file of `size` bytes is not a usable segment's, or ""
// if it is.
std::string invalid_header_reason(const Header& h, std::uint64_t size) {
  if (h.magic != segment_magic) return "not a procshare segment (bad magic number)";
  if (h.version != layout_version)
  return fmt::format("layout version {}, this library reads version {}", h.version,
                     layout_version);
  if (h.header_bytes != sizeof(Header) || h.entry_bytes != sizeof(Entry))
  return "header or directory entry size does not match this library";
  if (h.ready.load(std::memory_order_acquire) != ready_word)
  return "not fully initialised (its creator died while creating it)";
  if (h.size != size)
  return fmt::format("header says {} bytes but the file has {} (truncated?)", h.size, size);
  // Checked one bound at a time, so that no crafted value can overflow a sum.
  if (h.directory_offset < sizeof(Header) || h.directory_offset % 64 != 0 ||
    h.directory_offset > size || h.directory_slots == 0 ||
    h.directory_slots > max_directory_slots ||
    h.directory_slots * sizeof(Entry) > size - h.directory_offset ||
    h.data_offset < h.directory_offset + h.directory_slots * sizeof(Entry) ||
    h.data_offset % 64 != 0 || h.data_offset > size)
  return "directory lies outside the segment";
  const std::uint64_t bump = h.bump.load(std::memory_order_relaxed);
  if (bump < h.data_offset || bump > size) return "allocation pointer lies outside the segment";
  if (!lock_intact(h.lock, false)) return "its directory lock is not a procshare lock";
  return "";
}

std::string invalid_header_reason(const Mapping& mapping) {
  return invalid_header_reason(mapping.header(), mapping.size());
}

// Why `entry` is not usable, or "" if it describes an object inside the segment, big
// enough for its kind and length, matching the object's own header, and (for a lockable
// kind) holding a lock that init_lock made.
std::string_view entry_problem(const Mapping& mapping, const Entry& entry) {
  constexpr std::string_view outside = "its directory entry points outside the segment";
  const Header& h = mapping.header();
  if (entry.offset < h.data_offset || entry.offset % 64 != 0 || entry.offset > mapping.size() ||
    entry.bytes > mapping.size() - entry.offset)
  return outside;
  const auto kind = static_cast<ObjectKind>(entry.kind);
  const std::uint64_t fixed = minimum_object_bytes(kind);
  if (fixed == 0 || entry.bytes < fixed) return outside;
  const std::uint64_t per_element = elements_bytes(kind, entry.elem_size);
  if (per_element != 0 && entry.length > (entry.bytes - fixed) / per_element) return outside;
  const auto* object = reinterpret_cast<const ObjectHeader*>(mapping.base() + entry.offset);
  if (object->tag_hash != entry.tag_hash || object->kind != entry.kind ||
    object->length != entry.length)
  return "its directory entry does not match the object's own header";
  // A lock that init_lock did not make is never handed to glibc (see lock_intact).
  if (has_lock(kind) && !lock_intact(reinterpret_cast<const LockBlock*>(object)->lock,
                                   kind == ObjectKind::recursive_mutex))
  return "its lock is not a procshare lock (robust, process-shared)";
  return "";
}

bool entry_in_bounds(const Mapping& mapping, const Entry& entry) {
  return entry_problem(mapping, entry).empty();
}

std::string_view entry_name(const Entry& entry) {
  return {entry.name, ::strnlen(entry.name, sizeof entry.name)};
}
std::string_view entry_type(const Entry& entry) {
  return {entry.type, ::strnlen(entry.type, sizeof entry.type)};
}

DirectoryLock::DirectoryLock(Mapping& mapping) : mapping_(mapping) {
  // Directory work takes microseconds: a lock held for seconds is a wedged (or forged)
  // segment, reported rather than waited on for ever.
  const auto limit = directory_wait_limit.load(std::memory_order_relaxed);
  const int error = lock_until(mapping.header().lock, std::chrono::steady_clock::now() + limit);
  if (error == ETIMEDOUT)
    throw Timeout(mapping.name, "",
                  fmt::format("the directory lock has been held for over {} ms", limit.count()));
  if (error != 0)
    throw Error(mapping.name, "", fmt::format("cannot lock the directory: {}", os_reason(error)));
  Entry* entries = mapping.directory();
  for (std::uint64_t i = 0; i < mapping.header().directory_slots; ++i)
    if (entries[i].state.load(std::memory_order_relaxed) == entry_reserved)
      entries[i].state.store(entry_free, std::memory_order_release);
}

std::shared_ptr<Mapping> map_file(const std::string& name, bip::shared_memory_object file) {
  auto mapping = std::make_shared<Mapping>();
  mapping->name = name;
  mapping->file = std::move(file);
  return mapping;
}

void set_fault_hook(void (*hook)(const char*)) noexcept {
  fault_hook.store(hook, std::memory_order_relaxed);
}

void set_lock_wait_limits(std::chrono::milliseconds directory,
                        std::chrono::milliseconds inspection) noexcept {
  directory_wait_limit.store(directory, std::memory_order_relaxed);
  inspection_wait_limit.store(inspection, std::memory_order_relaxed);
}

Deadline inspection_deadline() noexcept {
  return std::chrono::steady_clock::now() + inspection_wait_limit.load(std::memory_order_relaxed);
}

}  // namespace procshare::detail
