// fmt formatters: what `fmt::format("{}", object)` prints for every object.
#include "support.hpp"

#include <doctest/doctest.h>

#include <fmt/format.h>

using namespace procshare;
using procshare::test::SegmentName;

TEST_SUITE("format") {

TEST_CASE("values, atomics, arrays and flags format as their contents") {
  SegmentName name("fmt");
  auto segment = Segment::create(name, 64 * 1024);
  auto done = segment.create_value<std::int64_t>("done", 42);
  auto ratio = segment.create_value<double>("ratio", 0.125);
  auto hits = segment.create_atomic<unsigned>("hits", 7);
  auto results = segment.create_array<double>("results", 3, 1.5);
  auto stop = segment.create_flag("stop");
  CHECK(fmt::format("{}", done) == "42");
  CHECK(fmt::format("{:>5}", done) == "   42");
  CHECK(fmt::format("{:.2f}", ratio) == "0.12");
  CHECK(fmt::format("{}", hits) == "7");
  CHECK(fmt::format("{}", results) == "[1.5, 1.5, 1.5]");
  CHECK(fmt::format("{:.2f}", results) == "[1.50, 1.50, 1.50]");
  CHECK(fmt::format("{}", stop) == "clear");
  stop.set();
  CHECK(fmt::format("{}", stop) == "set");
}

TEST_CASE("mutexes format with their name and owner deaths, segments with their usage") {
  SegmentName name("fmtlock");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("jobs");
  CHECK(fmt::format("{}", m) == "mutex 'jobs'");
  std::thread holder([m]() mutable { m.lock(); });
  holder.join();
  m.lock();
  m.unlock();
  CHECK(fmt::format("{}", m) == fmt::format("mutex 'jobs' (1 owner death, last pid {})", ::getpid()));
  CHECK(fmt::format("{}", segment) ==
        fmt::format("segment '{}' (used {} of 65536 bytes, 1 objects)", name.str(), segment.used()));
}

TEST_CASE("synchronisation objects format as their state") {
  SegmentName name("fmtsync");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 3);
  auto bounded = segment.create_bounded_semaphore("b", 2);
  bounded.acquire();
  auto event = segment.create_event("e");
  auto m = segment.create_mutex("m");
  auto cv = segment.create_condition("cv", m);
  auto barrier = segment.create_barrier("bar", 3);
  CHECK(fmt::format("{}", sem) == "3");
  CHECK(fmt::format("{}", bounded) == "1 of 2");
  CHECK(fmt::format("{}", event) == "clear");
  event.set();
  CHECK(fmt::format("{}", event) == "set");
  CHECK(fmt::format("{}", cv) == "condition 'cv' on mutex 'm'");
  CHECK(fmt::format("{}", barrier) == "0 of 3 waiting");
  barrier.abort();
  CHECK(fmt::format("{}", barrier) == "broken");
  auto queue = segment.create_queue<int>("q", 16);
  queue.push(1);
  CHECK(fmt::format("{}", queue) == "1 of 16 items");
  queue.close();
  CHECK(fmt::format("{}", queue) == "1 of 16 items, closed");
}

}  // TEST_SUITE
