// Semaphore, BoundedSemaphore, Event, Condition, Barrier and procshare::lock: semantics
// mirrored from CPython's multiprocessing tests, between real processes where it matters.
#include "support.hpp"

#include <doctest/doctest.h>

#include <optional>
#include <set>
#include <stdexcept>
#include <thread>

using namespace procshare;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using procshare::test::wait_until_sleeping;
using namespace std::chrono_literals;

namespace {

// Checks that a timed call that failed took at least `timeout` and well under a second more.
template <class F> void check_times_out(F call, std::chrono::milliseconds timeout) {
  const auto start = std::chrono::steady_clock::now();
  const bool result = call();
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK_FALSE(result);
  CHECK(took >= timeout);
  CHECK(took < timeout + 900ms);
}

}  // namespace

TEST_SUITE("semaphore") {

TEST_CASE("a Semaphore counts acquires and releases as Python's does") {
  SegmentName name("sem");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 2);
  CHECK(sem.value() == 2);
  sem.acquire();
  CHECK(sem.try_acquire());
  CHECK(sem.value() == 0);
  CHECK_FALSE(sem.try_acquire());
  sem.release();
  CHECK(sem.value() == 1);
  sem.release(2);
  CHECK(sem.value() == 3);
  CHECK(segment.open_semaphore("s").value() == 3);
}

TEST_CASE("try_acquire_for on an empty Semaphore returns false no earlier than the deadline") {
  SegmentName name("semtime");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 0);
  check_times_out([&] { return sem.try_acquire_for(50ms); }, 50ms);
  check_times_out([&] { return sem.try_acquire_until(std::chrono::system_clock::now() + 30ms); }, 30ms);
  CHECK_FALSE(sem.try_acquire_for(-5ms));
}

TEST_CASE("a BoundedSemaphore refuses a release above its initial value and keeps its count") {
  SegmentName name("bounded");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_bounded_semaphore("b", 2);
  CHECK_THROWS_WITH_AS(sem.release(),
                       ("segment '" + name.str() +
                        "': bounded_semaphore 'b': release of 1 would raise the count from 2 "
                        "above its initial value 2").c_str(),
                       InvalidArgument);
  CHECK(sem.value() == 2);
  sem.acquire();
  sem.release();
  CHECK_THROWS_AS(sem.release(), InvalidArgument);
  CHECK(sem.bound() == 2);
  auto zero = segment.create_bounded_semaphore("z", 0);
  CHECK_THROWS_AS(zero.release(), InvalidArgument);
  CHECK(zero.value() == 0);
}

TEST_CASE("bad semaphore counts are InvalidArgument") {
  SegmentName name("semargs");
  auto segment = Segment::create(name, 64 * 1024);
  CHECK_THROWS_WITH_AS(segment.create_semaphore("s", static_cast<std::uint32_t>(-1)),
                       doctest::Contains("initial count 4294967295 is out of range (0 to 2147483647)"),
                       InvalidArgument);
  auto sem = segment.create_semaphore("ok", 1);
  CHECK_THROWS_AS(sem.release(0), InvalidArgument);
  CHECK_THROWS_AS(sem.release(0x7fffffff), InvalidArgument);
  CHECK(sem.value() == 1);
  CHECK_THROWS_AS(segment.open_bounded_semaphore("ok"), TypeMismatch);
}

TEST_CASE("a Semaphore of 2 lets at most 2 of 6 processes in at once, and every one through") {
  SegmentName name("semlimit");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 2);
  auto inside = segment.create_atomic<int>("inside", 0);
  auto most = segment.create_atomic<int>("most", 0);
  auto passes = segment.create_atomic<int>("passes", 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < 6; ++p)
    pids.push_back(run_child([&] {
      for (int i = 0; i < 2000; ++i) {
        sem.acquire();
        const int now = inside.fetch_add(1) + 1;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        inside.fetch_sub(1);
        passes.fetch_add(1);
        sem.release();
      }
    }));
  for (const pid_t pid : pids) CHECK(wait_child(pid).ok());
  CHECK(passes.load() == 12000);
  CHECK(most.load() <= 2);
  CHECK(sem.value() == 2);
}

TEST_CASE("release wakes processes sleeping in acquire") {
  SegmentName name("semwake");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < 3; ++p) pids.push_back(run_child([&] { sem.acquire(); }));
  for (const pid_t pid : pids) REQUIRE(wait_until_sleeping(pid));
  sem.release(3);
  for (const pid_t pid : pids) CHECK(wait_child(pid, 10s).ok());
  CHECK(sem.value() == 0);
}

TEST_CASE("6 processes each taking a Semaphore(1) guard 5,000 times keep an unlocked counter exact") {
  SegmentName name("semguard");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 1);
  // Read, then write back: without mutual exclusion, increments are lost.
  auto counter = segment.create_atomic<long>("counter", 0);
  constexpr int processes = 6;
  constexpr int iterations = 5000;
  std::vector<pid_t> pids;
  for (int p = 0; p < processes; ++p)
    pids.push_back(run_child([&] {
      for (int i = 0; i < iterations; ++i) {
        auto held = sem.guard();
        const long seen = counter.load(std::memory_order_relaxed);
        if (i % 64 == 0) std::this_thread::yield();  // widen the window a race would need
        counter.store(seen + 1, std::memory_order_relaxed);
      }
    }));
  for (const pid_t pid : pids) CHECK(wait_child(pid).ok());
  CHECK(counter.load() == long{processes} * iterations);
  CHECK(sem.value() == 1);
}

TEST_CASE("a Semaphore guard gives its unit back when an exception unwinds through it") {
  SegmentName name("semunwind");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 1);
  CHECK_THROWS_WITH_AS(
      [&] {
        auto held = sem.guard();
        CHECK(held.held());
        CHECK(sem.value() == 0);
        throw std::runtime_error("task failed");
      }(),
      "task failed", std::runtime_error);
  CHECK(sem.value() == 1);
  // Another process can take it now.
  const pid_t child = run_child([&] {
    if (!sem.try_acquire_for(5s)) ::_exit(2);
    sem.release();
  });
  CHECK(wait_child(child).ok());
  CHECK(sem.value() == 1);
}

TEST_CASE("guard_for on an empty Semaphore throws Timeout and takes nothing") {
  SegmentName name("semguardtime");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_semaphore("s", 0);
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS((void)sem.guard_for(40ms),
                       ("segment '" + name.str() +
                        "': semaphore 's': guard_for: no unit became free before the deadline").c_str(),
                       Timeout);
  CHECK(std::chrono::steady_clock::now() - start >= 40ms);
  CHECK_THROWS_AS((void)sem.guard_until(std::chrono::system_clock::now() + 10ms), Timeout);
  CHECK(sem.value() == 0);
  sem.release();
  {
    auto held = sem.guard_for(1s);
    CHECK(sem.value() == 0);
  }
  CHECK(sem.value() == 1);
}

TEST_CASE("a BoundedSemaphore guard never releases twice: moved, released early, or copied by fork") {
  SegmentName name("boundedguard");
  auto segment = Segment::create(name, 64 * 1024);
  auto sem = segment.create_bounded_semaphore("b", 2);
  {
    auto first = sem.guard();
    auto moved = std::move(first);
    CHECK_FALSE(first.held());
    CHECK(moved.held());
    CHECK(sem.value() == 1);
    auto second = sem.guard();
    CHECK(sem.value() == 0);
    second.release();
    CHECK_FALSE(second.held());
    CHECK(sem.value() == 1);
    second.release();  // a second call gives nothing back
    CHECK(sem.value() == 1);
  }  // `first` (moved from) and `second` (released) give nothing back; `moved` gives one
  CHECK(sem.value() == 2);

  // A guard the parent holds, destroyed in a forked child: the child gives nothing back.
  std::optional<Semaphore::Guard> held;
  held.emplace(sem.guard());
  CHECK(sem.value() == 1);
  const pid_t child = run_child([&] {
    if (held->held()) ::_exit(2);
    held.reset();
  });
  CHECK(wait_child(child).ok());
  CHECK(sem.value() == 1);
  CHECK(held->held());
  held.reset();
  CHECK(sem.value() == 2);
}

}  // TEST_SUITE

TEST_SUITE("event") {

TEST_CASE("Event wait_for returns false after the timeout and true once set") {
  SegmentName name("event");
  auto segment = Segment::create(name, 64 * 1024);
  auto event = segment.create_event("e");
  CHECK_FALSE(event.is_set());
  check_times_out([&] { return event.wait_for(50ms); }, 50ms);
  event.set();
  CHECK(event.is_set());
  CHECK(event.wait_for(0ms));
  event.wait();
  event.clear();
  CHECK_FALSE(event.is_set());
  CHECK(segment.create_event("up", true).is_set());
}

TEST_CASE("set wakes every process waiting on an Event") {
  SegmentName name("eventall");
  auto segment = Segment::create(name, 64 * 1024);
  auto event = segment.create_event("e");
  auto woken = segment.create_atomic<int>("woken", 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < 4; ++p)
    pids.push_back(run_child([&] {
      if (event.wait_for(30s)) woken += 1;
    }));
  for (const pid_t pid : pids) REQUIRE(wait_until_sleeping(pid));
  event.set();
  for (const pid_t pid : pids) CHECK(wait_child(pid, 10s).ok());
  CHECK(woken.load() == 4);
}

TEST_CASE("a waiter returns true when the Event was set and cleared again while it slept") {
  SegmentName name("eventpulse");
  auto segment = Segment::create(name, 64 * 1024);
  auto event = segment.create_event("e");
  const pid_t pid = run_child([&] {
    if (!event.wait_for(30s)) ::_exit(7);
  });
  REQUIRE(wait_until_sleeping(pid));
  event.set();
  event.clear();
  CHECK(wait_child(pid, 10s).ok());
}

}  // TEST_SUITE

TEST_SUITE("condition") {

TEST_CASE("notify_one wakes one sleeping waiter and notify_all the rest") {
  SegmentName name("notify");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto cv = segment.create_condition("cv", m);
  auto woken = segment.create_atomic<int>("woken", 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < 3; ++p)
    pids.push_back(run_child([&] {
      std::unique_lock held(m);
      cv.wait(held);
      woken += 1;
    }));
  for (const pid_t pid : pids) REQUIRE(wait_until_sleeping(pid));
  cv.notify_one();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (woken.load() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  CHECK(woken.load() == 1);
  int still_asleep = 0;
  for (const pid_t pid : pids) still_asleep += ::kill(pid, 0) == 0 && wait_until_sleeping(pid, 200ms);
  CHECK(still_asleep == 2);
  CHECK(woken.load() == 1);
  cv.notify_all();
  for (const pid_t pid : pids) CHECK(wait_child(pid, 10s).ok());
  CHECK(woken.load() == 3);
}

TEST_CASE("wait with a predicate sees every item a producer process adds") {
  SegmentName name("cvpc");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto cv = segment.open_condition(segment.create_condition("cv", m).name());
  auto items = segment.create_array<int>("items", 2, 0);  // [available, consumed]
  constexpr int total = 20000;
  const pid_t consumer = run_child([&] {
    std::unique_lock held(m);
    for (int got = 0; got < total; ++got) {
      cv.wait(held, [&] { return items.load(0) > 0; });
      items.update(0, [](int x) { return x - 1; });
      items.update(1, [](int x) { return x + 1; });
    }
  });
  for (int i = 0; i < total; ++i) {
    std::unique_lock held(m);
    items.update(0, [](int x) { return x + 1; });
    cv.notify_one();
  }
  CHECK(wait_child(consumer, 60s).ok());
  CHECK(items.snapshot() == std::vector<int>{0, total});
}

TEST_CASE("Condition wait_for times out no earlier than the deadline, holding the lock again") {
  SegmentName name("cvtime");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto cv = segment.create_condition("cv", m);
  std::unique_lock held(m);
  check_times_out([&] { return cv.wait_for(held, 50ms) == std::cv_status::no_timeout; }, 50ms);
  CHECK(held.owns_lock());
  check_times_out([&] { return cv.wait_for(held, 30ms, [] { return false; }); }, 30ms);
  CHECK(cv.mutex().name() == "m");
}

TEST_CASE("Condition wait with another mutex or without holding it is refused") {
  SegmentName name("cvbad");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto other = segment.create_mutex("other");
  auto cv = segment.create_condition("cv", m);
  std::unique_lock wrong(other);
  CHECK_THROWS_WITH_AS(cv.wait_for(wrong, 1ms),
                       ("segment '" + name.str() +
                        "': condition 'cv': wait with a lock of another mutex than its own ('m')").c_str(),
                       InvalidArgument);
  std::unique_lock unheld(m, std::defer_lock);
  CHECK_THROWS_AS(cv.wait(unheld), NotOwner);
  SegmentName elsewhere("cvother");
  auto second = Segment::create(elsewhere, 64 * 1024);
  CHECK_THROWS_AS(second.create_condition("cv", m), InvalidArgument);
}

}  // TEST_SUITE

TEST_SUITE("barrier") {

TEST_CASE("a Barrier gives each of its parties a different index") {
  SegmentName name("barrier");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 4);
  auto seen = segment.create_array<int>("seen", 4, 0);
  std::vector<pid_t> pids;
  for (int p = 0; p < 3; ++p)
    pids.push_back(run_child([&] { seen.update(barrier.arrive_and_wait(), [](int x) { return x + 1; }); }));
  seen.update(barrier.arrive_and_wait(), [](int x) { return x + 1; });
  for (const pid_t pid : pids) CHECK(wait_child(pid).ok());
  CHECK(seen.snapshot() == std::vector<int>{1, 1, 1, 1});
  CHECK(barrier.parties() == 4);
  CHECK(barrier.waiting() == 0);
}

TEST_CASE("three processes pass a Barrier 1,000 times, in step") {
  SegmentName name("passes");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 3);
  auto counter = segment.create_atomic<int>("counter", 0);
  auto errors = segment.create_atomic<int>("errors", 0);
  constexpr int passes = 1000;
  std::vector<pid_t> pids;
  for (int p = 0; p < 3; ++p)
    pids.push_back(run_child([&] {
      for (int i = 0; i < passes; ++i) {
        counter += 1;
        barrier.arrive_and_wait();
        if (counter.load() != 3 * (i + 1)) errors += 1;  // nobody is a round ahead
        barrier.arrive_and_wait();
      }
    }));
  for (const pid_t pid : pids) CHECK(wait_child(pid, 120s).ok());
  CHECK(counter.load() == 3 * passes);
  CHECK(errors.load() == 0);
}

TEST_CASE("a timed-out wait breaks the Barrier for everyone until reset") {
  SegmentName name("brokentime");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 3);
  const pid_t other = run_child([&] {
    try {
      barrier.arrive_and_wait();
    } catch (const BrokenBarrier&) {
      ::_exit(0);
    }
    ::_exit(9);
  });
  REQUIRE(wait_until_sleeping(other));
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(barrier.wait_for(50ms),
                       doctest::Contains(fmt::format("broken: a wait in process {} timed out; reset() "
                                                     "makes it usable again", ::getpid()).c_str()),
                       BrokenBarrier);
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
  CHECK(wait_child(other, 10s).ok());
  CHECK(barrier.broken());
  CHECK_THROWS_AS(barrier.arrive_and_wait(), BrokenBarrier);
  barrier.reset();
  CHECK_FALSE(barrier.broken());
  std::thread t1([barrier]() mutable { barrier.arrive_and_wait(); });
  std::thread t2([barrier]() mutable { barrier.arrive_and_wait(); });
  barrier.arrive_and_wait();
  t1.join();
  t2.join();
}

TEST_CASE("abort and reset break the current round's waiters") {
  SegmentName name("abort");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 2);
  for (const bool use_reset : {false, true}) {
    CAPTURE(use_reset);
    const pid_t waiter = run_child([&] {
      try {
        barrier.arrive_and_wait();
      } catch (const BrokenBarrier&) {
        ::_exit(0);
      }
      ::_exit(9);
    });
    REQUIRE(wait_until_sleeping(waiter));
    if (use_reset) {
      barrier.reset();
      CHECK_FALSE(barrier.broken());
    } else {
      barrier.abort();
      CHECK(barrier.broken());
      CHECK_THROWS_AS(barrier.arrive_and_wait(), BrokenBarrier);
      barrier.reset();
    }
    CHECK(wait_child(waiter, 10s).ok());
    CHECK(barrier.waiting() == 0);
  }
}

TEST_CASE("a Barrier of 0 parties is InvalidArgument") {
  SegmentName name("parties");
  auto segment = Segment::create(name, 64 * 1024);
  CHECK_THROWS_WITH_AS(segment.create_barrier("b", 0),
                       ("segment '" + name.str() +
                        "': barrier 'b': 0 parties is out of range (1 to 65536)").c_str(),
                       InvalidArgument);
  CHECK_THROWS_AS(segment.create_barrier("b", 1u << 20), InvalidArgument);
  CHECK(segment.objects().empty());
  CHECK(segment.create_barrier("one", 1).arrive_and_wait() == 0);
}

}  // TEST_SUITE

TEST_SUITE("multi-lock") {

TEST_CASE("procshare::lock takes two mutexes in any order from two processes without deadlock") {
  SegmentName name("multilock");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_mutex("a");
  auto b = segment.create_recursive_mutex("b");
  auto total = segment.create_array<long>("total", 1, 0);
  constexpr int rounds = 20000;
  const pid_t forward = run_child([&] {
    for (int i = 0; i < rounds; ++i) {
      procshare::lock(a, b);
      total.update(0, [](long x) { return x + 1; });
      b.unlock();
      a.unlock();
    }
  });
  for (int i = 0; i < rounds; ++i) {
    procshare::lock(b, a);
    total.update(0, [](long x) { return x + 1; });
    a.unlock();
    b.unlock();
  }
  CHECK(wait_child(forward, 60s).ok());
  CHECK(total.load(0) == 2 * rounds);
}

TEST_CASE("procshare::lock releases what it took when one lock throws") {
  SegmentName name("multithrow");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_mutex("a");
  CHECK_THROWS_AS(procshare::lock(a, a), InvalidArgument);
  CHECK(a.try_lock());  // released again
  a.unlock();
}

}  // TEST_SUITE

namespace {

[[noreturn]] void sleep_until_killed() {
  for (;;) ::pause();
}

void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  CHECK(wait_child(pid).signal == SIGKILL);
}

}  // namespace

TEST_SUITE("sync faults") {

TEST_CASE("a waiter killed while it sleeps on a Condition leaves notify and the other waiters working") {
  SegmentName name("cvkill");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto cv = segment.create_condition("cv", m);
  auto ready = segment.create_flag("ready");
  auto woken = segment.create_atomic<int>("woken", 0);
  auto waiter = [&] {
    std::unique_lock held(m);
    cv.wait(held, [&] { return ready.is_set(); });
    woken += 1;
  };
  const pid_t victim = run_child(waiter);
  const pid_t survivor = run_child(waiter);
  REQUIRE(wait_until_sleeping(victim));
  REQUIRE(wait_until_sleeping(survivor));
  kill_and_reap(victim);
  {
    std::unique_lock held(m);
    ready.set();
    cv.notify_all();
  }
  CHECK(wait_child(survivor, 10s).ok());
  CHECK(woken.load() == 1);
  CHECK(m.owner_deaths() == 0);
}

TEST_CASE("the holder of a Condition's mutex killed: the waiter relocks and the death is counted") {
  SegmentName name("cvholder");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto cv = segment.create_condition("cv", m);
  PipeSignal holding;
  const pid_t waiter = run_child([&] {
    std::unique_lock held(m);
    if (cv.wait_for(held, 30s) == std::cv_status::timeout) ::_exit(5);
  });
  REQUIRE(wait_until_sleeping(waiter));
  const pid_t holder = run_child([&] {
    m.lock();
    cv.notify_all();  // the waiter wakes, then blocks relocking the held mutex
    holding.notify();
    sleep_until_killed();
  });
  REQUIRE(holding.wait());
  kill_and_reap(holder);
  CHECK(wait_child(waiter, 10s).ok());
  CHECK(m.owner_deaths() == 1);
}

TEST_CASE("a waiter killed while it sleeps on an Event leaves set working for the others") {
  SegmentName name("eventkill");
  auto segment = Segment::create(name, 64 * 1024);
  auto event = segment.create_event("e");
  const pid_t victim = run_child([&] { event.wait(); });
  const pid_t survivor = run_child([&] {
    if (!event.wait_for(30s)) ::_exit(5);
  });
  REQUIRE(wait_until_sleeping(victim));
  REQUIRE(wait_until_sleeping(survivor));
  kill_and_reap(victim);
  event.set();
  CHECK(wait_child(survivor, 10s).ok());
  event.clear();
  CHECK_FALSE(event.wait_for(10ms));
}

TEST_CASE("a Barrier party killed while the others wait breaks it, and every survivor's message names it") {
  SegmentName name("barrierkill");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 4);
  auto messages = segment.create_queue<std::string>("messages", 4, 512);
  PipeSignal registered;
  const pid_t victim = run_child([&] {
    barrier.register_party();
    registered.notify();
    sleep_until_killed();  // a member that never arrives
  });
  REQUIRE(registered.wait());  // killed before it registered, it would not be watched
  std::vector<pid_t> waiters;
  for (int i = 0; i < 2; ++i)
    waiters.push_back(run_child([&] {
      try {
        barrier.arrive_and_wait();
      } catch (const BrokenBarrier& e) {
        messages.push(e.what());
        ::_exit(0);
      }
      ::_exit(9);
    }));
  for (const pid_t waiter : waiters) REQUIRE(wait_until_sleeping(waiter));
  while (barrier.waiting() < 2) std::this_thread::yield();
  kill_and_reap(victim);
  for (const pid_t waiter : waiters) CHECK(wait_child(waiter, 10s).ok());
  const std::string expected =
      fmt::format("segment '{}': barrier 'b': broken: process {}, a party it watched, died; "
                  "reset() makes it usable again", name.str(), victim);
  CHECK(messages.pop_for(1s) == std::optional<std::string>(expected));
  CHECK(messages.pop_for(1s) == std::optional<std::string>(expected));
  CHECK(barrier.broken());
  // A later arrival hears the same.
  CHECK_THROWS_WITH_AS(barrier.arrive_and_wait(), expected.c_str(), BrokenBarrier);
  barrier.reset();
  CHECK_FALSE(barrier.broken());
}

TEST_CASE("a Barrier waiter killed mid-round breaks it for the party still waiting") {
  SegmentName name("barrierwaiter");
  auto segment = Segment::create(name, 64 * 1024);
  auto barrier = segment.create_barrier("b", 3);
  const pid_t victim = run_child([&] { barrier.arrive_and_wait(); });
  REQUIRE(wait_until_sleeping(victim));
  kill_and_reap(victim);
  CHECK_THROWS_AS(barrier.wait_for(10s), BrokenBarrier);
}

}  // TEST_SUITE

TEST_SUITE("mutex between processes") {

TEST_CASE("unlock of a Mutex another process holds is NotOwner naming that process") {
  SegmentName name("notowner-held");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  PipeSignal holding, done;
  const pid_t holder = run_child([&] {
    m.lock();
    holding.notify();
    done.wait();
    m.unlock();
  });
  REQUIRE(holding.wait());
  CHECK_THROWS_WITH_AS(m.unlock(),
                       fmt::format("segment '{}': mutex 'm': unlock: the calling thread does not hold "
                                   "the lock (process {} holds it)", name.str(), holder).c_str(),
                       NotOwner);
  done.notify();
  CHECK(wait_child(holder, 10s).ok());
}

}  // TEST_SUITE
