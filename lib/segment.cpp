// Segment: the life of one segment file: creation (made whole before it gets its name),
// opening (validated before use), reservation of its pages, closing, and its accessors.
#include <procshare/segment.hpp>

#include "detail/layout.hpp"
#include "detail/names.hpp"
#include "detail/segment_internal.hpp"

#include <boost/interprocess/exceptions.hpp>
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <new>
#include <utility>

namespace bip = boost::interprocess;

namespace procshare {

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

}  // namespace procshare
