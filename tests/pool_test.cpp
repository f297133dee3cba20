// Pool: results, failures, stopping, find_first and lifetimes, with real processes.
#include "support.hpp"

#include <doctest/doctest.h>

#include <sys/file.h>
#include <sys/stat.h>

#include <array>
#include <csignal>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

using namespace procshare;
using procshare::test::all_gone;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using namespace std::chrono_literals;

namespace {

std::int64_t square(std::int64_t x) { return x * x; }

}  // namespace

TEST_SUITE("pool") {

TEST_CASE("map over 200,000 items gives exact, ordered results with 1, 2 and 8 workers") {
  std::vector<std::int64_t> items(200000);
  std::iota(items.begin(), items.end(), 0);
  for (const unsigned workers : {1u, 2u, 8u}) {
    CAPTURE(workers);
    Pool pool({.workers = workers});
    const auto results = pool.map(items, square);
    REQUIRE(results.size() == items.size());
    bool exact = true;
    for (std::size_t i = 0; i < items.size(); ++i) exact = exact && results[i] == items[i] * items[i];
    CHECK(exact);
    const auto strings = pool.map(std::vector<int>{1, 22, 333}, [](int x, const std::string& unit) {
      return std::to_string(x) + unit;
    }, std::string(" apples"));
    CHECK(strings == std::vector<std::string>{"1 apples", "22 apples", "333 apples"});
  }
}

TEST_CASE("map, map_async and submit of a task returning bool give every item's bool in input order") {
  Pool pool({.workers = 2});
  std::vector<std::int64_t> items(10000);
  std::iota(items.begin(), items.end(), 0);
  const auto is_odd = [](std::int64_t x) { return x % 2 == 1; };
  const std::vector<bool> odd = pool.map(items, is_odd);
  REQUIRE(odd.size() == items.size());
  bool exact = true;
  for (std::size_t i = 0; i < items.size(); ++i) exact = exact && odd[i] == (i % 2 == 1);
  CHECK(exact);
  auto job = pool.map_async(Chunk{7}, items, [](std::int64_t x, std::int64_t d) { return x % d == 0; },
                            std::int64_t{3});
  const std::vector<bool> thirds = job.get();
  REQUIRE(thirds.size() == items.size());
  CHECK(std::count(thirds.begin(), thirds.end(), true) == 3334);
  CHECK(thirds[9999]);
  CHECK_FALSE(thirds[9998]);
  CHECK(pool.submit(is_odd, std::int64_t{7}).get());
  CHECK_FALSE(pool.submit(is_odd, std::int64_t{8}).get());
}

TEST_CASE("submit returns a Future; 20,000 outstanding futures are all collected at the end") {
  Pool pool({.workers = 2});
  auto one = pool.submit([](int a, int b) { return a + b; }, 2, 40);
  CHECK(one.get() == 42);
  std::vector<Future<std::int64_t>> futures;
  for (std::int64_t i = 0; i < 20000; ++i) futures.push_back(pool.submit(square, i));
  std::int64_t sum = 0;
  for (auto& f : futures) sum += f.get();
  std::int64_t expected = 0;
  for (std::int64_t i = 0; i < 20000; ++i) expected += i * i;
  CHECK(sum == expected);
  auto nothing = pool.submit([] {});
  nothing.get();
  CHECK(nothing.ready());
}

TEST_CASE("a task that throws fails its future with TaskError: index, type, message and pid") {
  Pool pool({.workers = 2});
  auto f = pool.submit([](int x) -> int { throw std::invalid_argument("bad x " + std::to_string(x)); }, 7);
  try {
    f.get();
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.index() == 0);
    CHECK(e.exception_type() == "std::invalid_argument");
    CHECK(e.message() == "bad x 7");
    const auto pids = pool.worker_pids();
    CHECK(std::find(pids.begin(), pids.end(), e.worker_pid()) != pids.end());
    CHECK(std::string(e.what()).find("item 0 failed in worker") != std::string::npos);
  }
}

TEST_CASE("map finishes every other item, then throws the lowest-index TaskError") {
  SegmentName name("mapfail");
  auto segment = Segment::create(name, 1 << 20);
  auto ran = segment.create_array<int>("ran", 1000, 0);
  Pool pool({.workers = 2});
  std::vector<int> items(1000);
  std::iota(items.begin(), items.end(), 0);
  try {
    pool.map(items, [](int i, Array<int> ran) {
      ran.store(i, 1);
      if (i == 700 || i == 300) throw std::runtime_error("item " + std::to_string(i));
      return i;
    }, ran);
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.index() == 300);
    CHECK(e.message() == "item 300");
  }
  CHECK(ran.snapshot() == std::vector<int>(1000, 1));
}

TEST_CASE("a worker killed mid-task fails only that item with WorkerDied; the rest is correct") {
  SegmentName name("killed");
  auto segment = Segment::create(name, 1 << 20);
  auto results = segment.create_array<std::int64_t>("results", 2000, -1);
  Pool pool({.workers = 2});
  const auto before = pool.worker_pids();
  std::vector<std::int64_t> items(2000);
  std::iota(items.begin(), items.end(), 0);
  for (const int way : {0, 1, 2}) {  // SIGKILL, abort(), _exit(3)
    CAPTURE(way);
    results.fill(-1);
    try {
      pool.map(items, [](std::int64_t i, Array<std::int64_t> out, int how) {
        if (i == 1234) {
          if (how == 0) ::kill(::getpid(), SIGKILL);
          if (how == 1) {
            std::signal(SIGABRT, SIG_DFL);  // not the test framework's crash handler
            std::abort();
          }
          ::_exit(3);
        }
        out.store(static_cast<std::size_t>(i), i * 3);
        return i;
      }, results, way);
      FAIL("no exception");
    } catch (const WorkerDied& e) {
      CHECK(e.index() == 1234);
      if (way == 0) CHECK(e.signal() == SIGKILL);
      if (way == 1) CHECK(e.signal() == SIGABRT);
      if (way == 2) CHECK(e.exit_status() == 3);
    }
    const auto got = results.snapshot();
    int wrong = 0;
    for (std::int64_t i = 0; i < 2000; ++i) wrong += got[i] != (i == 1234 ? -1 : i * 3);
    CHECK(wrong == 0);
  }
  CHECK(pool.map(items, square).at(1999) == 1999 * 1999);  // replacements took over
  CHECK(pool.worker_pids().size() == 2);
  CHECK(pool.worker_pids() != before);
}

TEST_CASE("a cancelled job throws Stopped and drops its unstarted work") {
  Pool pool({.workers = 2});
  std::vector<int> items(100000, 1);
  auto job = pool.map_async(items, [](int x) {
    std::this_thread::sleep_for(100us);
    return x;
  });
  while (job.progress().done < 10) std::this_thread::sleep_for(1ms);
  job.cancel();
  CHECK_THROWS_WITH_AS(job.get(), doctest::Contains("the job was stopped"), Stopped);
  const auto p = job.progress();
  CHECK(p.done + p.failed + p.skipped == p.total);
  CHECK(p.skipped > 50000);
}

TEST_CASE("a task that calls request_stop stops its own job; stop_requested sees it") {
  Pool pool({.workers = 2});
  std::vector<int> items(50000);
  std::iota(items.begin(), items.end(), 0);
  CHECK_THROWS_AS(pool.map(items, [](int x) {
    if (x == 100) request_stop();
    if (stop_requested()) return -1;
    std::this_thread::sleep_for(20us);
    return x;
  }), Stopped);
  CHECK_FALSE(stop_requested());  // outside a task
  CHECK(pool.map(std::vector<int>{1, 2}, [](int x) { return x; }) == std::vector<int>{1, 2});
}

TEST_CASE("find_first returns the lowest index even when a higher one is found first") {
  std::vector<int> items(20000, 0);
  for (const int at : {1500, 3000, 9000, 15000}) items[at] = 1;
  Pool pool({.workers = 4});
  for (int run = 0; run < 100; ++run) {
    const auto found = pool.find_first(items, [](const int& x, int seed) {
      // Random delays so that higher matches are often found first.
      std::minstd_rand random(static_cast<unsigned>(seed) ^ static_cast<unsigned>(::getpid()));
      if (random() % 50 == 0) std::this_thread::sleep_for(std::chrono::microseconds(random() % 300));
      return x == 1;
    }, run);
    REQUIRE(found.has_value());
    CHECK(found->first == 1500);
  }
  CHECK_FALSE(pool.find_first(std::vector<int>(100, 0), [](const int& x) { return x == 1; }).has_value());
}

TEST_CASE("find_first evaluates far fewer items than the total when the match is early") {
  SegmentName name("evaluated");
  auto segment = Segment::create(name, 1 << 16);
  auto evaluated = segment.create_atomic<std::int64_t>("evaluated", 0);
  std::vector<int> items(1000000, 0);
  items[2000] = 1;
  Pool pool({.workers = 2});
  const auto found = pool.find_first(items, [](const int& x, Atomic<std::int64_t> count) {
    count.fetch_add(1);
    return x == 1;
  }, evaluated);
  REQUIRE(found.has_value());
  CHECK(found->first == 2000);
  CHECK(evaluated.load() < 100000);
}

TEST_CASE("find_first reports an error from an item below the match, not one above") {
  Pool pool({.workers = 2});
  std::vector<int> items(5000, 0);
  items[3000] = 1;
  items[1000] = 2;  // throws, below the match
  items[4000] = 2;  // throws, above it
  auto pred = [](const int& x) {
    if (x == 2) throw std::runtime_error("broken item");
    return x == 1;
  };
  CHECK_THROWS_WITH_AS(pool.find_first(items, pred), doctest::Contains("item 1000 failed"), TaskError);
  items[1000] = 0;
  CHECK(pool.find_first(items, pred)->first == 3000);
}

TEST_CASE("find_first: tasks above the match see stop_requested, and it returns without waiting for them") {
  // Item 40 matches after 100 ms; every item above it polls stop_requested() for up to
  // 30 s; item 45 ignores it and sleeps 30 s. find_first must return soon after the match
  // (not after 30 s), and the tasks above the match must have seen the stop.
  SegmentName name("above");
  auto segment = Segment::create(name, 1 << 16);
  auto saw_stop = segment.create_atomic<std::int64_t>("saw_stop", 0);
  auto above_started = segment.create_atomic<std::int64_t>("above_started", 0);
  std::vector<int> items(200);
  std::iota(items.begin(), items.end(), 0);
  Pool pool({.workers = 4});
  const auto started = std::chrono::steady_clock::now();
  const auto found = pool.find_first(items, [](const int& x, Atomic<std::int64_t> saw,
                                               Atomic<std::int64_t> above) {
    if (x == 40) {
      std::this_thread::sleep_for(100ms);
      return true;
    }
    if (x < 40) return false;
    above.fetch_add(1);
    if (x == 45) {
      std::this_thread::sleep_for(30s);
      return false;
    }
    const auto until = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < until) {
      if (stop_requested()) {
        saw.fetch_add(1);
        return false;
      }
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }, saw_stop, above_started);
  const auto took = std::chrono::steady_clock::now() - started;
  REQUIRE(found.has_value());
  CHECK(found->first == 40);
  CHECK(took < 10s);  // not the 30 s of the tasks above the match
  CHECK(above_started.load() >= 1);
  // Every polling task that started above the match ends by seeing the stop (item 45,
  // which ignores it, is cut by terminate() below).
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (saw_stop.load() < above_started.load() - 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  CHECK(saw_stop.load() >= 1);
  CHECK(saw_stop.load() >= above_started.load() - 1);
  pool.terminate();
}

TEST_CASE("find_first still waits for every item below the match, and reports their failures") {
  // The match (item 3) is found at once; items 0 and 1 are slow, item 1 throws. The
  // answer cannot be final before they settled: TaskError for item 1 every run.
  Pool pool({.workers = 4});
  std::vector<int> items(64);
  std::iota(items.begin(), items.end(), 0);
  for (int run = 0; run < 5; ++run) {
    CHECK_THROWS_WITH_AS(pool.find_first(items, [](const int& x) {
      if (x == 0) std::this_thread::sleep_for(150ms);
      if (x == 1) {
        std::this_thread::sleep_for(200ms);
        throw std::runtime_error("slow failure");
      }
      return x == 3;
    }), doctest::Contains("item 1 failed"), TaskError);
    const auto found = pool.find_first(items, [](const int& x) {
      if (x == 0) std::this_thread::sleep_for(150ms);
      return x == 3 || x == 0;
    });
    REQUIRE(found.has_value());
    CHECK(found->first == 0);
  }
}

TEST_CASE("find_first: a worker killed below the match is settled before the answer") {
  // Item 2 kills its worker once (SIGKILL), after the match at item 5 was found; the
  // answer waits for item 2's death to settle and reports WorkerDied for it.
  SegmentName name("killed_below");
  auto segment = Segment::create(name, 1 << 16);
  auto killed = segment.create_atomic<std::int64_t>("killed", 0);
  Pool pool({.workers = 3});
  std::vector<int> items(32);
  std::iota(items.begin(), items.end(), 0);
  CHECK_THROWS_AS(pool.find_first(items, [](const int& x, Atomic<std::int64_t> k) {
    if (x == 2) {
      std::this_thread::sleep_for(150ms);
      if (k.fetch_add(1) == 0) ::raise(SIGKILL);
    }
    return x == 5;
  }, killed), WorkerDied);
  CHECK(killed.load() == 1);
  CHECK(pool.find_first(items, [](const int& x) { return x == 5; })->first == 5);
}

TEST_CASE("Future::get and Job::get with a timeout throw Timeout while the work runs, then return") {
  Pool pool({.workers = 2});
  auto future = pool.submit([](int x) {
    std::this_thread::sleep_for(300ms);
    return x * 2;
  }, 21);
  CHECK_THROWS_WITH_AS(future.get(20ms), doctest::Contains("has not ended after 20 ms"), Timeout);
  CHECK(future.get(30s) == 42);
  auto job = pool.map_async(std::vector<int>{1, 2, 3}, [](const int& x) {
    std::this_thread::sleep_for(300ms);
    return x + 1;
  });
  CHECK_THROWS_WITH_AS(job.get(10ms), doctest::Contains("Job::get"), Timeout);
  CHECK(job.get(30s) == std::vector<int>{2, 3, 4});
}

TEST_CASE("Future::cancel takes a task no worker started, and refuses one that runs") {
  SegmentName name("cancel");
  auto segment = Segment::create(name, 1 << 16);
  auto ran = segment.create_atomic<std::int64_t>("ran", 0);
  Pool pool({.workers = 1});
  auto busy = pool.submit([](Atomic<std::int64_t> r) {
    r.fetch_add(1);
    std::this_thread::sleep_for(300ms);
  }, ran);
  while (ran.load() == 0) std::this_thread::sleep_for(1ms);  // the one worker runs it
  auto queued = pool.submit([](Atomic<std::int64_t> r) { r.fetch_add(100); }, ran);
  CHECK(queued.cancel());
  CHECK(queued.cancelled());
  CHECK(queued.cancel());  // again: still cancelled
  CHECK_FALSE(busy.cancel());
  CHECK_FALSE(busy.cancelled());
  CHECK_THROWS_WITH_AS(queued.get(), doctest::Contains("cancelled before it started"), Stopped);
  CHECK(queued.exception() != nullptr);
  busy.get();
  CHECK(busy.exception() == nullptr);
  CHECK_FALSE(busy.cancel());  // ended
  CHECK(pool.submit([](int x) { return x; }, 5).get() == 5);  // the pool goes on
  CHECK(ran.load() == 1);  // the cancelled task never ran
}

TEST_CASE("Future::exception returns the task's failure without throwing") {
  Pool pool({.workers = 1});
  auto future = pool.submit([](int x) -> int { throw std::invalid_argument("bad " + std::to_string(x)); }, 7);
  const std::exception_ptr error = future.exception();
  REQUIRE(error != nullptr);
  CHECK_THROWS_WITH_AS(std::rethrow_exception(error), doctest::Contains("bad 7"), TaskError);
  CHECK(pool.submit([](int x) { return x; }, 1).exception() == nullptr);
}

namespace {
// A task that waits for its event, then returns k (or throws, for k == 3).
int released(int k, Event go) {
  if (!go.wait_for(30s)) throw std::runtime_error("never released");
  if (k == 3) throw std::runtime_error("three fails");
  return k;
}
}  // namespace

TEST_CASE("as_completed yields each future once, in the order the tasks end, failures included") {
  SegmentName name("completed");
  auto segment = Segment::create(name, 1 << 16);
  std::vector<Event> go;
  for (int k = 0; k < 4; ++k) go.push_back(segment.create_event("go" + std::to_string(k)));
  Pool pool({.workers = 4});
  std::vector<Future<int>> futures;
  for (int k = 0; k < 4; ++k) futures.push_back(pool.submit(released, k, go[static_cast<std::size_t>(k)]));
  // Each task ends only when released, in this order, one after the other has been yielded.
  const std::vector<int> order{2, 0, 3, 1};
  std::size_t step = 0;
  go[static_cast<std::size_t>(order[0])].set();
  for (Future<int>& f : as_completed(futures)) {
    REQUIRE(step < order.size());
    CHECK(&f == &futures[static_cast<std::size_t>(order[step])]);
    if (order[step] == 3)
      CHECK_THROWS_WITH_AS(f.get(), doctest::Contains("three fails"), TaskError);
    else
      CHECK(f.get() == order[step]);
    if (++step < order.size()) go[static_cast<std::size_t>(order[step])].set();
  }
  CHECK(step == 4);
}

TEST_CASE("as_completed with a timeout yields what ended, then throws Timeout; futures of two pools mix") {
  SegmentName name("completed-timeout");
  auto segment = Segment::create(name, 1 << 16);
  auto never = segment.create_event("never");
  auto now = segment.create_event("now");
  now.set();
  Pool first({.workers = 2}), second({.workers = 1});
  std::vector<Future<int>> futures;
  futures.push_back(first.submit(released, 0, never));  // released only after the loop
  futures.push_back(second.submit(released, 1, now));
  futures.push_back(first.submit(released, 2, now));
  std::vector<int> yielded;
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(
      [&] {
        for (Future<int>& f : as_completed(futures, 300ms)) yielded.push_back(f.get());
      }(),
      doctest::Contains("as_completed: 1 future had not ended after"), Timeout);
  CHECK(std::chrono::steady_clock::now() - start >= 300ms);
  std::sort(yielded.begin(), yielded.end());
  CHECK(yielded == std::vector<int>{1, 2});
  never.set();
  CHECK(futures[0].get() == 0);  // it went on running
  std::vector<Future<int>> moved;
  moved.push_back(std::move(futures[1]));
  CHECK_THROWS_WITH_AS(as_completed(futures), doctest::Contains("empty"), InvalidArgument);
  std::vector<Future<int>> none;
  for (Future<int>& f : as_completed(none)) FAIL("yielded from nothing: " << f.get());
}

TEST_CASE("a burst of submits to an idle pool starts on as many idle workers as there are tasks") {
  SegmentName name("burst");
  auto segment = Segment::create(name, 1 << 16);
  auto started = segment.create_array<std::int64_t>("started", 4, 0);
  auto now_us = [] {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
  };
  Pool pool({.workers = 4});
  for (int round = 0; round < 10; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + 23 * round));  // workers idle, asleep
    std::vector<Future<void>> futures;
    for (int i = 0; i < 4; ++i)
      futures.push_back(pool.submit([](int slot, Array<std::int64_t> at) {
        at.store(static_cast<std::size_t>(slot),
                 std::chrono::duration_cast<std::chrono::microseconds>(
                     std::chrono::steady_clock::now().time_since_epoch()).count());
        std::this_thread::sleep_for(400ms);
      }, i, started));
    const std::int64_t submitted = now_us();
    for (auto& f : futures) f.get();
    // All four ran at once: each started before any could have finished (400 ms).
    for (std::size_t i = 0; i < 4; ++i) CHECK(started.load(i) - submitted < 300'000);
  }
}

namespace {
// This process's resident set (VmRSS), in bytes.
std::uint64_t resident_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}
}  // namespace

TEST_CASE("map and map_async over a Range give each task its index, in order") {
  Pool pool({.workers = 3});
  const auto squares = pool.map(Range{5, 105}, [](std::uint64_t i) { return i * i; });
  REQUIRE(squares.size() == 100);
  for (std::uint64_t k = 0; k < 100; ++k) CHECK(squares[k] == (k + 5) * (k + 5));
  auto job = pool.map_async(Chunk{7}, Range{0, 1000}, [](std::uint64_t i, int add) {
    return std::to_string(i + static_cast<std::uint64_t>(add));
  }, 3);
  const auto texts = job.get();
  REQUIRE(texts.size() == 1000);
  CHECK(texts[0] == "3");
  CHECK(texts[999] == "1002");
  CHECK(pool.map(Range{10, 10}, [](std::uint64_t i) { return i; }).empty());
  CHECK(pool.map(Range{10, 3}, [](std::uint64_t i) { return i; }).empty());  // end <= first
  CHECK_THROWS_WITH_AS(pool.map(Range{0, 50}, [](std::uint64_t i) {
    if (i == 17) throw std::runtime_error("seventeen");
    return i;
  }), doctest::Contains("item 17 failed"), TaskError);
}

TEST_CASE("every call takes any contiguous range of items: array, C array, span, vector of strings") {
  Pool pool({.workers = 2});
  auto twice = [](const int& x) { return 2 * x; };
  const std::array<int, 4> array{1, 2, 3, 4};
  CHECK(pool.map(array, twice) == std::vector<int>{2, 4, 6, 8});
  int c_array[] = {5, 6, 7};
  CHECK(pool.map(Chunk{1}, c_array, twice) == std::vector<int>{10, 12, 14});
  std::vector<int> values{9, 8, 7, 6, 5};
  const std::span<int> mutable_span(values);  // (a span of non-const items too)
  CHECK(pool.map_async(mutable_span.subspan(1, 3), twice).get() == std::vector<int>{16, 14, 12});
  const auto found = pool.find_first(array, [](const int& x) { return x > 2; });
  REQUIRE(found.has_value());
  CHECK(found->first == 2);
  CHECK(found->second == 3);
  const std::vector<std::string> words{"a", "bb", "ccc"};
  std::size_t total = 0, yielded = 0;
  for (const auto& o : pool.imap_unordered(words, [](const std::string& w) { return w.size(); })) {
    total += o.value();
    ++yielded;
  }
  CHECK(yielded == 3);
  CHECK(total == 6);
  std::vector<std::size_t> in_order;
  for (const auto& o : pool.imap(std::span<const std::string>(words), [](const std::string& w) { return w.size(); }))
    in_order.push_back(o.value());
  CHECK(in_order == std::vector<std::size_t>{1, 2, 3});
}

TEST_CASE("find_first over a Range gives the same answer as over the same items in a vector") {
  Pool pool({.workers = 3});
  auto pred = [](std::uint64_t x) { return x > 1500 && x % 37 == 0; };
  std::vector<std::uint64_t> items(1000);
  std::iota(items.begin(), items.end(), std::uint64_t{1000});
  const auto from_vector = pool.find_first(items, [](const std::uint64_t& x) { return x > 1500 && x % 37 == 0; });
  const auto from_range = pool.find_first(Range{1000, 2000}, pred);
  REQUIRE(from_vector.has_value());
  REQUIRE(from_range.has_value());
  CHECK(from_range->first == from_vector->first);
  CHECK(from_range->second == from_vector->second);
  CHECK_FALSE(pool.find_first(Range{0, 1000}, [](std::uint64_t x) { return x > 5000; }).has_value());
}

TEST_CASE("find_first over Range{0, 10^9} with the match at 10^6 returns it in memory independent of n") {
  Pool pool({.workers = 2});
  auto pred = [](std::uint64_t x) { return x == 1'000'000; };
  (void)pool.find_first(Range{0, 2'000'000}, pred);  // warm up
  const std::uint64_t before = resident_bytes();
  const auto started = std::chrono::steady_clock::now();
  const auto found = pool.find_first(Range{0, 1'000'000'000}, pred);
  const auto took = std::chrono::steady_clock::now() - started;
  const std::uint64_t after = resident_bytes();
  REQUIRE(found.has_value());
  CHECK(found->first == 1'000'000);
  CHECK(found->second == 1'000'000);
  // A vector of 10^9 items would take gigabytes; a Range takes nothing per item.
  CHECK(after < before + (16u << 20));
  // Proportional to the match, not to n (10^9 trivial items would take far longer).
  CHECK(took < 30s);
}

TEST_CASE("Job::outcomes after get() threw keeps every good result and each item's failure") {
  Pool pool({.workers = 3});
  std::vector<int> items(100);
  std::iota(items.begin(), items.end(), 0);
  auto job = pool.map_async(items, [](const int& x) {
    if (x == 10 || x == 50) throw std::runtime_error("bad item " + std::to_string(x));
    return x * 3;
  });
  CHECK_THROWS_WITH_AS(job.get(), doctest::Contains("item 10 failed"), TaskError);
  const auto outcomes = job.outcomes();
  REQUIRE(outcomes.size() == 100);
  int done = 0;
  for (const auto& o : outcomes) {
    CHECK(o.index() == static_cast<std::size_t>(&o - outcomes.data()));
    if (o.index() == 10 || o.index() == 50) {
      CHECK(o.state() == ItemState::failed);
      CHECK_FALSE(o.ok());
      const std::string text = "bad item " + std::to_string(o.index());
      CHECK_THROWS_WITH_AS(o.value(), doctest::Contains(text.c_str()), TaskError);
      CHECK(o.error() != nullptr);
    } else {
      REQUIRE(o.state() == ItemState::done);
      CHECK(o.value() == static_cast<int>(o.index()) * 3);
      CHECK(o.error() == nullptr);
      ++done;
    }
  }
  CHECK(done == 98);
}

TEST_CASE("Job::outcomes of a stopped job: items that ran keep their results, the rest never ran") {
  Pool pool({.workers = 2});
  std::vector<int> items(20000);
  std::iota(items.begin(), items.end(), 0);
  auto job = pool.map_async(items, [](const int& x) {
    std::this_thread::sleep_for(50us);
    return std::to_string(x);
  });
  while (job.progress().done < 500) std::this_thread::sleep_for(1ms);
  job.cancel();
  CHECK_THROWS_AS(job.get(), Stopped);
  const auto progress = job.progress();
  const auto outcomes = job.outcomes();
  REQUIRE(outcomes.size() == items.size());
  std::uint64_t done = 0, skipped = 0;
  for (const auto& o : outcomes) {
    if (o.state() == ItemState::done) {
      ++done;
      CHECK(o.value() == std::to_string(o.index()));
    } else {
      REQUIRE(o.state() == ItemState::skipped);
      ++skipped;
      CHECK_THROWS_WITH_AS(o.value(), doctest::Contains("never ran"), Stopped);
    }
  }
  CHECK(done == progress.done);
  CHECK(skipped == progress.skipped);
  CHECK(done >= 500);
  CHECK(skipped > 0);
}

TEST_CASE("Job::outcomes: the item a killed worker ran is WorkerDied, everything else is done") {
  SegmentName name("outcome_kill");
  auto segment = Segment::create(name, 1 << 16);
  auto killed = segment.create_atomic<std::int64_t>("killed", 0);
  Pool pool({.workers = 2});
  std::vector<int> items(200);
  std::iota(items.begin(), items.end(), 0);
  auto job = pool.map_async(Chunk{10}, items, [](const int& x, Atomic<std::int64_t> k) {
    if (x == 25 && k.fetch_add(1) == 0) ::raise(SIGKILL);
    return x + 1;
  }, killed);
  CHECK_THROWS_AS(job.get(), WorkerDied);
  const auto outcomes = job.outcomes();
  for (const auto& o : outcomes) {
    if (o.index() == 25) {
      CHECK(o.state() == ItemState::failed);
      CHECK_THROWS_AS(o.value(), WorkerDied);
    } else {
      REQUIRE(o.state() == ItemState::done);
      CHECK(o.value() == static_cast<int>(o.index()) + 1);
    }
  }
}

namespace {

// A task's exception whose destructor sleeps (20 s at most): run_chunk destroys it at the
// end of its catch block, after the item's error was sent and counted and before the item
// is marked over, so the worker waits right there for the test to kill it.
struct HeldError : std::runtime_error {
  HeldError() : std::runtime_error("held in its worker") {}
  HeldError(const HeldError&) = default;
  ~HeldError() override { std::this_thread::sleep_for(20s); }
};

}  // namespace

// The supervisor settling the death used to count the item failed again (and one item
// fewer done) when the worker had counted its error already.
TEST_CASE("a worker killed between an item's error and marking it over counts the item failed once") {
  SegmentName name("fail_once");
  auto segment = Segment::create(name, 1 << 16);
  auto gate = segment.create_atomic<std::int64_t>("gate", 0);  // holds the items after k
  Pool pool({.workers = 2});
  auto control = Segment::open(pool.control_segment());
  constexpr std::uint64_t total = 64;
  std::vector<int> items(total);
  std::iota(items.begin(), items.end(), 0);
  struct Round {
    int item;             // k, the item whose worker is killed
    std::uint64_t chunk;
    bool after_error;     // killed once its error is out (else while it runs, before it)
  };
  const Round rounds[] = {{0, 1, true},  {5, 1, true},   {13, 3, true},  {30, 8, true},
                          {47, 64, true}, {63, 4, true}, {20, 1, false}, {40, 8, false},
                          {1, 2, true},  {33, 16, true}, {62, 1, true},  {9, 5, true}};
  int wrong_rounds = 0;
  for (const Round& round : rounds) {
    CAPTURE(round.item);
    CAPTURE(round.chunk);
    CAPTURE(round.after_error);
    gate.store(0);
    const std::uint32_t deaths = inspect_pool(control).worker_deaths;
    auto job = pool.map_async(Chunk{round.chunk}, items,
                              [](const int& x, int k, bool after_error, Atomic<std::int64_t> g) {
                                if (x == k) {
                                  if (!after_error) std::this_thread::sleep_for(20s);
                                  throw HeldError();
                                }
                                while (x > k && g.load() == 0) std::this_thread::sleep_for(100us);
                                return x;
                              },
                              round.item, round.after_error, gate);
    // The worker running item k: with its error counted (seen at once in the job's
    // progress) if after_error.
    int victim = 0;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (victim == 0 && std::chrono::steady_clock::now() < deadline) {
      if (!round.after_error || job.progress().failed >= 1)
        for (const auto& w : inspect_pool(control).workers)
          if (w.state == "busy" && w.job == job.id() &&
              w.current_item == static_cast<std::uint64_t>(round.item))
            victim = w.pid;
      if (victim == 0) std::this_thread::sleep_for(1ms);
    }
    REQUIRE(victim > 0);
    ::kill(victim, SIGKILL);
    while (inspect_pool(control).worker_deaths == deaths &&
           std::chrono::steady_clock::now() < deadline + 10s)
      std::this_thread::sleep_for(1ms);
    REQUIRE(inspect_pool(control).worker_deaths == deaths + 1);  // (settled)
    // While the items after k wait: one failure, here and for a controller (who no longer
    // sees the job if k was its last item).
    const auto live = job.progress();
    const auto status = inspect_pool(control);
    const auto it = std::find_if(status.jobs.begin(), status.jobs.end(),
                                 [&](const auto& j) { return j.id == job.id(); });
    const std::uint64_t seen_failed = it == status.jobs.end() ? 1 : it->failed;
    bool wrong = live.failed != 1 || seen_failed != 1;
    wrong |= live.done + live.failed + live.skipped > total;
    if (it != status.jobs.end()) wrong |= it->done + it->failed + it->skipped > total;
    gate.store(1);
    REQUIRE(job.wait_for(20s));
    const auto outcomes = job.outcomes();
    std::set<std::size_t> failed_items;
    for (const auto& o : outcomes)
      if (o.state() == ItemState::failed) failed_items.insert(o.index());
    const auto p = job.progress();
    wrong |= p.done + p.failed + p.skipped != total || p.failed != failed_items.size();
    wrong |= p.failed != 1 || p.done != total - 1 || p.skipped != 0;
    CHECK(live.failed == 1);
    CHECK(seen_failed == 1);
    CHECK(p.done + p.failed + p.skipped == total);
    CHECK(p.failed == failed_items.size());
    CHECK(failed_items == std::set<std::size_t>{static_cast<std::size_t>(round.item)});
    CHECK(p.done == total - 1);
    if (round.after_error)
      CHECK_THROWS_AS(outcomes.at(static_cast<std::size_t>(round.item)).value(), TaskError);
    else
      CHECK_THROWS_AS(outcomes.at(static_cast<std::size_t>(round.item)).value(), WorkerDied);
    wrong_rounds += wrong;
  }
  MESSAGE(wrong_rounds << " of " << std::size(rounds) << " rounds had wrong counts");
}

TEST_CASE("Job::outcomes works for void tasks, and after a successful get() says the results moved") {
  Pool pool({.workers = 2});
  auto job = pool.map_async(std::vector<int>{1, 2, 3}, [](const int& x) {
    if (x == 2) throw std::runtime_error("two");
  });
  const auto outcomes = job.outcomes();
  REQUIRE(outcomes.size() == 3);
  CHECK(outcomes[0].ok());
  CHECK(outcomes[1].state() == ItemState::failed);
  CHECK(outcomes[2].ok());
  auto fine = pool.map_async(std::vector<int>{1, 2}, [](const int& x) { return x; });
  CHECK(fine.get() == std::vector<int>{1, 2});
  CHECK_THROWS_WITH_AS(fine.outcomes(), doctest::Contains("moved them out"), InvalidArgument);
}

TEST_CASE("a throwing initializer breaks the pool with a clear error, without a respawn loop") {
  Pool pool({.workers = 2, .initializer = [] { throw std::runtime_error("no database"); }});
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(pool.submit([] { return 1; }).get(),
                       doctest::Contains("the initializer threw std::runtime_error: no database"),
                       PoolClosed);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  try {
    pool.submit([] { return 1; });
    FAIL("no exception");
  } catch (const PoolClosed& e) {  // names the worker whose initializer threw
    const std::string text = e.what();
    const auto at = text.find("worker ");
    REQUIRE(at != std::string::npos);
    CHECK(std::atoi(text.c_str() + at + 7) > 0);
    CHECK(text.find(": the initializer threw std::runtime_error: no database", at) != std::string::npos);
  }
}

TEST_CASE("a worker whose initializer fails once is counted as a worker death, and the pool goes on") {
  SegmentName name("init-once");
  auto segment = Segment::create(name, 64 * 1024);
  auto failed = segment.create_flag("failed");
  Pool pool({.workers = 1, .initializer = [failed]() mutable {
               if (!failed.test_and_set()) throw std::runtime_error("first start fails");
             }});
  CHECK(pool.submit([] { return 5; }).get() == 5);  // the replacement runs it
  auto control = Segment::open(pool.control_segment());
  CHECK(inspect_pool(control).worker_deaths == 1);
  CHECK(segment_report(control, ReportFormat::text).find("1 worker deaths") != std::string::npos);
}

TEST_CASE("the initializer runs in every worker, replacements included") {
  SegmentName name("init");
  auto segment = Segment::create(name, 1 << 16);
  auto starts = segment.create_atomic<int>("starts", 0);
  Pool pool({.workers = 2, .initializer = [starts]() mutable { starts += 1; }, .max_tasks_per_child = 1});
  std::set<int> pids;
  for (int i = 0; i < 5; ++i) pids.insert(pool.submit([] { return static_cast<int>(::getpid()); }).get());
  CHECK(pids.size() == 5);  // one task per worker: each ran in a fresh replacement
  pool.close();
  pool.join();
  CHECK(starts.load() >= 5);  // every one of them ran the initializer first
}

TEST_CASE("terminate while tasks run returns within a second, leaving no worker or supervisor") {
  Pool pool({.workers = 2});
  auto slow = pool.submit([] {
    std::this_thread::sleep_for(30s);
    return 1;
  });
  auto pending = pool.map_async(std::vector<int>(100, 1), [](int x) {
    std::this_thread::sleep_for(1s);
    return x;
  });
  while (pool.worker_pids().size() < 2) std::this_thread::sleep_for(1ms);
  std::vector<int> pids = pool.worker_pids();
  pids.push_back(pool.supervisor_pid());
  const auto start = std::chrono::steady_clock::now();
  pool.terminate();
  CHECK(std::chrono::steady_clock::now() - start < 1s);
  CHECK(all_gone(pids, 1s));
  CHECK_THROWS_WITH_AS(slow.get(), doctest::Contains("the pool was terminated"), PoolClosed);
  CHECK_THROWS_AS(pending.get(), PoolClosed);
  CHECK_THROWS_AS(pool.submit([] { return 1; }), PoolClosed);
}

TEST_CASE("the parent SIGKILLed mid-job takes its supervisor and workers with it") {
  PipeSignal ready;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t parent = run_child([&] {
    Pool pool({.workers = 2});
    auto job = pool.map_async(std::vector<int>(1000, 1), [](int x) {
      std::this_thread::sleep_for(50ms);
      return x;
    });
    while (pool.worker_pids().size() < 2) std::this_thread::sleep_for(1ms);
    std::vector<int> pids = pool.worker_pids();
    pids.push_back(pool.supervisor_pid());
    const std::string segment = pool.control_segment();
    const std::size_t n = pids.size();
    if (::write(fds[1], &n, sizeof n) < 0 || ::write(fds[1], pids.data(), n * sizeof(int)) < 0 ||
        ::write(fds[1], segment.c_str(), segment.size() + 1) < 0)
      ::_exit(4);
    ready.notify();
    for (;;) ::pause();
  });
  REQUIRE(ready.wait());
  std::size_t n = 0;
  REQUIRE(::read(fds[0], &n, sizeof n) == sizeof n);
  std::vector<int> pids(n);
  REQUIRE(::read(fds[0], pids.data(), n * sizeof(int)) == static_cast<ssize_t>(n * sizeof(int)));
  char segment[256] = {};
  REQUIRE(::read(fds[0], segment, sizeof segment - 1) > 0);
  ::close(fds[0]);
  ::close(fds[1]);
  ::kill(parent, SIGKILL);
  CHECK(wait_child(parent).signal == SIGKILL);
  CHECK(all_gone(pids, 1s));
  // Nobody maps the control segment any more: it is stale (the flock rule), and removable.
  const int fd = ::open((std::string("/dev/shm/") + segment).c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  CHECK(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  ::close(fd);
  CHECK(Segment::remove(segment));
}

TEST_CASE("Pool refuses to fork a threaded process unless allow_threads") {
  std::atomic<bool> done{false};
  std::thread busy([&] {
    while (!done) std::this_thread::sleep_for(1ms);
  });
  CHECK_THROWS_WITH_AS(Pool({.workers = 1}), doctest::Contains("forking a threaded process is unsafe"),
                       InvalidArgument);
  {
    Pool pool({.workers = 1, .allow_threads = true});
    CHECK(pool.submit([] { return 5; }).get() == 5);
  }
  done = true;
  busy.join();
}

TEST_CASE("handles cross into tasks: workers update a Value and a Queue the parent reads") {
  SegmentName name("handles");
  auto segment = Segment::create(name, 1 << 20);
  auto total = segment.create_value<std::int64_t>("total", 0);
  auto queue = segment.create_queue<int>("q", 1000);
  Pool pool({.workers = 2});
  std::vector<int> items(500);
  std::iota(items.begin(), items.end(), 1);
  pool.map(items, [](int x, Value<std::int64_t> sum, Queue<int> out) {
    sum += x;
    out.push(x);
    return 0;
  }, total, queue);
  CHECK(total.load() == 500 * 501 / 2);
  CHECK(queue.size() == 500);
}

TEST_CASE("progress reaches exactly the total and never goes back, seen here and from a controller") {
  Pool pool({.workers = 2});
  std::vector<int> items(20000, 1);
  auto job = pool.map_async(items, [](int x) {
    std::this_thread::sleep_for(5us);
    return x;
  });
  const std::string control = pool.control_segment();
  const std::uint64_t id = job.id();
  // Another process attaches to the control segment by name and watches the job.
  const pid_t watcher = run_child([control, id] {
    auto segment = Segment::open(control);
    std::uint64_t last = 0;
    for (;;) {
      const auto status = inspect_pool(segment);
      if (status.workers.size() != 2 || status.parent_pid <= 0) ::_exit(3);
      auto it = std::find_if(status.jobs.begin(), status.jobs.end(), [id](const auto& j) { return j.id == id; });
      if (it == status.jobs.end()) break;  // finished and collected
      const std::uint64_t settled = it->done + it->failed + it->skipped;
      if (settled < last || settled > it->total || it->total != 20000 || it->kind != "map") ::_exit(4);
      last = settled;
    }
  });
  std::uint64_t last = 0;
  for (;;) {
    const auto p = job.progress();
    CHECK(p.done >= last);
    last = p.done;
    if (p.done == p.total) break;
    std::this_thread::sleep_for(1ms);
  }
  CHECK(job.get().size() == 20000);
  CHECK(job.progress().done == 20000);
  CHECK(wait_child(watcher, 60s).ok());
  auto segment = Segment::open(control);
  CHECK(inspect_pool(segment).items_done >= 20000);
}

TEST_CASE("a controller's stop_pool_jobs stops a running job, which throws Stopped") {
  Pool pool({.workers = 2});
  auto job = pool.map_async(std::vector<int>(100000, 1), [](int x) {
    std::this_thread::sleep_for(50us);
    return x;
  });
  while (job.progress().done == 0) std::this_thread::sleep_for(1ms);
  const pid_t controller = run_child([name = pool.control_segment()] {
    auto segment = Segment::open(name);
    if (stop_pool_jobs(segment) != 1) ::_exit(3);
  });
  CHECK(wait_child(controller).ok());
  CHECK_THROWS_AS(job.get(), Stopped);
  SegmentName other("notapool");
  auto plain = Segment::create(other, 1 << 16);
  CHECK_THROWS_AS(inspect_pool(plain), NotFound);
}

TEST_CASE("inspect_pool of a job's data segment is NotFound naming the control segment of the pool its creator made") {
  // In a child, so that no other pool of this process is in /dev/shm meanwhile.
  SegmentName data_name("jobdata"), pool_name("jobpool");
  PipeSignal ready, checked;
  const pid_t owner = run_child([&] {
    auto data = Segment::create(data_name, 1 << 16);
    Pool pool({.workers = 1, .name = pool_name.str()});
    ready.notify();
    if (!checked.wait()) ::_exit(3);
  });
  REQUIRE(ready.wait());
  auto data = Segment::open(data_name);
  CHECK(pools_of_creator(data) == std::vector<std::string>{pool_name.str()});
  const std::string expected = "segment '" + data_name.str() +
                               "': pool 'pool': no object of that name: it is not a pool's control segment; the pool "
                               "its creator (pid " + std::to_string(owner) + ") made: segment '" + pool_name.str() + "'";
  CHECK_THROWS_WITH_AS(inspect_pool(data), expected.c_str(), NotFound);
  CHECK_THROWS_WITH_AS(stop_pool_jobs(data), expected.c_str(), NotFound);
  auto control = Segment::open(pool_name);
  CHECK(inspect_pool(control).workers.size() == 1);
  checked.notify();
  CHECK(wait_child(owner).ok());
  SegmentName lone_name("lone");
  auto lone = Segment::create(lone_name, 1 << 16);
  // This process's own pools are gone by now (every test's Pool was destroyed).
  CHECK_THROWS_WITH_AS(inspect_pool(lone),
                       doctest::Contains(("it is not a pool's control segment, and its creator (pid " +
                                          std::to_string(::getpid()) + ") has no pool in /dev/shm")
                                             .c_str()),
                       NotFound);
}

TEST_CASE("bad pool options are InvalidArgument; a closed pool refuses work with PoolClosed") {
  CHECK_THROWS_AS(Pool({.workers = 5000}), InvalidArgument);
  CHECK_THROWS_AS(Pool({.workers = 1, .arena_bytes = 10}), InvalidArgument);
  Pool pool({.workers = 1});
  CHECK_THROWS_AS(pool.join(), InvalidArgument);
  pool.close();
  CHECK_THROWS_WITH_AS(pool.submit([] { return 1; }), doctest::Contains("the pool is closed"), PoolClosed);
  pool.join();
}

}  // TEST_SUITE

TEST_SUITE("pool") {

TEST_CASE("a fixed chunk size gives the same results") {
  Pool pool({.workers = 2});
  std::vector<std::int64_t> items(10001);
  std::iota(items.begin(), items.end(), 0);
  const auto results = pool.map(Chunk{777}, items, square);
  CHECK(results.at(10000) == 100000000);
  CHECK(results.size() == items.size());
  CHECK(pool.map(Chunk{1}, std::vector<std::int64_t>{3}, square) == std::vector<std::int64_t>{9});
}

}  // TEST_SUITE

TEST_SUITE("pool") {

TEST_CASE("automatic chunks grow: a million trivial items take far fewer than a million claims") {
  Pool pool({.workers = 2});
  std::vector<std::int64_t> items(1000000);
  std::iota(items.begin(), items.end(), 0);
  CHECK(pool.map(items, square).at(999999) == 999999LL * 999999LL);
  auto segment = Segment::open(pool.control_segment());
  std::uint64_t chunks = 0;
  for (const auto& w : inspect_pool(segment).workers) chunks += w.tasks_done;
  CHECK(chunks < 10000);
}

TEST_CASE("cancel drops unclaimed work at once, even while every worker is busy") {
  Pool pool({.workers = 2});
  auto job = pool.map_async(Chunk{1}, std::vector<int>(1000, 1), [](int x) {
    std::this_thread::sleep_for(20ms);
    return x;
  });
  while (job.progress().done < 2) std::this_thread::sleep_for(1ms);
  const auto start = std::chrono::steady_clock::now();
  job.cancel();
  CHECK_THROWS_AS(job.get(), Stopped);
  CHECK(std::chrono::steady_clock::now() - start < 200ms);  // at most the running items
  CHECK(job.progress().skipped >= 990);
}

}  // TEST_SUITE

TEST_SUITE("pool") {

TEST_CASE("a controller stops a newer job while an older one still has work: it ends at once") {
  Pool pool({.workers = 2});
  auto older = pool.map_async(Chunk{1}, std::vector<int>(20000, 1), [](int x) {
    std::this_thread::sleep_for(100us);
    return x;
  });
  auto newer = pool.map_async(Chunk{1}, std::vector<int>(20000, 2), [](int x) { return x; });
  while (older.progress().done == 0) std::this_thread::sleep_for(1ms);
  const pid_t controller = run_child([name = pool.control_segment(), id = newer.id()] {
    auto segment = Segment::open(name);
    if (stop_pool_jobs(segment, id) != 1) ::_exit(3);
  });
  CHECK(wait_child(controller).ok());
  CHECK_THROWS_AS(newer.get(), Stopped);
  const auto p = older.progress();
  CHECK(p.done + p.failed + p.skipped < p.total / 2);  // the older job had far to go
  CHECK(newer.progress().skipped == 20000);        // none of the newer job ran
  older.cancel();
  CHECK_THROWS_AS(older.get(), Stopped);
}

TEST_CASE("a pool reserves its arena as jobs use it: a big arena costs nothing up front") {
  auto reserved_bytes = [](const std::string& name) {
    struct stat st{};
    REQUIRE(::stat(("/dev/shm/" + name).c_str(), &st) == 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
  };
  Pool pool({.workers = 2, .arena_bytes = std::size_t{1} << 30});
  const std::uint64_t at_start = reserved_bytes(pool.control_segment());
  CHECK(at_start < (8u << 20));
  std::vector<std::int64_t> items(2u << 20);  // 16 MiB in, 16 MiB of results
  std::iota(items.begin(), items.end(), 0);
  const auto results = pool.map(items, square);
  CHECK(results.at(2000000) == 2000000LL * 2000000LL);
  const std::uint64_t after = reserved_bytes(pool.control_segment());
  CHECK(after >= at_start + (32u << 20));
  CHECK(after < (64u << 20));
}

}  // TEST_SUITE

#include "../lib/detail/pool_layout.hpp"

TEST_SUITE("pool") {

TEST_CASE("a forged pool block (misaligned or outside tables) is CorruptSegment for controllers") {
  Pool pool({.workers = 1, .arena_bytes = 1 << 16});
  auto segment = Segment::open(pool.control_segment());
  CHECK(pool.submit([] { return 7; }).get() == 7);
  // Its processes end first: a worker waking while a table offset is forged would write
  // through it (into the block's own header, say), corrupting the segment for real.
  pool.close();
  pool.join();
  CHECK(inspect_pool(segment).workers.size() == 1);
  const auto placed = detail::place(segment, "pool", {ObjectKind::pool, "", 0, 0, 0, 0},
                                    detail::Intent::open, nullptr, nullptr);
  auto& b = *reinterpret_cast<detail::PoolBlock*>(
      detail::resolve(placed.handle, ObjectKind::pool, sizeof(detail::PoolBlock)));
  auto forged = [&](std::uint64_t& field, std::uint64_t value) {
    const std::uint64_t saved = field;
    field = value;
    CHECK_THROWS_AS(inspect_pool(segment), CorruptSegment);
    CHECK_THROWS_AS(stop_pool_jobs(segment), CorruptSegment);
    field = saved;
  };
  forged(b.jobs_offset, b.jobs_offset + 8);           // misaligned
  forged(b.workers_offset, 0);                        // on top of the block
  forged(b.rings_offset, std::uint64_t{1} << 40);     // outside
  forged(b.arena_offset, b.arena_offset + 64 + placed.bytes);
  forged(b.ring_bytes, 3);
  CHECK(inspect_pool(segment).workers.size() == 1);   // intact again
}

// A string of `bytes` bytes that tells every position apart (so a lost or misplaced
// piece shows).
std::string patterned(std::size_t bytes, std::size_t seed) {
  std::string text(bytes, ' ');
  for (std::size_t i = 0; i < bytes; ++i) text[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return text;
}

TEST_CASE("results and exception messages far larger than a result ring arrive whole") {
  Pool pool({.workers = 2});
  const auto big = [](std::size_t bytes) { return patterned(bytes, bytes); };
  CHECK(pool.submit(big, std::size_t{1} << 20).get() == big(std::size_t{1} << 20));
  // Several at once, from both workers, interleaved in the parent.
  std::vector<std::size_t> sizes{700'000, 3 << 20, 10, 1'500'000, 524'200, 524'300};
  const auto results = pool.map(sizes, big);
  REQUIRE(results.size() == sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) CHECK(results[i] == big(sizes[i]));
  try {
    pool.submit([](std::size_t bytes) -> int { throw std::runtime_error(patterned(bytes, 1)); },
                std::size_t{1} << 20)
        .get();
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.exception_type() == "std::runtime_error");
    CHECK(e.message() == patterned(std::size_t{1} << 20, 1));
  }
}

TEST_CASE("a result larger than the pool's arena fails its item; a larger message keeps its type and start") {
  Pool pool({.workers = 1, .arena_bytes = 1 << 20});
  try {
    pool.submit([](std::size_t bytes) { return std::string(bytes, 'x'); }, std::size_t{2} << 20).get();
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.exception_type() == "procshare::Error");
    CHECK(e.message() == fmt::format("the result takes {} bytes, more than the pool's arena of {} bytes "
                                     "(PoolOptions::arena_bytes)", (std::size_t{2} << 20) + 8, 1 << 20));
  }
  try {
    pool.submit([](std::size_t bytes) -> int { throw std::invalid_argument(patterned(bytes, 2)); },
                std::size_t{2} << 20)
        .get();
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.exception_type() == "std::invalid_argument");
    CHECK(e.message().rfind(patterned(4096, 2), 0) == 0);
    CHECK(e.message().find("... (the message was cut: 2097152 bytes, more than the pool's arena of "
                           "1048576 bytes, PoolOptions::arena_bytes)") == 4096);
  }
  CHECK(pool.submit([] { return 7; }).get() == 7);  // the pool goes on
}

}  // TEST_SUITE
