// Vector, Map and String in the segment: operations, the strong guarantee when the arena
// is full, type checks, exact results between processes, and poisoning by a killed writer.
#include "support.hpp"

#include <doctest/doctest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <numeric>

using namespace procshare;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using namespace std::chrono_literals;

TEST_SUITE("containers") {

TEST_CASE("a Vector pushes, pops, indexes and snapshots ints and strings") {
  SegmentName name("vector");
  auto segment = Segment::create(name, 1 << 20);
  auto numbers = segment.create_vector<std::int64_t>("numbers", 64 * 1024);
  numbers.push_back(1);
  numbers.push_back(2);
  numbers.push_back(3);
  CHECK(numbers.size() == 3);
  CHECK(numbers.at(1) == 2);
  numbers.set(1, 20);
  CHECK(numbers.pop_back() == 3);
  CHECK(numbers.snapshot() == std::vector<std::int64_t>{1, 20});
  CHECK_THROWS_WITH_AS(numbers.at(5), ("segment '" + name.str() + "': vector 'numbers': index 5 out of range (size 2)").c_str(),
                       IndexOutOfRange);
  auto words = segment.create_vector<std::string>("words", 64 * 1024);
  words.push_back("hello");
  words.push_back(std::string(1000, 'x'));
  CHECK(words.at(0) == "hello");
  CHECK(segment.open_vector<std::string>("words").pop_back()->size() == 1000);
  CHECK(fmt::format("{}", words) == "[hello]");
  CHECK(fmt::format("{}", numbers) == "[1, 20]");
  numbers.clear();
  CHECK_FALSE(numbers.pop_back().has_value());
}

TEST_CASE("a Vector inserts at the front, middle and end, erases, and pops by index like Python's list") {
  SegmentName name("vector-insert");
  auto segment = Segment::create(name, 1 << 20);
  auto numbers = segment.create_vector<std::int64_t>("numbers", 64 * 1024);
  numbers.insert(0, 2);  // into an empty vector
  numbers.insert(0, 1);  // front
  numbers.insert(2, 4);  // end (index == size appends)
  numbers.insert(2, 3);  // middle
  CHECK(numbers.snapshot() == std::vector<std::int64_t>{1, 2, 3, 4});
  numbers.erase(1);
  CHECK(numbers.snapshot() == std::vector<std::int64_t>{1, 3, 4});
  CHECK(numbers.pop(1) == 3);
  CHECK(numbers.pop(1) == 4);
  CHECK(numbers.pop(0) == 1);
  CHECK(numbers.size() == 0);
  auto words = segment.create_vector<std::string>("words", 64 * 1024);
  for (const char* w : {"b", "d"}) words.push_back(w);
  words.insert(0, "a");
  words.insert(2, std::string(500, 'c'));  // a string too long to be stored inline
  words.insert(4, "e");
  CHECK(words.snapshot() == std::vector<std::string>{"a", "b", std::string(500, 'c'), "d", "e"});
  CHECK(words.pop(2) == std::string(500, 'c'));
  words.erase(0);
  CHECK(words.snapshot() == std::vector<std::string>{"b", "d", "e"});
  {
    auto g = words.lock();  // the same through a guard
    g.insert(1, "c");
    g.insert(g.size(), "f");
    CHECK(g.pop(0) == "b");
    g.erase(g.size() - 1);
  }
  CHECK(words.snapshot() == std::vector<std::string>{"c", "d", "e"});
  CHECK_FALSE(words.poisoned());
}

TEST_CASE("insert, erase and pop at a bad index throw IndexOutOfRange naming index and size, and change nothing") {
  SegmentName name("vector-bad-index");
  auto segment = Segment::create(name, 1 << 20);
  auto v = segment.create_vector<long>("v", 4096);
  const auto message = [&](std::size_t index, std::size_t size) {
    return fmt::format("segment '{}': vector 'v': index {} out of range (size {})", name.str(), index, size);
  };
  CHECK_THROWS_WITH_AS(v.pop(0), message(0, 0).c_str(), IndexOutOfRange);
  CHECK_THROWS_WITH_AS(v.erase(0), message(0, 0).c_str(), IndexOutOfRange);
  CHECK_THROWS_WITH_AS(v.insert(1, 5), message(1, 0).c_str(), IndexOutOfRange);
  v.push_back(1);
  v.push_back(2);
  CHECK_THROWS_WITH_AS(v.insert(3, 5), message(3, 2).c_str(), IndexOutOfRange);
  CHECK_THROWS_WITH_AS(v.erase(2), message(2, 2).c_str(), IndexOutOfRange);
  CHECK_THROWS_WITH_AS(v.pop(static_cast<std::size_t>(-1)), message(static_cast<std::size_t>(-1), 2).c_str(),
                       IndexOutOfRange);
  {
    auto g = v.lock();
    CHECK_THROWS_WITH_AS(g.insert(3, 5), message(3, 2).c_str(), IndexOutOfRange);
    CHECK_THROWS_WITH_AS(g.erase(2), message(2, 2).c_str(), IndexOutOfRange);
    CHECK_THROWS_WITH_AS(g.pop(7), message(7, 2).c_str(), IndexOutOfRange);
  }
  CHECK(v.snapshot() == std::vector<long>{1, 2});
  CHECK_FALSE(v.poisoned());
}

TEST_CASE("insert into a full arena is SegmentFull, and the Vector is unchanged and not poisoned") {
  SegmentName name("vector-insert-full");
  auto segment = Segment::create(name, 1 << 20);
  auto numbers = segment.create_vector<std::int64_t>("numbers", 4096);
  try {
    for (std::int64_t i = 0;; ++i) numbers.insert(numbers.size() / 2, i);
  } catch (const SegmentFull& e) {
    CHECK(std::string(e.what()).find("vector 'numbers': its arena is full") != std::string::npos);
  }
  const auto before = numbers.snapshot();
  REQUIRE_FALSE(before.empty());
  CHECK_THROWS_AS(numbers.insert(0, -1), SegmentFull);
  CHECK_THROWS_AS(numbers.insert(before.size(), -1), SegmentFull);
  {
    auto g = numbers.lock();
    CHECK_THROWS_AS(g.insert(1, -1), SegmentFull);
  }
  CHECK(numbers.snapshot() == before);
  CHECK_FALSE(numbers.poisoned());
  auto words = segment.create_vector<std::string>("words", 4096);
  words.push_back("first");
  words.push_back("last");
  CHECK_THROWS_AS(words.insert(1, std::string(5000, 'x')), SegmentFull);  // the string itself does not fit
  try {
    for (;;) words.insert(1, std::string(200, 'm'));
  } catch (const SegmentFull&) {
  }
  const auto words_before = words.snapshot();
  CHECK_THROWS_AS(words.insert(1, std::string(200, 'n')), SegmentFull);
  CHECK(words.snapshot() == words_before);
  CHECK(words_before.front() == "first");
  CHECK(words_before.back() == "last");
  CHECK_FALSE(words.poisoned());
}

TEST_CASE("4 processes inserting and popping at random indices lose and duplicate nothing") {
  SegmentName name("vector-insert-pop");
  auto segment = Segment::create(name, 8 << 20);
  auto v = segment.create_vector<std::int64_t>("v", 2 << 20);
  auto popped = segment.create_vector<std::int64_t>("popped", 2 << 20);
  constexpr int processes = 4, per_process = 3000;
  std::vector<pid_t> pids;
  for (int p = 0; p < processes; ++p)
    pids.push_back(run_child([&, p] {
      std::uint64_t state = 0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(p + 1);
      const auto next = [&] { return state = state * 6364136223846793005ULL + 1442695040888963407ULL, state >> 33; };
      for (std::int64_t i = 0; i < per_process; ++i) {
        const std::int64_t value = std::int64_t{p} * per_process + i;
        if (i % 3 == 0) {
          v.insert(0, value);  // always a valid index: no guard needed
        } else {
          auto g = v.lock();
          g.insert(next() % (g.size() + 1), value);
        }
        if (i % 2 == 1) {
          auto g = v.lock();
          if (g.size() > 0) popped.push_back(g.pop(next() % g.size()));
        }
      }
    }));
  for (const pid_t pid : pids) CHECK(wait_child(pid, 120s).ok());
  std::vector<std::int64_t> all = v.snapshot();
  const auto out = popped.snapshot();
  CHECK(out.size() == processes * per_process / 2);
  all.insert(all.end(), out.begin(), out.end());
  std::sort(all.begin(), all.end());
  std::vector<std::int64_t> expected(processes * per_process);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(all == expected);
}

TEST_CASE("a Map inserts, replaces, erases and looks up by integer and string keys") {
  SegmentName name("map");
  auto segment = Segment::create(name, 1 << 20);
  auto counts = segment.create_map<std::string, std::int64_t>("counts", 64 * 1024);
  CHECK(counts.insert_or_assign("apple", 1));
  CHECK_FALSE(counts.insert_or_assign("apple", 2));
  counts.insert_or_assign("pear", 5);
  CHECK(counts.get("apple") == 2);
  CHECK_FALSE(counts.get("plum").has_value());
  CHECK(counts.contains("pear"));
  CHECK(counts.erase("pear"));
  CHECK_FALSE(counts.erase("pear"));
  CHECK(counts.size() == 1);
  auto by_id = segment.create_map<std::int32_t, std::string>("by_id", 64 * 1024);
  by_id.insert_or_assign(7, "seven");
  by_id.insert_or_assign(3, "three");
  CHECK(by_id.snapshot() == std::map<std::int32_t, std::string>{{3, "three"}, {7, "seven"}});
  CHECK(fmt::format("{}", by_id) == "{3: three, 7: seven}");
  CHECK(segment.value_text("by_id") == "{3: \"three\", 7: \"seven\"}");
  auto text = segment.create_string("motd", 4096);
  text.store("hello");
  text.append(", world");
  CHECK(text.load() == "hello, world");
  CHECK(fmt::format("{}", text) == "hello, world");
  CHECK(segment.value_text("motd") == "\"hello, world\"");
}

TEST_CASE("the tutorial's list job under lock() gives the same list with 10 processes as with one") {
  SegmentName name("tutorial");
  auto segment = Segment::create(name, 1 << 20);
  auto shared = segment.create_vector<int>("l", 64 * 1024);
  auto job = [](Vector<int> l, int who) {
    for (int i = 0; i < 200; ++i) {
      auto g = l.lock();
      if (g.size() < 5) g.push_back(who); else g.pop_back();  // compound: only under lock()
    }
  };
  std::vector<pid_t> pids;
  for (int p = 0; p < 10; ++p) pids.push_back(run_child([&, p] { job(shared, 0 * p); }));
  for (const pid_t pid : pids) CHECK(wait_child(pid, 60s).ok());
  auto single = segment.create_vector<int>("single", 64 * 1024);
  for (int p = 0; p < 10; ++p) job(single, 0);
  CHECK(shared.snapshot() == single.snapshot());
  CHECK(shared.size() == 4);  // 2,000 steps of +1 up to 5, then -1 / +1
}

TEST_CASE("4 processes x 50,000 inserts of distinct keys plus increments of shared keys: exact contents") {
  SegmentName name("mapload");
  auto segment = Segment::create(name, 64 << 20);
  auto map = segment.create_map<std::int64_t, std::int64_t>("m", 48 << 20);
  constexpr int processes = 4, per_process = 50000;
  std::vector<pid_t> pids;
  for (int p = 0; p < processes; ++p)
    pids.push_back(run_child([&, p] {
      for (std::int64_t i = 0; i < per_process; ++i) {
        map.insert_or_assign(1000 + std::int64_t{p} * per_process + i, i);
        auto g = map.lock();  // read-modify-write of a shared key
        g.insert_or_assign(i % 10, g.get(i % 10).value_or(0) + 1);
      }
    }));
  for (const pid_t pid : pids) CHECK(wait_child(pid, 120s).ok());
  const auto contents = map.snapshot();
  CHECK(contents.size() == processes * per_process + 10);
  bool exact = true;
  for (std::int64_t k = 0; k < 10; ++k) exact = exact && contents.at(k) == processes * per_process / 10;
  for (int p = 0; p < processes; ++p)
    for (std::int64_t i = 0; i < per_process; ++i)
      exact = exact && contents.at(1000 + std::int64_t{p} * per_process + i) == i;
  CHECK(exact);
}

TEST_CASE("a full arena is SegmentFull naming the container, and the container is unchanged") {
  SegmentName name("full");
  auto segment = Segment::create(name, 1 << 20);
  auto map = segment.create_map<std::int64_t, std::string>("m", 8192);
  std::int64_t k = 0;
  try {
    for (;; ++k) map.insert_or_assign(k, std::string(100, 'v'));
  } catch (const SegmentFull& e) {
    CHECK(std::string(e.what()).find("map 'm': its arena is full") != std::string::npos);
  }
  const auto before = map.snapshot();
  CHECK(before.size() == static_cast<std::size_t>(k));
  CHECK_THROWS_AS(map.insert_or_assign(k + 1, std::string(100, 'w')), SegmentFull);
  CHECK_THROWS_AS(map.insert_or_assign(0, std::string(5000, 'w')), SegmentFull);
  CHECK(map.snapshot() == before);
  CHECK_FALSE(map.poisoned());
  auto vector = segment.create_vector<std::int64_t>("v", 4096);
  std::size_t pushed = 0;
  try {
    for (;; ++pushed) vector.push_back(static_cast<std::int64_t>(pushed));
  } catch (const SegmentFull&) {
  }
  CHECK(vector.size() == pushed);
  CHECK(vector.at(pushed - 1) == static_cast<std::int64_t>(pushed - 1));
  auto text = segment.create_string("s", 2048);
  text.store("kept");
  CHECK_THROWS_AS(text.store(std::string(4000, 'x')), SegmentFull);
  CHECK(text.load() == "kept");
}

TEST_CASE("containers reopened under other types are TypeMismatch; tiny capacities InvalidArgument") {
  SegmentName name("ctypes");
  auto segment = Segment::create(name, 1 << 20);
  segment.create_map<std::int64_t, std::int64_t>("m", 4096);
  segment.create_vector<int>("v", 4096);
  CHECK_THROWS_WITH_AS((segment.open_map<std::int64_t, std::string>("m")),
                       doctest::Contains("created as map<int64,int64>, not map<int64,string>"), TypeMismatch);
  CHECK_THROWS_AS(segment.open_vector<long>("v"), TypeMismatch);
  CHECK_THROWS_AS(segment.open_string("v"), TypeMismatch);
  CHECK_THROWS_WITH_AS(segment.create_vector<int>("small", 100),
                       doctest::Contains("capacity 100 bytes is too small (at least 1024)"), InvalidArgument);
  CHECK((segment.map<std::int64_t, std::int64_t>("m", 4096).size() == 0));
}

TEST_CASE("a writer killed inside a container poisons only that container") {
  SegmentName name("cpoison");
  auto segment = Segment::create(name, 8 << 20);
  auto map = segment.create_map<std::int64_t, std::string>("m", 4 << 20);
  auto other = segment.create_value<int>("other", 1);
  // Deterministic: killed holding a guard in the middle of a change.
  PipeSignal holding;
  const pid_t pid = run_child([&] {
    auto g = map.lock();
    g.insert_or_assign(1, "half");
    holding.notify();
    for (;;) ::pause();
  });
  REQUIRE(holding.wait());
  ::kill(pid, SIGKILL);
  wait_child(pid);
  CHECK(map.poisoned());
  CHECK_THROWS_WITH_AS(map.get(1), doctest::Contains("map 'm': poisoned"), OwnerDied);
  CHECK_THROWS_AS(map.insert_or_assign(2, "x"), OwnerDied);
  other += 1;
  CHECK(other.load() == 2);
  map.reset();
  CHECK_FALSE(map.poisoned());
  CHECK(map.size() == 0);
  // A storm of kills at random moments inside inserts: each time, either the map is
  // poisoned or it is intact, and the rest of the segment keeps working.
  for (int round = 0; round < 30; ++round) {
    const pid_t writer = run_child([map]() mutable {
      for (std::int64_t i = 0;; ++i) map.insert_or_assign(i % 5000, std::string(static_cast<std::size_t>(i % 300), 'x'));
    });
    std::this_thread::sleep_for(std::chrono::microseconds(300 + 97 * round));
    ::kill(writer, SIGKILL);
    wait_child(writer);
    if (map.poisoned()) map.reset();
    for (const auto& [k, v] : map.snapshot()) CHECK((k == -1 || v == std::string(v.size(), 'x')));
    map.insert_or_assign(-1, "after");
    CHECK(map.get(-1) == "after");
    other += 1;
  }
  CHECK(other.load() == 32);
}

TEST_CASE("an out-of-range read through a Vector guard throws IndexOutOfRange and poisons nothing") {
  SegmentName name("vector-guard-index");
  auto segment = Segment::create(name, 1 << 20);
  auto v = segment.create_vector<long>("v", 4096);
  v.push_back(1);
  try {
    auto guard = v.lock();
    (void)guard[5];
  } catch (const IndexOutOfRange& e) {
    CHECK(std::string(e.what()).find("index 5 out of range (size 1)") != std::string::npos);
  }
  CHECK_FALSE(v.poisoned());
  CHECK(v.size() == 1);
  try {
    auto guard = v.lock();
    guard.push_back(2);
    throw std::runtime_error("after a write through the guard");
  } catch (const std::runtime_error&) {
  }
  CHECK(v.poisoned());  // that write may be half of a longer change
  CHECK_THROWS_WITH_AS(v.size(),
                       ("segment '" + name.str() +
                        "': vector 'v': poisoned: an exception unwound through a guard that was "
                        "writing it, so a write may be half done (owner deaths so far: 0); reads "
                        "and writes throw OwnerDied until reset() empties and repairs it").c_str(),
                       OwnerDied);
  v.reset();
  CHECK(v.size() == 0);
}

TEST_CASE("printing a Vector or a Map while holding its guard works and poisons nothing") {
  SegmentName name("print-in-guard");
  auto segment = Segment::create(name, 1 << 20);
  auto v = segment.create_vector<long>("v", 4096);
  auto m = segment.create_map<long, long>("m", 4096);
  v.push_back(1);
  m.insert_or_assign(1, 2);
  {
    auto guard = v.lock();
    guard.push_back(2);
    CHECK(fmt::format("{}", v) == fmt::format("{}", v.snapshot()));
    CHECK(v.size() == 2);
  }
  {
    auto guard = m.lock();
    CHECK(fmt::format("{}", m).find("1") != std::string::npos);
    CHECK(m.get(1) == std::optional<long>(2));
  }
  CHECK_FALSE(v.poisoned());
  CHECK_FALSE(m.poisoned());
}

}  // TEST_SUITE
