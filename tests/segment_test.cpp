// Segment: creation intent, validation of what is found in /dev/shm, the directory and
// allocator, ownership and removal.
#include "support.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <semaphore.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <random>

using namespace procshare;
using procshare::test::SegmentName;

namespace {

// Writes `bytes` as the whole content of /dev/shm/NAME.
void write_shm_file(const std::string& name, const std::string& bytes) {
  std::ofstream out("/dev/shm/" + name, std::ios::binary);
  out << bytes;
}

}  // namespace

TEST_SUITE("segment") {

TEST_CASE("create then open by name shares the same objects") {
  SegmentName name("share");
  auto created = Segment::create(name, 64 * 1024);
  CHECK(created.created());
  CHECK(created.size() == 64 * 1024);
  CHECK(created.creator_pid() == ::getpid());
  auto counter = created.create_value<long>("counter", 41);
  auto opened = Segment::open(name);
  CHECK_FALSE(opened.created());
  CHECK(opened.uuid() == created.uuid());
  auto again = opened.open_value<long>("counter");
  again += 1;
  CHECK(counter.load() == 42);
}

TEST_CASE("the size is rounded up to whole pages and used() grows with each object") {
  SegmentName name("size");
  auto segment = Segment::create(name, 40000);
  CHECK(segment.size() == 40960);
  const auto before = segment.used();
  segment.create_array<double>("a", 100);
  CHECK(segment.used() >= before + 100 * sizeof(double));
}

TEST_CASE("create of a name that exists throws AlreadyExists") {
  SegmentName name("exists");
  auto first = Segment::create(name, 64 * 1024);
  CHECK_THROWS_WITH_AS(Segment::create(name, 64 * 1024),
                       ("segment '" + name.str() + "': cannot create segment: it already exists")
                           .c_str(),
                       AlreadyExists);
  CHECK(first.open_or_create(name, 64 * 1024).uuid() == first.uuid());
}

TEST_CASE("open of a missing segment throws NotFound naming it") {
  SegmentName name("missing");
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       ("segment '" + name.str() + "': cannot open segment: no such segment")
                           .c_str(),
                       NotFound);
}

TEST_CASE("bad segment names throw InvalidName") {
  CHECK_THROWS_WITH_AS(Segment::create("", 65536), "invalid segment name: it is empty",
                       InvalidName);
  CHECK_THROWS_WITH_AS(Segment::open("a/b"), "segment 'a/b': invalid segment name: it contains '/'",
                       InvalidName);
  CHECK_THROWS_AS(Segment::open(".."), InvalidName);
  CHECK_THROWS_AS(Segment::open(std::string(201, 'x')), InvalidName);
  CHECK_THROWS_WITH_AS(Segment::open("tab\there"),
                       "segment 'tab\\x09here': invalid segment name: it contains a space or "
                       "non-printable character",
                       InvalidName);
  CHECK_THROWS_AS(Segment::remove("a/b"), InvalidName);
}

TEST_CASE("bad sizes and options throw InvalidArgument and create nothing") {
  SegmentName name("small");
  CHECK_THROWS_AS(Segment::create(name, 100), InvalidArgument);
  CHECK_THROWS_AS(Segment::create(name, 65536, {.permissions = 0600, .max_objects = 0}),
                  InvalidArgument);
  CHECK_THROWS_AS(Segment::create(name, 65536, {.permissions = 010000, .max_objects = 8}),
                  InvalidArgument);
  CHECK_FALSE(procshare::test::shm_exists(name));
}

TEST_CASE("new segments are 0600 whatever the umask, or the mode asked for") {
  SegmentName a("mode"), b("mode");
  const mode_t old = ::umask(0);
  auto first = Segment::create(a, 65536);
  ::umask(0077);
  auto second = Segment::create(b, 65536, {.permissions = 0640});
  ::umask(old);
  struct stat st{};
  REQUIRE(::stat(("/dev/shm/" + a.str()).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  REQUIRE(::stat(("/dev/shm/" + b.str()).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
}

TEST_CASE("an empty file in /dev/shm is CorruptSegment at once") {
  SegmentName name("empty");
  write_shm_file(name.str(), "");
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       ("segment '" + name.str() + "': the file is empty").c_str(),
                       CorruptSegment);
  REQUIRE(::chmod(("/dev/shm/" + name.str()).c_str(), 0600) == 0);  // not refused for its mode
  CHECK_THROWS_AS(Segment::open_or_create(name, 65536), CorruptSegment);
}

TEST_CASE("a short file is CorruptSegment naming its size") {
  SegmentName name("short");
  write_shm_file(name.str(), "0123456789");
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       doctest::Contains("the file is 10 bytes, smaller than a segment header"),
                       CorruptSegment);
}

TEST_CASE("a garbage file is CorruptSegment, not a crash") {
  SegmentName name("garbage");
  std::mt19937 random(7);
  std::string bytes(65536, '\0');
  for (auto& c : bytes) c = static_cast<char>(random());
  write_shm_file(name.str(), bytes);
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       ("segment '" + name.str() +
                        "': not a procshare segment (bad magic number)").c_str(),
                       CorruptSegment);
}

TEST_CASE("a truncated segment is CorruptSegment") {
  SegmentName name("truncated");
  auto segment = Segment::create(name, 256 * 1024);
  segment.create_value<int>("x", 1);
  REQUIRE(::truncate(("/dev/shm/" + name.str()).c_str(), 128 * 1024) == 0);
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       doctest::Contains("header says 262144 bytes but the file has 131072"),
                       CorruptSegment);
}

TEST_CASE("a segment larger than /dev/shm can hold is SegmentFull at create, leaving nothing") {
  SegmentName name("huge");
  const std::size_t terabyte = std::size_t{1} << 40;
  CHECK_THROWS_WITH_AS(Segment::create(name, terabyte),
                       doctest::Contains("cannot reserve 1099511627776 bytes in /dev/shm: No "
                                         "space left on device"),
                       SegmentFull);
  CHECK_FALSE(procshare::test::shm_exists(name));
}

TEST_CASE("an object too big for the segment is SegmentFull and changes nothing") {
  SegmentName name("full");
  auto segment = Segment::create(name, 64 * 1024);
  auto kept = segment.create_value<int>("kept", 5);
  const auto used = segment.used();
  CHECK_THROWS_WITH_AS(segment.create_array<double>("big", 100000),
                       doctest::Contains("array 'big': needs 800128 bytes, but only"),
                       SegmentFull);
  CHECK(segment.used() == used);
  CHECK(segment.objects().size() == 1);
  CHECK(kept.load() == 5);
  CHECK_THROWS_AS(segment.open_array<double>("big"), NotFound);
}

TEST_CASE("a full directory is SegmentFull naming the object count") {
  SegmentName name("directory");
  auto segment = Segment::create(name, 64 * 1024, {.max_objects = 2});
  segment.create_flag("a");
  segment.create_flag("b");
  CHECK_THROWS_WITH_AS(segment.create_flag("c"),
                       ("segment '" + name.str() + "': flag 'c': the directory is full (2 objects)")
                           .c_str(),
                       SegmentFull);
}

TEST_CASE("reopening a Value<long> as Value<double> throws TypeMismatch naming both types") {
  SegmentName name("mismatch");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_value<long>("x", 1);
  CHECK_THROWS_WITH_AS(segment.open_value<double>("x"),
                       ("segment '" + name.str() +
                        "': value 'x': type mismatch: it was created as value<int64>, not "
                        "value<float64>").c_str(),
                       TypeMismatch);
  CHECK_THROWS_WITH_AS(segment.open_atomic<long>("x"),
                       doctest::Contains("created as value<int64>, not atomic<int64>"),
                       TypeMismatch);
  segment.create_array<int>("a", 8);
  CHECK_THROWS_WITH_AS(segment.array<int>("a", 9),
                       doctest::Contains("created as array<int32, 8>, not array<int32, 9>"),
                       TypeMismatch);
  CHECK(segment.open_array<int>("a").size() == 8);
  CHECK(segment.open_value<long>("x").load() == 1);
}

TEST_CASE("create-or-open creates once and then opens, keeping the first value") {
  SegmentName name("intent");
  auto segment = Segment::create(name, 64 * 1024);
  segment.value<int>("v", 7);
  auto second = segment.value<int>("v", 99);
  CHECK(second.load() == 7);
  CHECK_THROWS_AS(segment.create_value<int>("v", 1), AlreadyExists);
  CHECK_THROWS_WITH_AS(segment.open_flag("nope"),
                       ("segment '" + name.str() + "': flag 'nope': no object of that name").c_str(),
                       NotFound);
}

TEST_CASE("bad object names throw InvalidName and create nothing") {
  SegmentName name("objnames");
  auto segment = Segment::create(name, 64 * 1024);
  CHECK_THROWS_AS(segment.create_value<int>("", 0), InvalidName);
  CHECK_THROWS_AS(segment.create_value<int>(std::string(64, 'n'), 0), InvalidName);
  CHECK_THROWS_AS(segment.create_value<int>("new\nline", 0), InvalidName);
  CHECK(segment.objects().empty());
}

TEST_CASE("objects() lists name, kind, type and length in creation order") {
  SegmentName name("objects");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_value<std::int64_t>("done", 0);
  segment.create_atomic<std::uint32_t>("hits", 0);
  segment.create_array<double>("results", 8);
  segment.create_flag("stop");
  segment.create_mutex("lock");
  const auto objects = segment.objects();
  REQUIRE(objects.size() == 5);
  CHECK(objects[0].name == "done");
  CHECK(objects[0].description == "value<int64>");
  CHECK(objects[1].description == "atomic<uint32>");
  CHECK(objects[2].kind == ObjectKind::array);
  CHECK(objects[2].type == "float64");
  CHECK(objects[2].length == 8);
  CHECK(objects[2].description == "array<float64, 8>");
  CHECK(objects[3].description == "flag");
  CHECK(objects[4].description == "mutex");
  CHECK_FALSE(objects[0].poisoned);
}

TEST_CASE("the creating handle removes the segment unless told to keep it") {
  SegmentName a("owner"), b("keep");
  { auto segment = Segment::create(a, 65536); }
  CHECK_FALSE(procshare::test::shm_exists(a));
  {
    auto segment = Segment::create(b, 65536);
    segment.keep();
  }
  CHECK(procshare::test::shm_exists(b));
  CHECK(Segment::remove(b));
  CHECK_FALSE(Segment::remove(b));
}

TEST_CASE("a forked child destroying the creating handle does not remove the segment") {
  SegmentName name("child");
  auto segment = Segment::create(name, 65536);
  const pid_t pid = procshare::test::run_child([&] {
    Segment moved(std::move(segment));  // destroyed in the child as it returns
  });
  CHECK(procshare::test::wait_child(pid).ok());
  CHECK(procshare::test::shm_exists(name));
}

TEST_CASE("a handle whose segment was closed, or removed and recreated, throws NotFound") {
  SegmentName name("recreated");
  Value<int> stale;
  {
    auto segment = Segment::create(name, 65536);
    stale = segment.create_value<int>("v", 3);
    CHECK(stale.load() == 3);
  }
  CHECK_THROWS_WITH_AS(stale.load(),
                       ("segment '" + name.str() + "': value 'v': its segment is no longer open in this "
                        "process (it was closed, or removed and recreated)").c_str(),
                       NotFound);
  auto segment = Segment::create(name, 65536);
  segment.create_value<int>("v", 4);
  CHECK_THROWS_AS(stale.load(), NotFound);
  Value<int> empty;
  CHECK_THROWS_WITH_AS(empty.load(),
                       "value: empty handle (default-constructed, never assigned an object)",
                       NotFound);
}

TEST_CASE("open_or_create creates the first time and opens the second") {
  SegmentName name("ooc");
  auto first = Segment::open_or_create(name, 65536);
  auto second = Segment::open_or_create(name, 65536);
  CHECK(first.created());
  CHECK_FALSE(second.created());
  CHECK(first.uuid() == second.uuid());
}

}  // TEST_SUITE

TEST_SUITE("segment") {

TEST_CASE("a segment another user cannot read is PermissionDenied for that user") {
  SegmentName name("perm");
  auto segment = Segment::create(name, 64 * 1024);  // 0600, owned by us
  const pid_t pid = procshare::test::run_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(3);  // become "nobody"
    try {
      Segment::open(name);
    } catch (const PermissionDenied& e) {
      ::_exit(std::string_view(e.what()).find("cannot open segment: Permission denied") !=
                      std::string_view::npos
                  ? 0
                  : 4);
    }
    ::_exit(5);
  });
  const auto status = procshare::test::wait_child(pid);
  if (::getuid() != 0) {
    CHECK(status.code == 3);  // only root can switch users: nothing to check here
  } else {
    CHECK(status.ok());
  }
}

TEST_CASE("open waits at most a second for a segment file someone holds exclusively") {
  SegmentName name("exclusive");
  auto segment = Segment::create(name, 64 * 1024);
  const int fd = ::open(("/dev/shm/" + name.str()).c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  // Our own mapping holds LOCK_SH through another descriptor: drop the segment first.
  segment.keep();
  { auto gone = std::move(segment); }
  REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       doctest::Contains("another process has held the segment file's "
                                         "exclusive lock for over a second"),
                       Timeout);
  ::close(fd);
  CHECK(Segment::open(name).objects().empty());
}

}  // TEST_SUITE

#include "../lib/detail/layout.hpp"

#include <sys/mman.h>

namespace {

// Maps the file of segment `name` to forge its contents, as a hostile or buggy writer.
struct ForgedFile {
  explicit ForgedFile(const std::string& name) {
    fd = ::open(("/dev/shm/" + name).c_str(), O_RDWR);
    struct stat st{};
    ::fstat(fd, &st);
    size = static_cast<std::size_t>(st.st_size);
    base = static_cast<std::byte*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  }
  ~ForgedFile() {
    ::munmap(base, size);
    ::close(fd);
  }
  detail::Header& header() { return *reinterpret_cast<detail::Header*>(base); }
  detail::Entry& entry(std::size_t i) {
    return reinterpret_cast<detail::Entry*>(base + header().directory_offset)[i];
  }
  int fd;
  std::size_t size;
  std::byte* base;
};

}  // namespace

TEST_SUITE("segment") {

TEST_CASE("a forged directory whose bounds overflow is CorruptSegment, not a crash") {
  SegmentName name("forgeddir");
  {
    auto segment = Segment::create(name, 64 * 1024);
    segment.keep();
  }
  {
    ForgedFile file(name.str());
    file.header().directory_slots = 65536;
    file.header().directory_offset = ~std::uint64_t{0} - 65536 * sizeof(detail::Entry) + 1;
  }
  CHECK_THROWS_WITH_AS(Segment::open(name), doctest::Contains("directory lies outside the segment"),
                       CorruptSegment);
}

TEST_CASE("a forged array length beyond its bytes is CorruptSegment on open") {
  SegmentName name("forgedarray");
  {
    auto segment = Segment::create(name, 64 * 1024);
    segment.create_array<int>("a", 4, 0);
    segment.keep();
  }
  {
    ForgedFile file(name.str());
    file.entry(0).length = std::uint64_t{1} << 40;
    reinterpret_cast<detail::ObjectHeader*>(file.base + file.entry(0).offset)->length = std::uint64_t{1} << 40;
  }
  auto segment = Segment::open(name);
  CHECK_THROWS_WITH_AS(segment.open_array<int>("a"),
                       doctest::Contains("its directory entry points outside the segment"),
                       CorruptSegment);
  CHECK_THROWS_AS(segment.objects(), CorruptSegment);
}

TEST_CASE("open never sees a half-made segment while another process creates and removes it") {
  SegmentName name("openrace");
  const pid_t churn = procshare::test::run_child([&] {
    for (int i = 0; i < 300; ++i) {
      auto segment = Segment::create(name, 64 * 1024);
      segment.create_value<int>("v", i);
    }
  });
  int opened = 0, missing = 0;
  while (::waitpid(churn, nullptr, WNOHANG) == 0) {
    try {
      auto segment = Segment::open(name);
      ++opened;
    } catch (const NotFound&) {
      ++missing;
    }
  }
  CHECK(opened + missing > 0);  // and no CorruptSegment escaped
}

TEST_CASE("handles keep resolving while other threads open and close other segments") {
  SegmentName name("registry"), other_a("registry-a"), other_b("registry-b");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<int>("v", 0);
  Segment::create(other_a, 64 * 1024).keep();
  Segment::create(other_b, 64 * 1024).keep();
  std::atomic<bool> done{false};
  std::thread churn([&] {
    for (int i = 0; i < 3000; ++i) {
      auto a = Segment::open(other_a);
      auto b = Segment::open(other_b);
    }
    done = true;
  });
  int loads = 0;
  while (!done) {
    v += 1;
    ++loads;
  }
  churn.join();
  CHECK(v.load() == loads);
}

}  // TEST_SUITE

TEST_SUITE("segment") {

TEST_CASE("a segment another user owns is PermissionDenied unless allow_other_owner") {
  if (::geteuid() != 0) {
    MESSAGE("not root: cannot make a segment another user owns; skipped");
    return;
  }
  SegmentName name("owner");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_value<int>("v", 1);
  REQUIRE(::chown(("/dev/shm/" + name.str()).c_str(), 65534, 65534) == 0);
  Segment::remove(name);  // our handle keeps the mapping; make a fresh name for the test
  auto other = Segment::create(name, 64 * 1024);
  REQUIRE(::chown(("/dev/shm/" + name.str()).c_str(), 65534, 65534) == 0);
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       ("segment '" + name.str() + "': it is owned by uid 65534, not by this process's uid 0").c_str(),
                       PermissionDenied);
  CHECK_NOTHROW(Segment::open(name, {.allow_other_owner = true}));
}

TEST_CASE("open_or_create refuses an existing segment whose mode is wider than requested") {
  SegmentName name("wide");
  auto wide = Segment::create(name, 64 * 1024, {.permissions = 0666});
  CHECK_THROWS_WITH_AS(Segment::open_or_create(name, 64 * 1024),
                       doctest::Contains("its mode 0666 is wider than the 0600 requested"),
                       PermissionDenied);
  CHECK(Segment::open_or_create(name, 64 * 1024, {.permissions = 0666}).uuid() == wide.uuid());
}

}  // TEST_SUITE

TEST_SUITE("segment") {

TEST_CASE("open refuses a segment whose mode was widened to 0666, naming the mode, unless max_permissions allows it") {
  SegmentName name("widened");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_value<int>("v", 7);
  REQUIRE(::chmod(("/dev/shm/" + name.str()).c_str(), 0666) == 0);
  CHECK_THROWS_WITH_AS(Segment::open(name),
                       ("segment '" + name.str() +
                        "': its mode 0666 is wider than the 0600 accepted (OpenOptions::max_permissions)")
                           .c_str(),
                       PermissionDenied);
  CHECK(Segment::open(name, {.max_permissions = 0666}).open_value<int>("v").load() == 7);
  REQUIRE(::chmod(("/dev/shm/" + name.str()).c_str(), 0600) == 0);
  CHECK(Segment::open(name).open_value<int>("v").load() == 7);
}

TEST_CASE("create of more than max_segment_bytes is InvalidArgument naming the largest size procshare maps") {
  SegmentName name("huge");
  CHECK_THROWS_WITH_AS(Segment::create(name, SIZE_MAX),
                       ("segment '" + name.str() + "': " + std::to_string(SIZE_MAX) +
                        " bytes is more than the largest segment procshare maps (70368744177664 bytes, 64 TiB)")
                           .c_str(),
                       InvalidArgument);
  CHECK_THROWS_AS(Segment::create(name, max_segment_bytes + 1), InvalidArgument);
  CHECK_FALSE(procshare::test::shm_exists(name));
}

TEST_CASE("remove refuses a text file and a POSIX semaphore's file, leaving them in place, unless forced") {
  SegmentName text("text");
  write_shm_file(text.str(), std::string(4096, 't'));
  CHECK_THROWS_WITH_AS(Segment::remove(text),
                       ("segment '" + text.str() + "': not removed: not a procshare segment (bad magic number)").c_str(),
                       CorruptSegment);
  CHECK(procshare::test::shm_exists(text));
  // A named semaphore lives in /dev/shm as sem.NAME, 32 bytes.
  const std::string semaphore_name = "/" + text.str() + "-sem";
  sem_t* semaphore = ::sem_open(semaphore_name.c_str(), O_CREAT | O_EXCL, 0600, 1);
  REQUIRE(semaphore != SEM_FAILED);
  const std::string semaphore_file = "sem." + text.str() + "-sem";
  struct RemoveSemaphore {
    std::string name;
    ~RemoveSemaphore() { ::sem_unlink(name.c_str()); }
  } remove_semaphore{semaphore_name};
  CHECK_THROWS_WITH_AS(Segment::remove(semaphore_file),
                       doctest::Contains("not removed: not a valid procshare segment: the file is 32 bytes, "
                                         "smaller than a segment header"),
                       CorruptSegment);
  CHECK(procshare::test::shm_exists(semaphore_file));
  CHECK(::sem_post(semaphore) == 0);  // still the same, working semaphore
  ::sem_close(semaphore);
  SegmentName empty("empty");
  write_shm_file(empty.str(), "");
  CHECK_THROWS_WITH_AS(Segment::remove(empty), doctest::Contains("not a valid procshare segment: the file is empty"),
                       CorruptSegment);
  CHECK(procshare::test::shm_exists(empty));
  // A real segment is removed; force removes anything.
  SegmentName real("real");
  Segment::create(real, 65536).keep();
  CHECK(Segment::remove(real));
  CHECK_FALSE(procshare::test::shm_exists(real));
  CHECK(Segment::remove(text, {.force = true}));
  CHECK_FALSE(procshare::test::shm_exists(text));
  CHECK(Segment::remove(semaphore_file, {.force = true}));
  CHECK_FALSE(procshare::test::shm_exists(semaphore_file));
  CHECK_FALSE(Segment::remove(text));
}

}  // TEST_SUITE
