// The segments of /dev/shm as files: Segment::remove (only a valid segment, unless
// forced), Segment::list (each file's header read with pread, nothing mapped) and
// Segment::clean (removes segments that no process maps).
#include <procshare/segment.hpp>

#include "detail/layout.hpp"
#include "detail/names.hpp"
#include "detail/segment_internal.hpp"

#include <fmt/format.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <string>
#include <vector>

namespace procshare {

using detail::Header;

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

}  // namespace procshare
