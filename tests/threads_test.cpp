// Threads of one process hammering every kind of object through one segment, and through
// two Segment handles on it: exact totals, and (under `bash run.sh tsan`) no data race.
// Thread-only on purpose: ThreadSanitizer does not follow fork(), so the multi-process
// claims live in the `process` suite; these check that the same objects are also sound
// between threads, where TSan can see every access.
#include "support.hpp"

#include <doctest/doctest.h>

#include <mutex>
#include <thread>
#include <vector>

using namespace procshare;
using procshare::test::SegmentName;
using namespace std::chrono_literals;

namespace {

constexpr int threads = 4;
#if defined(__SANITIZE_THREAD__)
constexpr int rounds = 300;  // TSan slows every access ~10x
#else
constexpr int rounds = 2000;
#endif

// Runs fn(thread_index) on `threads` threads and joins them.
template <class F> void on_threads(F fn) {
  std::vector<std::thread> running;
  for (int t = 0; t < threads; ++t) running.emplace_back(fn, t);
  for (auto& thread : running) thread.join();
}

}  // namespace

TEST_SUITE("threads") {

TEST_CASE("Value, Atomic and Array updated from four threads through two handles add up exactly") {
  SegmentName name("thr-values");
  auto segment = Segment::create(name, 256 * 1024);
  auto second = Segment::open(name);  // a second handle on the same segment
  auto value = segment.create_value<long>("value", 0);
  auto atomic = segment.create_atomic<long>("atomic", 0);
  auto array = segment.create_array<long>("array", 8, 0);
  on_threads([&](int t) {
    auto v = t % 2 ? second.open_value<long>("value") : value;
    auto a = t % 2 ? second.open_atomic<long>("atomic") : atomic;
    auto arr = t % 2 ? second.open_array<long>("array") : array;
    for (int i = 0; i < rounds; ++i) {
      v += 1;
      v.update([](const long& x) { return x + 1; });
      a.fetch_add(1);
      arr.update(static_cast<std::size_t>(i) % 8, [](const long& x) { return x + 1; });
      if (i % 100 == 0) {
        auto guard = arr.lock();
        for (long& x : guard) x += 1;
      }
    }
  });
  CHECK(value.load() == 2L * threads * rounds);
  CHECK(atomic.load() == long{threads} * rounds);
  long sum = 0;
  for (long x : array.snapshot()) sum += x;
  CHECK(sum == long{threads} * rounds + long{threads} * ((rounds + 99) / 100) * 8);
  CHECK_FALSE(value.poisoned());
  CHECK_FALSE(array.poisoned());
}

TEST_CASE("Mutex and RecursiveMutex guard plain memory between threads") {
  SegmentName name("thr-mutex");
  auto segment = Segment::create(name, 64 * 1024);
  auto mutex = segment.create_mutex("m");
  auto recursive = segment.create_recursive_mutex("r");
  long guarded_by_mutex = 0, guarded_by_recursive = 0;
  on_threads([&](int) {
    for (int i = 0; i < rounds; ++i) {
      {
        std::scoped_lock held(mutex);
        ++guarded_by_mutex;
      }
      std::scoped_lock outer(recursive);
      std::scoped_lock inner(recursive);
      ++guarded_by_recursive;
    }
  });
  CHECK(guarded_by_mutex == long{threads} * rounds);
  CHECK(guarded_by_recursive == long{threads} * rounds);
  CHECK(mutex.owner_deaths() == 0);
}

TEST_CASE("Semaphore, Event and Condition hand work between threads without loss") {
  SegmentName name("thr-sync");
  auto segment = Segment::create(name, 64 * 1024);
  auto semaphore = segment.create_semaphore("tokens", 0);
  auto start = segment.create_event("start");
  auto mutex = segment.create_mutex("m");
  auto condition = segment.create_condition("cv", mutex);
  long produced = 0, consumed = 0;  // guarded by mutex
  on_threads([&](int t) {
    if (t == threads - 1) start.set();  // the others sleep on the event until then
    start.wait();
    if (t % 2 == 0) {  // producers
      for (int i = 0; i < rounds; ++i) {
        {
          std::unique_lock held(mutex);
          ++produced;
        }
        condition.notify_all();
        semaphore.release();
      }
    } else {  // consumers
      for (int i = 0; i < rounds; ++i) {
        semaphore.acquire();
        std::unique_lock held(mutex);
        condition.wait(held, [&] { return produced > consumed; });
        ++consumed;
      }
    }
  });
  CHECK(produced == long{threads / 2} * rounds);
  CHECK(consumed == produced);
  CHECK(semaphore.value() == 0);
  CHECK(start.is_set());
}

TEST_CASE("a Barrier gives each of four threads a distinct index every round") {
  SegmentName name("thr-barrier");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", threads);
  auto index_sum = segment.create_atomic<long>("sum", 0);
  const int barrier_rounds = rounds / 10;
  on_threads([&](int) {
    for (int i = 0; i < barrier_rounds; ++i) index_sum.fetch_add(barrier.arrive_and_wait());
  });
  CHECK(index_sum.load() == long{barrier_rounds} * (0 + 1 + 2 + 3));
  CHECK_FALSE(barrier.broken());
}

TEST_CASE("a Queue carries every item from two producer threads to two consumer threads once") {
  SegmentName name("thr-queue");
  auto segment = Segment::create(name, 64 * 1024);
  auto second = Segment::open(name);
  auto queue = segment.create_queue<long>("q", 8);
  auto received = segment.create_atomic<long>("received", 0);
  auto count = segment.create_atomic<long>("count", 0);
  on_threads([&](int t) {
    auto q = t % 2 ? second.open_queue<long>("q") : queue;
    if (t < 2) {
      for (int i = 1; i <= rounds; ++i) q.push(i);
    } else {
      for (int i = 0; i < rounds; ++i) {
        received.fetch_add(q.pop());
        count.fetch_add(1);
      }
    }
  });
  CHECK(count.load() == 2L * rounds);
  CHECK(received.load() == 2L * rounds * (rounds + 1) / 2);
}

TEST_CASE("Vector and Map grown from four threads hold every element once") {
  SegmentName name("thr-containers");
  auto segment = Segment::create(name, 4 * 1024 * 1024);
  auto second = Segment::open(name);
  auto vector = segment.create_vector<long>("v", 1024 * 1024);
  auto map = segment.create_map<long, long>("m", 2 * 1024 * 1024);
  const int items = rounds / 4;
  on_threads([&](int t) {
    auto v = t % 2 ? second.open_vector<long>("v") : vector;
    auto m = t % 2 ? second.open_map<long, long>("m") : map;
    for (int i = 0; i < items; ++i) {
      v.push_back(t * items + i);
      m.insert_or_assign(t * items + i, i);
      m.insert_or_assign(-1, 0);  // one key every thread writes
    }
  });
  CHECK(vector.size() == std::size_t{threads} * items);
  long sum = 0;
  for (long x : vector.snapshot()) sum += x;
  const long n = long{threads} * items;
  CHECK(sum == n * (n - 1) / 2);
  CHECK(map.size() == std::size_t(n + 1));
  CHECK(map.get(2 * items + 5) == 5);
}

}  // TEST_SUITE
