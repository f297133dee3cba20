// Forged and damaged segments, as the segment fuzzer (tests/fuzz) makes them: each test is
// the regression test of one fix, and checks that procshare-ctl's reads (value_text,
// segment_report) give a clear error instead of a hang, a crash or undefined behaviour.
#include "support.hpp"
#include "fuzz/forge.hpp"

#include <doctest/doctest.h>

#include <chrono>

using namespace procshare;
using procshare::test::SegmentName;
using namespace std::chrono_literals;

namespace {

// Short lock waits for the duration of a test (the defaults are 5 s and 1 s).
struct ShortLockWaits {
  ShortLockWaits() { detail::set_lock_wait_limits(50ms, 50ms); }
  ~ShortLockWaits() { detail::set_lock_wait_limits(5s, 1s); }
};

}  // namespace

namespace {

// What an error about segment `name` says: "segment '<name>': " and then `rest`.
std::string says(const SegmentName& name, std::string_view rest) {
  return "segment '" + name.str() + "': " + std::string(rest);
}

}  // namespace

TEST_SUITE("forged") {

TEST_CASE("a value whose lock is held for ever reads as Timeout in value_text, not a hang") {
  SegmentName name("held");
  auto segment = Segment::create(name, 64 * 1024);
  auto value = segment.create_value<long>("held", 1);
  segment.create_value<long>("other", 2);
  forge::hold_for_ever(forge::lock_of(value.handle(), ObjectKind::value));
  ShortLockWaits waits;
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(segment.value_text("held"),
                       says(name, "value 'held': lock: the lock is still held by another thread or process").c_str(),
                       Timeout);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  const std::string report = segment_report(segment, ReportFormat::text);
  CHECK(report.find("still held") != std::string::npos);
  CHECK(report.find("other                    value<int64>           2") != std::string::npos);
  forge::lock_of(value.handle(), ObjectKind::value).mutex.__data.__lock = 0;  // let it go
}

TEST_CASE("a held barrier lock reads as Timeout in value_text") {
  SegmentName name("barrier-held");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 2);
  forge::hold_for_ever(forge::lock_of(barrier.handle(), ObjectKind::barrier));
  ShortLockWaits waits;
  CHECK_THROWS_AS(segment.value_text("b"), Timeout);
  forge::lock_of(barrier.handle(), ObjectKind::barrier).mutex.__data.__lock = 0;
}

TEST_CASE("a held directory lock is Timeout from objects() after the directory wait") {
  SegmentName name("directory-held");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_flag("f");
  auto& lock = *reinterpret_cast<detail::RobustLock*>(
      reinterpret_cast<std::byte*>(forge::object_bytes(segment.open_flag("f").handle(), ObjectKind::flag)) -
      segment.open_flag("f").handle().offset + 128);  // Header::lock, at offset 128
  lock.mutex.__data.__lock = 1;
  ShortLockWaits waits;
  CHECK_THROWS_WITH_AS(segment.objects(),
                       says(name, "the directory lock has been held for over 50 ms").c_str(),
                       Timeout);
  lock.mutex.__data.__lock = 0;
}

TEST_CASE("a lock that is not a robust process-shared one is CorruptSegment, never locked") {
  SegmentName name("plain");
  auto segment = Segment::create(name, 64 * 1024);
  auto array = segment.create_array<long>("a", 2);
  auto& lock = forge::lock_of(array.handle(), ObjectKind::array);
  const auto saved = lock.mutex.__data;
  forge::make_plain(lock);
  const std::string expected =
      says(name, "array 'a': its lock is not a procshare lock (robust, process-shared)");
  CHECK_THROWS_WITH_AS(segment.open_array<long>("a"), expected.c_str(), CorruptSegment);
  CHECK_THROWS_WITH_AS(segment.objects(), expected.c_str(), CorruptSegment);
  CHECK_THROWS_WITH_AS(segment_report(segment, ReportFormat::json), expected.c_str(), CorruptSegment);
  lock.mutex.__data = saved;
}

TEST_CASE("a bool holding another byte than 0 or 1 is CorruptSegment in value_text") {
  SegmentName name("bool");
  auto segment = Segment::create(name, 64 * 1024);
  auto flag = segment.create_value<bool>("b", false);
  auto& block = *reinterpret_cast<detail::ValueBlock<bool>*>(forge::object_bytes(flag.handle(), ObjectKind::value));
  reinterpret_cast<unsigned char&>(block.value) = 7;
  CHECK_THROWS_WITH_AS(segment.value_text("b"),
                       says(name, "value 'b': a bool holds the byte 0x07, not 0 or 1").c_str(),
                       CorruptSegment);
}

TEST_CASE("a barrier claiming more parties than its object holds is CorruptSegment on open") {
  SegmentName name("parties");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 3);
  REQUIRE(forge::replace_word(barrier.handle(), ObjectKind::barrier, 192, 3, 1000));
  CHECK_THROWS_WITH_AS(segment.open_barrier("b"),
                       says(name, "barrier 'b': it claims 1000 parties but has room for 3").c_str(),
                       CorruptSegment);
}

TEST_CASE("a container placed outside its arena is CorruptSegment on open, not a wild read") {
  SegmentName name("misplaced");
  auto segment = Segment::create(name, 64 * 1024);
  auto vector = segment.create_vector<long>("v", 1024);
  vector.push_back(1);
  auto& block = forge::container_block(vector.handle(), ObjectKind::vector);
  block.container_offset += 3;  // misaligned, as the fuzzer found it
  const std::string expected = says(name, "vector 'v': the container lies outside its arena");
  CHECK_THROWS_WITH_AS(segment.open_vector<long>("v"), expected.c_str(), CorruptSegment);
  forge::misplace_container(block);
  CHECK_THROWS_WITH_AS(segment.open_vector<long>("v"), expected.c_str(), CorruptSegment);
}

TEST_CASE("an arena larger than its object is CorruptSegment on open") {
  SegmentName name("arena");
  auto segment = Segment::create(name, 64 * 1024);
  auto string = segment.create_string("s", 1024);
  forge::container_block(string.handle(), ObjectKind::string).arena_bytes = 1 << 20;
  CHECK_THROWS_WITH_AS(segment.open_string("s"),
                       says(name, "string 's': its arena lies outside the object").c_str(),
                       CorruptSegment);
}

TEST_CASE("a vector whose elements point outside its arena is CorruptSegment in value_text") {
  SegmentName name("vector-outside");
  auto segment = Segment::create(name, 64 * 1024);
  auto vector = segment.create_vector<long>("v", 1024);
  for (long i = 0; i < 5; ++i) vector.push_back(i);
  REQUIRE(forge::send_vector_outside(vector));
  CHECK_THROWS_WITH_AS(segment.value_text("v"),
                       says(name, "vector 'v': its contents do not hold together inside its arena").c_str(),
                       CorruptSegment);
}

TEST_CASE("a map whose tree loops or leaves its arena is CorruptSegment in value_text, not a hang") {
  SegmentName name("map");
  auto segment = Segment::create(name, 64 * 1024);
  auto looped = segment.create_map<long, long>("looped", 1024);
  auto outside = segment.create_map<std::string, std::string>("outside", 1024);
  for (long i = 0; i < 6; ++i) looped.insert_or_assign(i, i);
  outside.insert_or_assign("a key", "a value");
  CHECK(segment.value_text("looped") == "{0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5}");
  forge::loop_tree(looped);
  forge::send_tree_outside(outside);
  for (const char* map : {"looped", "outside"})
    CHECK_THROWS_WITH_AS(segment.value_text(map),
                         ("segment '" + name.str() + "': map '" + map +
                          "': its contents do not hold together inside its arena")
                             .c_str(),
                         CorruptSegment);
}

TEST_CASE("a poisoned container is shown with its reason and the others still read") {
  SegmentName name("poisoned");
  auto segment = Segment::create(name, 64 * 1024);
  auto vector = segment.create_vector<std::string>("v", 1024);
  segment.create_value<int>("n", 3);
  vector.push_back("x");
  try {
    auto guard = vector.lock();
    guard.push_back("y");
    throw std::runtime_error("unwinds through the guard after a write");
  } catch (const std::runtime_error&) {
  }
  CHECK_THROWS_AS(segment.value_text("v"), OwnerDied);
  const std::string report = segment_report(segment, ReportFormat::text);
  CHECK(report.find("POISONED") != std::string::npos);
  CHECK(report.find("value<int32>           3") != std::string::npos);
}

}  // TEST_SUITE
