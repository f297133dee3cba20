// Segment: creation, validation, the directory and allocator, the handle registry.
#include <procshare/array.hpp>
#include <procshare/flag.hpp>
#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>

#include "detail/layout.hpp"
#include "detail/names.hpp"

#include <boost/interprocess/exceptions.hpp>
#include <fmt/format.h>

#include <dirent.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

namespace bip = boost::interprocess;

namespace procshare {
namespace detail {

RegistrySlot registry_slots[max_mapped_segments];
std::atomic<std::uint32_t> registry_used{0};

namespace {

// ---------------------------------------------------------------- registry

std::mutex registry_mutex;                                    // guards registration
std::weak_ptr<Mapping> registry_owners[max_mapped_segments];  // by slot

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

// ---------------------------------------------------------------- helpers

std::atomic<void (*)(const char*)> fault_hook{nullptr};

// How long directory work and inspection reads wait for a lock (see set_lock_wait_limits).
std::atomic<std::chrono::milliseconds> directory_wait_limit{std::chrono::seconds(5)};
std::atomic<std::chrono::milliseconds> inspection_wait_limit{std::chrono::seconds(1)};

void fault_point(const char* step) {
  if (auto hook = fault_hook.load(std::memory_order_relaxed)) hook(step);
}

constexpr std::uint64_t align_up(std::uint64_t n, std::uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
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

// Holds the directory lock of `mapping`; discards entries left RESERVED by a process that
// died mid-allocation (only a holder of this lock can be in the middle of one).
class DirectoryLock {
public:
  explicit DirectoryLock(Mapping& mapping) : mapping_(mapping) {
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
  ~DirectoryLock() { detail::unlock(mapping_.header().lock); }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

private:
  Mapping& mapping_;
};

std::shared_ptr<Mapping> map_file(const std::string& name, bip::shared_memory_object file) {
  auto mapping = std::make_shared<Mapping>();
  mapping->name = name;
  mapping->file = std::move(file);
  return mapping;
}

}  // namespace

namespace {

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
    new bip::mapped_region(std::move(region));  // deliberately never unmapped
  }
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

// ---------------------------------------------------------------- Segment

using detail::Header;
using detail::Mapping;

Segment::Segment(std::shared_ptr<detail::Mapping> mapping, bool created)
    : mapping_(std::move(mapping)), created_(created) {}

Segment::Segment(Segment&& other) noexcept
    : mapping_(std::move(other.mapping_)),
      created_(std::exchange(other.created_, false)),
      keep_(other.keep_) {}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    Segment old(std::move(*this));
    mapping_ = std::move(other.mapping_);
    created_ = std::exchange(other.created_, false);
    keep_ = other.keep_;
  }
  return *this;
}

Segment::~Segment() {
  if (!mapping_) return;
  if (created_ && !keep_ && mapping_->creator_pid == ::getpid())
    detail::unlink_if_same(mapping_->name, mapping_->fd());
}

namespace {

// Closes a descriptor at scope exit.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Opens and validates `name`: the header first, before anything else is read.
// `most_permissions` is the widest mode accepted (PermissionDenied past it, the message
// ending with `limit`, what set it).
std::shared_ptr<Mapping> open_mapping(const std::string& name, const OpenOptions& options,
                                      std::uint32_t most_permissions, std::string_view limit) {
  using namespace detail;
  bip::shared_memory_object file;
  try {
    file = bip::shared_memory_object(bip::open_only, name.c_str(), bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    rethrow_os(name, "cannot open segment", e.get_native_error());
  }
  auto mapping = map_file(name, std::move(file));
  struct stat status{};
  if (::fstat(mapping->fd(), &status) != 0) rethrow_os(name, "cannot stat segment", errno);
  if (!S_ISREG(status.st_mode)) throw CorruptSegment(name, "", "not a regular file");
  if (status.st_uid != ::geteuid() && !options.allow_other_owner)
    throw PermissionDenied(name, "",
                           fmt::format("it is owned by uid {}, not by this process's uid {}",
                                       status.st_uid, ::geteuid()));
  lock_file(*mapping, LOCK_SH);
  const auto size = static_cast<std::uint64_t>(status.st_size);
  if (size < sizeof(Header))
    throw CorruptSegment(name, "",
                         size == 0 ? std::string("the file is empty")
                                   : fmt::format("the file is {} bytes, smaller than a segment "
                                                 "header ({} bytes)",
                                                 size, sizeof(Header)));
  try {
    mapping->region = bip::mapped_region(mapping->file, bip::read_write, 0, size);
  } catch (const bip::interprocess_exception& e) {
    rethrow_os(name, "cannot map segment", e.get_native_error());
  }
  if (const std::string reason = invalid_header_reason(*mapping); !reason.empty())
    throw CorruptSegment(name, "", reason);
  // (after the header: a file that is no segment at all says so first)
  if ((status.st_mode & 07777 & ~most_permissions) != 0)
    throw PermissionDenied(name, "",
                           fmt::format("its mode {:04o} is wider than the {:04o} {}",
                                       status.st_mode & 07777, most_permissions, limit));
  if (auto existing = find_mapped(mapping->header().uuid)) return existing;
  register_mapping(mapping);
  return mapping;
}

}  // namespace

Segment Segment::create(std::string_view name, std::size_t bytes, const SegmentOptions& options) {
  return detail::create_segment(name, bytes, options, UINT64_MAX);
}

Segment detail::create_segment(std::string_view name_view, std::size_t bytes,
                               const SegmentOptions& options, std::uint64_t reserved) {
  using namespace detail;
  validate_segment_name(name_view);
  const std::string name(name_view);
  if (options.permissions > 07777)
    throw InvalidArgument(name, "", fmt::format("permissions {:o} are not mode bits",
                                                options.permissions));
  if (options.max_objects == 0 || options.max_objects > max_directory_slots)
    throw InvalidArgument(name, "",
                          fmt::format("max_objects {} is out of range (1 to {})",
                                      options.max_objects, max_directory_slots));
  const std::uint64_t directory_offset = align_up(sizeof(Header), 64);
  const std::uint64_t data_offset =
      align_up(directory_offset + std::uint64_t{options.max_objects} * sizeof(Entry), 64);
  const std::uint64_t minimum = data_offset + 128;
  if (bytes < minimum)
    throw InvalidArgument(name, "",
                          fmt::format("{} bytes is too small: the header and a directory of {} "
                                      "objects need at least {}",
                                      bytes, options.max_objects, minimum));
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  if (bytes > max_segment_bytes)
    throw InvalidArgument(name, "",
                          fmt::format("{} bytes is more than the largest segment procshare maps "
                                      "({} bytes, 64 TiB)",
                                      bytes, max_segment_bytes));
  const std::uint64_t size = align_up(bytes, page);

  // 1. An anonymous file in /dev/shm, reserved and initialised while nobody can see it:
  //    a creator that dies here leaves nothing behind, and open() never meets a
  //    half-made segment.
  FdCloser file{::open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)};
  if (file.fd < 0) rethrow_os(name, "cannot create segment", errno);
  if (::fchmod(file.fd, options.permissions) != 0)
    rethrow_os(name, "cannot set permissions", errno);
  if (::ftruncate(file.fd, static_cast<off_t>(size)) != 0)
    rethrow_os(name, fmt::format("cannot size the segment to {} bytes", size), errno);
  const std::uint64_t reserve_now =
      reserved >= size ? size : std::min(size, align_up(std::max<std::uint64_t>(reserved, minimum), page));
  if (const int error = ::posix_fallocate(file.fd, 0, static_cast<off_t>(reserve_now)))
    rethrow_os(name, fmt::format("cannot reserve {} bytes in /dev/shm", reserve_now), error);
  void* memory = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.fd, 0);
  if (memory == MAP_FAILED) rethrow_os(name, "cannot map segment", errno);
  Header& h = *::new (memory) Header{};
  h.magic = segment_magic;
  h.version = layout_version;
  h.header_bytes = sizeof(Header);
  h.entry_bytes = sizeof(Entry);
  h.creator_pid = ::getpid();
  h.creator_start_time = process_start_time(h.creator_pid);
  h.created_unix_time = static_cast<std::int64_t>(::time(nullptr));
  h.size = size;
  h.directory_offset = directory_offset;
  h.directory_slots = options.max_objects;
  h.data_offset = data_offset;
  h.bump.store(data_offset);
  auto* entries = reinterpret_cast<Entry*>(static_cast<std::byte*>(memory) + directory_offset);
  for (std::uint64_t i = 0; i < h.directory_slots; ++i) ::new (&entries[i]) Entry{};
  int error = 0;
  try {
    h.uuid = random_uuid(name);
  } catch (...) {
    ::munmap(memory, size);
    throw;
  }
  const Uuid uuid = h.uuid;
  error = init_lock(h.lock, false);
  if (error == 0) {
    fault_point("header");
    h.ready.store(ready_word, std::memory_order_release);
  }
  ::munmap(memory, size);
  if (error != 0) rethrow_os(name, "cannot initialise the directory lock", error);

  // 2. Publish it under its name; link() fails if the name is taken: creation is exclusive.
  const std::string path = fmt::format("/dev/shm/{}", name);
  if (::linkat(AT_FDCWD, fmt::format("/proc/self/fd/{}", file.fd).c_str(), AT_FDCWD,
               path.c_str(), AT_SYMLINK_FOLLOW) != 0)
    rethrow_os(name, "cannot create segment", errno);

  // 3. Map it as any opener does (through Boost, holding the liveness lock).
  auto mapping = open_mapping(name, {}, 07777, "");  // (made by us, in the mode asked for)
  if (!(mapping->header().uuid == uuid))
    throw AlreadyExists(name, "", "cannot create segment: it was replaced as it was created");
  mapping->creator_pid = ::getpid();
  return Segment(std::move(mapping), true);
}

void detail::reserve(const Segment& segment, std::uint64_t offset, std::uint64_t bytes) {
  const Mapping& mapping = *segment.mapping_;
  if (offset > mapping.size() || bytes > mapping.size() - offset)
    throw InvalidArgument(mapping.name, "", fmt::format("cannot reserve bytes {} to {}: the segment has {}",
                                                       offset, offset + bytes, mapping.size()));
  if (bytes == 0) return;
  if (const int error = ::posix_fallocate(mapping.fd(), static_cast<off_t>(offset), static_cast<off_t>(bytes)))
    throw SegmentFull(mapping.name, "",
                      fmt::format("cannot reserve {} more bytes in /dev/shm: {}", bytes, os_reason(error)));
}

Segment Segment::open(std::string_view name, const OpenOptions& options) {
  detail::validate_segment_name(name);
  if (options.max_permissions > 07777)
    throw InvalidArgument(std::string(name), "",
                          fmt::format("max_permissions {:o} are not mode bits", options.max_permissions));
  return Segment(open_mapping(std::string(name), options, options.max_permissions,
                              "accepted (OpenOptions::max_permissions)"),
                 false);
}

Segment Segment::open_or_create(std::string_view name, std::size_t bytes,
                                const SegmentOptions& options) {
  detail::validate_segment_name(name);
  // Segments appear fully made (see create), so this loops only while other processes
  // remove the name between our create and our open.
  for (int attempt = 0;; ++attempt) {
    try {
      return create(name, bytes, options);
    } catch (const AlreadyExists&) {
    }
    try {
      return Segment(open_mapping(std::string(name), {}, options.permissions, "requested"), false);
    } catch (const NotFound&) {
      if (attempt == 100) throw;
    }
  }
}

namespace {

// A file in /dev/shm opened read-only, for list(), clean() and remove().
struct ReadOnlyFile {
  int fd = -1;
  explicit ReadOnlyFile(const std::string& path)
      : fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) {}
  ~ReadOnlyFile() {
    if (fd >= 0) ::close(fd);
  }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
};

// Why the file open on `fd`, of `size` bytes, is not a valid procshare segment, or "" if
// its header validates (invalid_header_reason, the check open() makes). Reads with pread.
std::string file_problem(int fd, std::uint64_t size) {
  using namespace detail;
  if (size == 0) return "the file is empty";
  if (size < sizeof(Header))
    return fmt::format("the file is {} bytes, smaller than a segment header ({} bytes)", size,
                       sizeof(Header));
  alignas(Header) std::byte buffer[sizeof(Header)];
  if (::pread(fd, buffer, sizeof buffer, 0) != static_cast<ssize_t>(sizeof buffer))
    return fmt::format("cannot read its header: {}", os_reason(errno));
  return invalid_header_reason(*reinterpret_cast<const Header*>(buffer), size);
}

}  // namespace

bool Segment::remove(std::string_view name_view, const RemoveOptions& options) {
  detail::validate_segment_name(name_view);
  const std::string name(name_view);
  const std::string path = "/dev/shm/" + name;
  if (!options.force) {
    ReadOnlyFile file(path);
    if (file.fd < 0) {
      if (errno == ENOENT) return false;
      detail::rethrow_os(name, "cannot remove segment", errno);
    }
    struct stat mine{};
    if (::fstat(file.fd, &mine) != 0) detail::rethrow_os(name, "cannot remove segment", errno);
    std::string problem = S_ISREG(mine.st_mode)
                              ? file_problem(file.fd, static_cast<std::uint64_t>(mine.st_size))
                              : std::string("not a regular file");
    if (!problem.empty())
      throw CorruptSegment(name, "",
                           fmt::format("not removed: {}{}",
                                       problem.starts_with("not a procshare segment")
                                           ? ""
                                           : "not a valid procshare segment: ",
                                       problem));
    // Unlink the file just checked, not one put in its place meanwhile.
    struct stat named{};
    if (::stat(path.c_str(), &named) != 0) return false;
    if (named.st_ino != mine.st_ino || named.st_dev != mine.st_dev)
      throw CorruptSegment(name, "", "not removed: the file was replaced while it was checked");
  }
  if (::shm_unlink(fmt::format("/{}", name).c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  detail::rethrow_os(name, "cannot remove segment", errno);
}

namespace {

// Whether some process holds a lock on the file (maps the segment).
bool file_in_use(int fd) {
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
    ::flock(fd, LOCK_UN);
    return false;
  }
  return true;
}

}  // namespace

std::vector<SegmentListing> Segment::list() {
  using namespace detail;
  std::vector<SegmentListing> result;
  DIR* directory = ::opendir("/dev/shm");
  if (directory == nullptr) return result;
  while (const dirent* item = ::readdir(directory)) {
    const std::string name = item->d_name;
    if (name == "." || name == "..") continue;
    const std::string path = "/dev/shm/" + name;
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    SegmentListing listing{name, false, "", static_cast<std::uint64_t>(st.st_size), 0, 0,
                           false, false, 0, 0,
                           std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_blocks) * 512,
                                                   static_cast<std::uint64_t>(st.st_size)),
                           false};
    ReadOnlyFile file(path);
    if (file.fd < 0) {
      listing.problem = fmt::format("cannot open: {}", os_reason(errno));
      result.push_back(std::move(listing));
      continue;
    }
    alignas(Header) std::byte buffer[sizeof(Header)];
    if (::pread(file.fd, buffer, sizeof buffer, 0) != static_cast<ssize_t>(sizeof buffer)) {
      listing.problem = st.st_size == 0 ? "empty" : "foreign";
      result.push_back(std::move(listing));
      continue;
    }
    const auto& h = *reinterpret_cast<const Header*>(buffer);
    if (h.magic != segment_magic) {
      listing.problem = "foreign";
      result.push_back(std::move(listing));
      continue;
    }
    listing.problem = invalid_header_reason(h, listing.size);
    listing.in_use = file_in_use(file.fd);
    if (listing.problem.empty()) {
      listing.procshare = true;
      listing.used = h.bump.load();
      listing.creator_pid = h.creator_pid;
      listing.creator_alive = ::kill(h.creator_pid, 0) == 0 &&
                              process_start_time(h.creator_pid) == h.creator_start_time;
      listing.age_seconds = static_cast<std::int64_t>(::time(nullptr)) - h.created_unix_time;
      std::vector<Entry> entries(h.directory_slots);
      const auto bytes = static_cast<ssize_t>(entries.size() * sizeof(Entry));
      if (::pread(file.fd, entries.data(), static_cast<std::size_t>(bytes),
                  static_cast<off_t>(h.directory_offset)) == bytes)
        for (const Entry& e : entries) {
          if (e.state.load() != entry_ready) continue;
          ++listing.objects;
          listing.pool = listing.pool || e.kind == static_cast<std::uint32_t>(ObjectKind::pool);
        }
    }
    result.push_back(std::move(listing));
  }
  ::closedir(directory);
  std::sort(result.begin(), result.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return result;
}

std::vector<std::string> Segment::clean(bool dry_run) {
  std::vector<std::string> removed;
  for (const SegmentListing& listing : list()) {
    if (!listing.procshare || listing.in_use) continue;
    const std::string path = "/dev/shm/" + listing.name;
    ReadOnlyFile file(path);
    if (file.fd < 0) continue;
    // Hold the exclusive lock while removing: nobody can start mapping it meanwhile.
    if (::flock(file.fd, LOCK_EX | LOCK_NB) != 0) continue;
    struct stat mine{}, named{};
    if (::fstat(file.fd, &mine) != 0 || ::stat(path.c_str(), &named) != 0 ||
        mine.st_ino != named.st_ino || mine.st_dev != named.st_dev)
      continue;
    if (!dry_run && ::shm_unlink(("/" + listing.name).c_str()) != 0) continue;
    removed.push_back(listing.name);
  }
  return removed;
}

const std::string& Segment::name() const noexcept {
  static const std::string none;
  return mapping_ ? mapping_->name : none;
}
std::size_t Segment::size() const noexcept { return mapping_ ? mapping_->size() : 0; }
std::size_t Segment::used() const noexcept {
  return mapping_ ? mapping_->header().bump.load(std::memory_order_relaxed) : 0;
}
std::size_t Segment::reserved() const noexcept {
  struct stat st{};
  if (!mapping_ || ::fstat(mapping_->fd(), &st) != 0) return 0;
  return std::min<std::size_t>(static_cast<std::size_t>(st.st_blocks) * 512, mapping_->size());
}
pid_t Segment::creator_pid() const noexcept { return mapping_ ? mapping_->header().creator_pid : 0; }
bool Segment::created() const noexcept { return created_; }
void Segment::keep(bool keep) noexcept { keep_ = keep; }
detail::Uuid Segment::uuid() const noexcept {
  return mapping_ ? mapping_->header().uuid : detail::Uuid{};
}

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
