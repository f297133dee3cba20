// Kill storms: each scenario runs many rounds; in each, a victim process works on shared
// objects and is SIGKILLed at a random moment, then the invariants are checked: nobody
// hangs (every wait is bounded), totals are exact but for the victim's own in-flight
// operation, poison appears exactly where a write was cut (a poisoned container is
// refused until reset()), the segment still validates.
// Rounds: PROCSHARE_STORM_ROUNDS (default 200; run.sh asan uses 20); PROCSHARE_SOAK=N
// multiplies them for long runs by hand.
#include "support.hpp"

#include <doctest/doctest.h>

#include <map>
#include <numeric>
#include <random>

using namespace procshare;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using namespace std::chrono_literals;

namespace {

int rounds() {
  int n = 200;
  if (const char* r = std::getenv("PROCSHARE_STORM_ROUNDS")) n = std::max(1, std::atoi(r));
  if (const char* soak = std::getenv("PROCSHARE_SOAK")) n *= std::max(1, std::atoi(soak));
  return n;
}

// Starts `victim` in a child, lets it run for a random moment, SIGKILLs it.
template <class F> void kill_at_random(std::mt19937& random, F victim) {
  const pid_t pid = run_child(victim);
  std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
  ::kill(pid, SIGKILL);
  const auto status = wait_child(pid, 10s);
  CHECK_FALSE(status.timed_out);
}

// The victim's operation `i` on a Vector: mostly push_back(i), every third a pop_back, every
// 512th a clear; `vector_after(n)` is the contents after operations 0 .. n-1.
void vector_operation(Vector<std::int64_t>& v, std::int64_t i) {
  if (i % 512 == 511) v.clear();
  else if (i % 3 == 2) v.pop_back();
  else v.push_back(i);
}
std::vector<std::int64_t> vector_after(std::int64_t n) {
  std::vector<std::int64_t> v;
  for (std::int64_t i = 0; i < n; ++i) {
    if (i % 512 == 511) v.clear();
    else if (i % 3 == 2) { if (!v.empty()) v.pop_back(); }
    else v.push_back(i);
  }
  return v;
}
// The same for a Map: mostly insert_or_assign(i % 256, i), every fifth an erase.
void map_operation(Map<std::int64_t, std::int64_t>& m, std::int64_t i) {
  if (i % 5 == 4) m.erase((i / 5) % 256);
  else m.insert_or_assign(i % 256, i);
}
std::map<std::int64_t, std::int64_t> map_after(std::int64_t n) {
  std::map<std::int64_t, std::int64_t> m;
  for (std::int64_t i = 0; i < n; ++i) {
    if (i % 5 == 4) m.erase((i / 5) % 256);
    else m.insert_or_assign(i % 256, i);
  }
  return m;
}

// After a victim died running operations on container `c` (Vector or Map) and publishing
// `started` (operations begun) and `done` (operations finished): either it is intact and
// holds exactly what operations 0 .. done-1 left, or also operation `done` if that was in
// flight; or it is poisoned, and then an operation was in flight. Then it is made empty
// again (reset() if poisoned) for the next round.
template <class C, class After>
void check_container_after_kill(C& c, Atomic<std::int64_t>& started, Atomic<std::int64_t>& done,
                                After after) {
  const std::int64_t s = started.load(), d = done.load();
  CHECK((s == d || s == d + 1));
  if (c.poisoned()) {
    CHECK(s == d + 1);  // poisoned exactly when a write was cut
    CHECK_THROWS_AS(c.snapshot(), OwnerDied);
    CHECK_THROWS_AS(c.clear(), OwnerDied);
    c.reset();
    CHECK_FALSE(c.poisoned());
    CHECK(c.size() == 0);
  } else {
    const auto contents = c.snapshot();
    const bool exact = contents == after(d) || (s == d + 1 && contents == after(d + 1));
    CHECK(exact);
    c.clear();
  }
  started.store(0);
  done.store(0);
}

}  // namespace

TEST_SUITE("storm") {

TEST_CASE("Value and Array writers killed at random: exact totals but for one in-flight update") {
  std::mt19937 random(1);
  SegmentName name("storm-value");
  auto segment = Segment::create(name, 1 << 20);
  auto value = segment.create_value<std::int64_t>("value", 0);
  auto done = segment.create_atomic<std::int64_t>("done", 0);  // updates the victim finished
  auto pair = segment.create_array<std::int64_t>("pair", 2, 0);
  const int n = rounds();
  for (int round = 0; round < n; ++round) {
    kill_at_random(random, [&] {
      for (;;) {
        value += 1;
        done += 1;
        auto g = pair.lock();  // two stores that must stay equal
        g[0] += 1;
        g[1] += 1;
      }
    });
    const std::int64_t gap = value.load() - done.load();
    CHECK((gap == 0 || gap == 1));  // the killed process's own in-flight += only
    done.store(value.load());
    const auto both = pair.snapshot();
    if (pair.poisoned()) {  // cut inside the guard: poisoned exactly then
      CHECK((both[0] == both[1] || both[0] == both[1] + 1));
      CHECK_THROWS_AS(pair.store(1, both[0]), OwnerDied);
      pair.clear_poison();
      pair.store(1, both[0]);
    } else {
      CHECK(both[0] == both[1]);
    }
  }
  CHECK(Segment::open(name).objects().size() == 3);
}

TEST_CASE("allocators killed at random leave a segment that validates and allocates") {
  std::mt19937 random(2);
  const int n = rounds();
  for (int round = 0; round < n; ++round) {
    SegmentName name("storm-alloc");
    auto segment = Segment::create(name, 4 << 20, {.max_objects = 4096});
    kill_at_random(random, [&] {
      for (int i = 0;; ++i) segment.create_array<int>("a" + std::to_string(i), 1 + i % 100, i);
    });
    const auto objects = Segment::open(name).objects();
    for (const auto& o : objects) CHECK(segment.open_array<int>(o.name).size() == o.length);
    CHECK(segment.create_value<int>("after", 1).load() == 1);
  }
}

TEST_CASE("waiters on a Condition killed at random never wedge it") {
  std::mt19937 random(3);
  SegmentName name("storm-cv");
  auto segment = Segment::create(name, 1 << 20);
  auto m = segment.create_mutex("m");
  auto cv = segment.create_condition("cv", m);
  auto ticks = segment.create_value<std::int64_t>("ticks", 0);
  const int n = rounds();
  for (int round = 0; round < n; ++round) {
    kill_at_random(random, [&] {
      for (;;) {
        std::unique_lock held(m);
        cv.wait_for(held, 1ms);
        ticks += 1;
      }
    });
    std::unique_lock held(m, std::defer_lock);
    REQUIRE(held.try_lock_for(5s));
    cv.notify_all();
    held.unlock();
  }
  CHECK(ticks.load() >= 0);
  std::unique_lock held(m);
  CHECK(cv.wait_for(held, 1ms) == std::cv_status::timeout);
}

TEST_CASE("a producer killed at random inside push loses at most its own item, in order") {
  std::mt19937 random(4);
  SegmentName name("storm-queue");
  auto segment = Segment::create(name, 4 << 20);
  auto q = segment.create_queue<std::int64_t>("q", 256);
  const int n = rounds();
  for (int round = 0; round < n; ++round) {
    kill_at_random(random, [q]() mutable {
      for (std::int64_t i = 0;; ++i) q.push(i);
    });
    std::int64_t expected = 0;
    while (auto item = q.try_pop()) CHECK(*item == expected++);  // 0, 1, 2, ... no gap
    q.push(-1);
    CHECK(q.pop() == -1);
  }
}

TEST_CASE("Vector and Map writers killed at random: exact contents but for one in-flight update, or poisoned then") {
  std::mt19937 random(6);
  SegmentName name("storm-containers");
  auto segment = Segment::create(name, 4 << 20);
  auto vector = segment.create_vector<std::int64_t>("vector", 64 << 10);
  auto map = segment.create_map<std::int64_t, std::int64_t>("map", 64 << 10);
  auto vector_started = segment.create_atomic<std::int64_t>("vector_started", 0);
  auto vector_done = segment.create_atomic<std::int64_t>("vector_done", 0);
  auto map_started = segment.create_atomic<std::int64_t>("map_started", 0);
  auto map_done = segment.create_atomic<std::int64_t>("map_done", 0);
  auto bystander = segment.create_value<std::int64_t>("bystander", 0);
  const int n = rounds();
  int poisoned_rounds = 0;
  for (int round = 0; round < n; ++round) {
    kill_at_random(random, [&] {
      for (std::int64_t i = 0;; ++i) {
        vector_started.store(i + 1);
        vector_operation(vector, i);
        vector_done.store(i + 1);
        map_started.store(i + 1);
        map_operation(map, i);
        map_done.store(i + 1);
      }
    });
    CHECK_FALSE((vector.poisoned() && map.poisoned()));  // a death cuts one write at most
    poisoned_rounds += vector.poisoned() || map.poisoned() ? 1 : 0;
    check_container_after_kill(vector, vector_started, vector_done, vector_after);
    check_container_after_kill(map, map_started, map_done, map_after);
    bystander += 1;  // the rest of the segment works on
    const auto objects = Segment::open(name).objects();  // and it validates
    CHECK(objects.size() == 7);
  }
  CHECK(bystander.load() == n);
  vector.push_back(1);
  map.insert_or_assign(1, 1);
  CHECK(vector.snapshot() == std::vector<std::int64_t>{1});
  CHECK(map.get(1) == 1);
  MESSAGE(poisoned_rounds, " of ", n, " kills cut a container write");
}

TEST_CASE("pool workers killed at random: only their running items fail, the rest is exact") {
  std::mt19937 random(5);
  Pool pool({.workers = 2});
  std::vector<std::int64_t> items(20000);
  std::iota(items.begin(), items.end(), 0);
  const int n = std::max(1, rounds() / 10);
  for (int round = 0; round < n; ++round) {
    auto job = pool.map_async(items, [](std::int64_t x) {
      std::this_thread::sleep_for(std::chrono::microseconds(x % 7));
      return x * 2;
    });
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 20000));
    const auto pids = pool.worker_pids();
    if (!pids.empty()) ::kill(pids[random() % pids.size()], SIGKILL);
    REQUIRE(job.wait_for(60s));
    try {
      const auto results = job.get();
      for (std::size_t i = 0; i < results.size(); ++i) CHECK(results[i] == items[i] * 2);
    } catch (const WorkerDied& e) {
      CHECK(e.signal() == SIGKILL);
      const auto p = job.progress();
      CHECK(p.failed == 1);
      CHECK(p.done == items.size() - 1);
    }
  }
  CHECK(pool.map(std::vector<std::int64_t>{21}, [](std::int64_t x) { return x * 2; }).at(0) == 42);
}

}  // TEST_SUITE
