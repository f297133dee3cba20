// Pool streams (imap, imap_unordered): outcomes as they come, failures at their item,
// worker deaths, bounded memory in the parent, early exit, ranges.
#include "support.hpp"

#include <doctest/doctest.h>

#if defined(__SANITIZE_ADDRESS__)
// From the ASan runtime (its header is not installed with GCC here).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#else
#include <malloc.h>
#endif

#include <algorithm>
#include <array>
#include <csignal>
#include <numeric>
#include <set>
#include <thread>

using namespace procshare;
using procshare::test::SegmentName;
using namespace std::chrono_literals;

namespace {

// Bytes of heap this process has allocated and not freed: what the parent holds (unlike
// the resident set, not inflated by freed memory an allocator keeps, as ASan's
// quarantine does).
std::uint64_t heap_in_use() {
#if defined(__SANITIZE_ADDRESS__)
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks;
#endif
}

std::vector<int> iota_items(int n) {
  std::vector<int> items(static_cast<std::size_t>(n));
  std::iota(items.begin(), items.end(), 0);
  return items;
}

}  // namespace

TEST_CASE("imap yields every item's result in input order") {
  Pool pool({.workers = 3});
  const auto items = iota_items(2000);
  std::size_t expected = 0;
  for (const Outcome<int>& o : pool.imap(items, [](const int& x) {
         if (x % 97 == 0) std::this_thread::sleep_for(1ms);  // finish out of order
         return x * 2;
       })) {
    REQUIRE(o.index() == expected);
    CHECK(o.ok());
    CHECK(o.value() == static_cast<int>(expected) * 2);
    ++expected;
  }
  CHECK(expected == items.size());
}

TEST_CASE("imap_unordered yields results as they complete, each item exactly once") {
  Pool pool({.workers = 3});
  const auto items = iota_items(500);
  std::vector<std::size_t> order;
  for (const auto& o : pool.imap_unordered(items, [](const int& x) {
         if (x == 0) std::this_thread::sleep_for(300ms);  // the first item comes last
         return std::to_string(x);
       })) {
    CHECK(o.value() == std::to_string(o.index()));
    order.push_back(o.index());
  }
  REQUIRE(order.size() == items.size());
  CHECK(order.front() != 0);
  CHECK(order.back() == 0);
  CHECK(std::set<std::size_t>(order.begin(), order.end()).size() == items.size());
}

TEST_CASE("a stream yields a failed item's error at its place and goes on past it") {
  Pool pool({.workers = 2});
  const auto items = iota_items(100);
  std::size_t seen = 0, failed = 0;
  for (const auto& o : pool.imap(items, [](const int& x) {
         if (x == 30 || x == 31) throw std::runtime_error("item " + std::to_string(x) + " is bad");
         return x;
       })) {
    CHECK(o.index() == seen++);
    if (o.index() == 30 || o.index() == 31) {
      ++failed;
      CHECK(o.state() == ItemState::failed);
      CHECK_THROWS_WITH_AS(o.value(), doctest::Contains("is bad"), TaskError);
    } else {
      CHECK(o.value() == static_cast<int>(o.index()));
    }
  }
  CHECK(seen == 100);
  CHECK(failed == 2);
}

TEST_CASE("a stream whose worker is killed mid-item yields every item once: WorkerDied for that item only") {
  // The item running when its worker was killed is WorkerDied. The results the worker
  // still held back for its batch (the items just before it) are in its ring: the
  // supervisor sends them, so they arrive with their values. Every item exactly once.
  SegmentName name("stream_kill");
  auto segment = Segment::create(name, 1 << 16);
  auto killed = segment.create_atomic<std::int64_t>("killed", 0);
  Pool pool({.workers = 2});
  const auto items = iota_items(300);
  std::set<std::size_t> died, seen;
  std::size_t count = 0;
  for (const auto& o : pool.imap_unordered(items, [](const int& x, Atomic<std::int64_t> k) {
         if (x == 120) {
           std::this_thread::sleep_for(20ms);
           if (k.fetch_add(1) == 0) ::raise(SIGKILL);
         }
         return x + 1;
       }, killed)) {
    ++count;
    seen.insert(o.index());
    if (o.state() == ItemState::failed) {
      died.insert(o.index());
      CHECK_THROWS_AS(o.value(), WorkerDied);
    } else {
      CHECK(o.value() == static_cast<int>(o.index()) + 1);
    }
  }
  CHECK(count == 300);
  CHECK(seen.size() == 300);
  CHECK(died == std::set<std::size_t>{120});
  CHECK(killed.load() == 1);
}

TEST_CASE("a stream keeps the parent's memory bounded while its consumer is slow") {
  // 400,000 results of 256 bytes: about 100 MiB if the parent held them all.
  Pool pool({.workers = 2});
  const std::uint64_t before = heap_in_use();
  auto stream = pool.imap_unordered(Range{0, 400'000}, [](std::uint64_t i) {
    return std::string(256, static_cast<char>('a' + i % 26));
  });
  std::this_thread::sleep_for(1500ms);  // the workers run ahead, until their rings are full
  std::uint64_t count = 0, peak = 0;
  while (auto o = stream.next()) {
    REQUIRE(o->ok());
    CHECK(o->value().size() == 256);
    if (++count % 20'000 == 0) peak = std::max(peak, heap_in_use());
  }
  CHECK(count == 400'000);
  CHECK(peak < before + (48u << 20));
}

TEST_CASE("an ordered stream waiting for a slow first item does not stall behind its full buffer") {
  Pool pool({.workers = 3});
  std::size_t expected = 0;
  for (const auto& o : pool.imap(Range{0, 20'000}, [](std::uint64_t i) {
         if (i == 0) std::this_thread::sleep_for(500ms);
         return std::string(64, 'x') + std::to_string(i);
       })) {
    REQUIRE(o.index() == expected);
    CHECK(o.value() == std::string(64, 'x') + std::to_string(expected));
    ++expected;
  }
  CHECK(expected == 20'000);
}

TEST_CASE("leaving a stream's loop early cancels its job") {
  SegmentName name("stream_break");
  auto segment = Segment::create(name, 1 << 16);
  auto ran = segment.create_atomic<std::int64_t>("ran", 0);
  Pool pool({.workers = 2});
  {
    int taken = 0;
    for (const auto& o : pool.imap(Range{0, 1'000'000}, [](std::uint64_t i, Atomic<std::int64_t> r) {
           r.fetch_add(1);
           std::this_thread::sleep_for(200us);
           return i;
         }, ran)) {
      CHECK(o.value() == static_cast<std::uint64_t>(taken));
      if (++taken == 10) break;
    }
  }
  // The pool is free again soon, and ran a tiny part of the million items.
  CHECK(pool.map(std::vector<int>{1, 2, 3}, [](const int& x) { return x; }) == std::vector<int>{1, 2, 3});
  CHECK(ran.load() < 100'000);
}

TEST_CASE("a cancelled stream yields what had arrived and then ends, stopped") {
  Pool pool({.workers = 2});
  auto stream = pool.imap(Range{0, 100'000}, [](std::uint64_t i) {
    std::this_thread::sleep_for(100us);
    return i;
  });
  std::uint64_t count = 0;
  std::uint64_t last = 0;
  while (auto o = stream.next()) {
    CHECK(o->value() == o->index());
    CHECK((count == 0 || o->index() > last));
    last = o->index();
    if (++count == 50) stream.cancel();
  }
  CHECK(stream.stopped());
  CHECK(count >= 50);
  CHECK(count < 100'000);
}

TEST_CASE("a stream of results too large to batch (80 KB each) yields each one whole") {
  Pool pool({.workers = 2});
  using Big = std::array<double, 10000>;
  std::size_t count = 0;
  for (const auto& o : pool.imap_unordered(Range{0, 40}, [](std::uint64_t i) {
         Big b;
         b.fill(static_cast<double>(i));
         return b;
       })) {
    ++count;
    const Big& b = o.value();
    CHECK(b.front() == static_cast<double>(o.index()));
    CHECK(b.back() == static_cast<double>(o.index()));
  }
  CHECK(count == 40);
}

TEST_CASE("leaving a range-for over a named stream early, next() yields the rest, each item once") {
  Pool pool({.workers = 2});
  auto stream = pool.imap(Range{0, 50'000}, [](std::uint64_t i) { return i * 3; });
  std::vector<std::uint8_t> seen(50'000, 0);
  for (const auto& o : stream) {
    ++seen[o.index()];
    if (o.index() == 3) break;  // in the middle of a batch
  }
  while (auto o = stream.next()) {
    CHECK(o->value() == o->index() * 3);
    ++seen[o->index()];
  }
  CHECK(std::count(seen.begin(), seen.end(), 1) == 50'000);
}

TEST_CASE("a stream consumed in one thread while another thread submits to the same pool: all exact") {
  Pool pool({.workers = 2, .allow_threads = true});
  std::int64_t submitted = 0;
  std::thread other([&] {
    for (int i = 0; i < 300; ++i) submitted += pool.submit([](int x) { return x; }, 1).get();
  });
  std::vector<std::uint8_t> seen(200'000, 0);
  std::size_t wrong = 0;
  for (const auto& o : pool.imap_unordered(Range{0, 200'000}, [](std::uint64_t i) { return i + 1; })) {
    ++seen[o.index()];
    wrong += o.value() != o.index() + 1;
  }
  other.join();
  CHECK(wrong == 0);
  CHECK(std::count(seen.begin(), seen.end(), 1) == 200'000);
  CHECK(submitted == 300);
}

