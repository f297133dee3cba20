// Owner death for real: children SIGKILLed while holding a lock, inside a guard, and in
// the middle of an allocation. Nobody hangs; deaths are reported; poison appears exactly
// where a write was cut; the segment stays usable.
#include "futex_watchdog.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <fmt/format.h>

#include <csignal>
#include <cstdlib>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>

using namespace procshare;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using namespace std::chrono_literals;

namespace {

// A thread of the test process that SIGKILLs a random worker of a pool every 0-2 ms while
// a round runs (`kill_for`), then only watches. Throughout, it samples every worker and
// this process's main thread with the lost wake-up Watchdog (futex_watchdog.hpp). If one
// sleeps on a moved word for over a second, or the round has not ended `watchdog` after
// it started, it kills the supervisor, so that the round's wait ends (the pool fails
// with PoolClosed) instead of hanging the test; hung() then says so, and failure() why.
// Workers still starting are spared: three deaths at start-up in a row break a pool on
// purpose.
class KillStorm {
public:
  KillStorm(const Pool& pool, std::uint32_t seed, std::chrono::milliseconds kill_for,
            std::chrono::milliseconds watchdog)
      : control_(Segment::open(pool.control_segment())), supervisor_(pool.supervisor_pid()),
        thread_([this, seed, kill_for, watchdog] { run(seed, kill_for, watchdog); }) {}
  ~KillStorm() { stop(); }
  KillStorm(const KillStorm&) = delete;
  KillStorm& operator=(const KillStorm&) = delete;
  // Ends the storm (the round is over); returns once the thread has.
  void stop() {
    over_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int kills() const { return kills_.load(); }  // the SIGKILLs it sent so far
  bool hung() const { return hung_.load(); }   // whether the watchdog fired
  // Why it fired (after stop()).
  const std::string& failure() const { return failure_; }

private:
  void run(std::uint32_t seed, std::chrono::milliseconds kill_for, std::chrono::milliseconds watchdog) {
    std::mt19937 random(seed);
    procshare::test::Watchdog sleepers;
    const auto start = std::chrono::steady_clock::now();
    while (!over_.load()) {
      const auto now = std::chrono::steady_clock::now();
      std::vector<int> workers;
      for (const auto& w : inspect_pool(control_).workers)
        if (w.pid > 0) workers.push_back(w.pid);
      std::optional<std::string> stall;
      for (const int pid : workers)
        if (!stall) stall = sleepers.check(pid);
      if (!stall) stall = sleepers.check(::getpid());  // (the main thread, in its wait)
      if (!stall && now - start >= watchdog)
        stall = fmt::format("the round still runs {} ms after its start", watchdog.count());
      if (stall) {
        failure_ = *stall;
        hung_.store(true);
        ::kill(supervisor_, SIGKILL);
        return;
      }
      if (now - start < kill_for) {
        std::vector<int> victims;
        for (const auto& w : inspect_pool(control_).workers)
          if (w.pid > 0 && (w.state == "idle" || w.state == "busy")) victims.push_back(w.pid);
        if (!victims.empty() && ::kill(victims[random() % victims.size()], SIGKILL) == 0) ++kills_;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(random() % 2000));
    }
  }

  Segment control_;
  int supervisor_;
  std::atomic<bool> over_{false}, hung_{false};
  std::atomic<int> kills_{0};
  std::string failure_;  // (written by the thread before hung_, read after stop())
  std::thread thread_;   // last: it starts once the rest is ready
};

// Blocks the calling child until it is killed.
[[noreturn]] void wait_to_be_killed() {
  for (;;) ::pause();
}

// Kills `pid` with SIGKILL and checks that is how it ended.
void kill_child(pid_t pid) {
  ::kill(pid, SIGKILL);
  const auto status = wait_child(pid);
  CHECK(status.signal == SIGKILL);
}

}  // namespace

TEST_SUITE("fault") {

TEST_CASE("a child killed while holding a Value's lock does not hang the next locker") {
  SegmentName name("holder");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<std::int64_t>("v", 100);
  PipeSignal holding;
  const pid_t pid = run_child([&] {
    v.update([&](std::int64_t x) -> std::int64_t {  // f runs under the lock, on a copy
      holding.notify();
      wait_to_be_killed();
      return x;
    });
  });
  REQUIRE(holding.wait());
  kill_child(pid);
  CHECK((v += 1) == 101);  // returns: no hang, no poison (the write was never started)
  CHECK(v.owner_deaths() == 1);
  CHECK(v.last_dead_owner() == pid);
  CHECK_FALSE(v.poisoned());
  CHECK(segment.objects().at(0).owner_deaths == 1);
}

TEST_CASE("a child killed inside a guard poisons the value: reads work, writes throw until clear_poison") {
  SegmentName name("poison");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<std::int64_t>("v", 7);
  auto other = segment.create_value<std::int64_t>("other", 1);
  PipeSignal holding;
  const pid_t pid = run_child([&] {
    auto guard = v.lock();
    *guard = 8;  // half-way through some multi-step change
    holding.notify();
    wait_to_be_killed();
  });
  REQUIRE(holding.wait());
  kill_child(pid);
  CHECK(v.load() == 8);
  CHECK(v.poisoned());
  CHECK_THROWS_WITH_AS(v += 1,
                       fmt::format("segment '{}': value 'v': poisoned: process {} died while writing "
                                   "it (owner deaths so far: 1); reads still work; writes throw "
                                   "OwnerDied until clear_poison()", name.str(), pid).c_str(),
                       OwnerDied);
  try {
    v += 1;
  } catch (const OwnerDied& e) {  // the exception carries what its message says
    CHECK(e.dead_pid() == pid);
    CHECK(e.owner_deaths() == 1);
  }
  CHECK_THROWS_AS(v.store(1), OwnerDied);
  CHECK_THROWS_AS(v.lock(), OwnerDied);
  CHECK(v.load() == 8);  // nothing changed by the refused writes
  CHECK(segment.objects().at(0).poisoned);
  other += 1;  // the rest of the segment is untouched
  CHECK(other.load() == 2);
  v.clear_poison();
  CHECK((v += 1) == 9);
  CHECK_FALSE(v.poisoned());
}

TEST_CASE("a child killed holding an Array guard poisons only that array") {
  SegmentName name("arraypoison");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_array<int>("a", 4, 0);
  PipeSignal holding;
  const pid_t pid = run_child([&] {
    auto guard = a.lock();
    guard[0] = 1;
    holding.notify();
    wait_to_be_killed();
  });
  REQUIRE(holding.wait());
  kill_child(pid);
  CHECK(a.snapshot() == std::vector<int>{1, 0, 0, 0});
  CHECK_THROWS_AS(a.store(1, 5), OwnerDied);
  CHECK_THROWS_AS(a.fill(5), OwnerDied);
  CHECK(a.load(1) == 0);
  a.clear_poison();
  a.store(1, 5);
  CHECK(a.load(1) == 5);
}

TEST_CASE("a child killed holding a Mutex: try_lock_for times out meanwhile, then lock() returns") {
  SegmentName name("mutexdeath");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  PipeSignal holding;
  const pid_t pid = run_child([&] {
    m.lock();
    holding.notify();
    wait_to_be_killed();
  });
  REQUIRE(holding.wait());
  CHECK_FALSE(m.try_lock_for(20ms));
  kill_child(pid);
  m.lock();
  CHECK(m.owner_deaths() == 1);
  CHECK(m.last_dead_owner() == pid);
  m.unlock();
  CHECK(m.try_lock());
  m.unlock();
}

TEST_CASE("a child killed at any step of an allocation leaves the segment usable") {
  for (const char* step : {"reserved", "bumped", "constructed"}) {
    CAPTURE(step);
    SegmentName name("alloc");
    auto segment = Segment::create(name, 64 * 1024);
    auto kept = segment.create_value<int>("kept", 42);
    static const char* kill_at;
    kill_at = step;
    const pid_t pid = run_child([&] {
      detail::set_fault_hook([](const char* at) {
        if (std::string_view(at) == kill_at) ::kill(::getpid(), SIGKILL);
      });
      segment.create_array<int>("half", 16, 1);
    });
    const auto status = wait_child(pid);
    CHECK(status.signal == SIGKILL);
    // The half-made entry is discarded by the next directory locker.
    CHECK(segment.objects().size() == 1);
    CHECK_THROWS_AS(segment.open_array<int>("half"), NotFound);
    auto half = segment.create_array<int>("half", 16, 2);
    CHECK(half.snapshot() == std::vector<int>(16, 2));
    CHECK(kept.load() == 42);
    CHECK(Segment::open(name).objects().size() == 2);
  }
}

TEST_CASE("a child killed while holding the directory lock does not hang object creation") {
  SegmentName name("dirlock");
  auto segment = Segment::create(name, 64 * 1024);
  PipeSignal holding;
  static PipeSignal* signal;
  signal = &holding;
  const pid_t pid = run_child([&] {
    detail::set_fault_hook([](const char* at) {
      if (std::string_view(at) == "bumped") {
        signal->notify();
        wait_to_be_killed();
      }
    });
    segment.create_value<int>("x", 1);
  });
  REQUIRE(holding.wait());
  kill_child(pid);
  auto x = segment.value<int>("x", 5);
  CHECK(x.load() == 5);
}

}  // TEST_SUITE

TEST_SUITE("fault") {

TEST_CASE("a creator killed before its segment is ready leaves nothing behind") {
  SegmentName name("unready");
  static const char* segment_name;
  segment_name = name.str().c_str();
  const pid_t pid = run_child([] {
    detail::set_fault_hook([](const char* at) {
      if (std::string_view(at) == "header") ::kill(::getpid(), SIGKILL);
    });
    Segment::create(segment_name, 64 * 1024);
  });
  CHECK(wait_child(pid).signal == SIGKILL);
  // The segment was made as an anonymous file: the name never appeared.
  CHECK_FALSE(procshare::test::shm_exists(name));
  CHECK_THROWS_AS(Segment::open(name), NotFound);
  CHECK(Segment::open_or_create(name, 64 * 1024).created());
}

}  // TEST_SUITE

TEST_SUITE("fault") {

TEST_CASE("a process that closes its segment while a thread holds a lock inside still frees it by dying") {
  SegmentName name("unmapheld");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<int>("v", 1);
  const pid_t pid = run_child([&] {
    PipeSignal holding;
    std::thread holder([&] {
      auto guard = v.lock();
      *guard = 2;
      holding.notify();
      wait_to_be_killed();
    });
    holding.wait();
    { Segment gone(std::move(segment)); }  // the child's last handle on the segment
    ::_exit(0);                            // the holder thread dies with the process
  });
  CHECK(wait_child(pid).exited);
  CHECK(v.poisoned());  // seen without waiting: the kernel released the lock
  CHECK(v.load() == 2);
  CHECK(v.owner_deaths() == 1);
}

TEST_CASE("a guard copied into a forked child does not unmark its parent's half-done write") {
  SegmentName name("forkguard");
  auto segment = Segment::create(name, 64 * 1024);
  auto pair = segment.create_array<int>("pair", 2, 0);
  PipeSignal halfway;
  const pid_t writer = run_child([&] {
    auto guard = pair.lock();
    guard[0] = 1;  // half of a two-step change
    const pid_t helper = run_child([] {});  // its copy of `guard` goes out of scope there
    if (!wait_child(helper).ok()) ::_exit(3);
    halfway.notify();
    wait_to_be_killed();
  });
  REQUIRE(halfway.wait());
  kill_child(writer);
  CHECK(pair.poisoned());
  CHECK(pair.snapshot() == std::vector<int>{1, 0});
  CHECK_THROWS_AS(pair.store(1, 1), OwnerDied);
}

TEST_CASE("poisoned() and owner_deaths() see a dead holder before anyone locks again") {
  SegmentName name("observe");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<int>("v", 0);
  auto m = segment.create_mutex("m");
  PipeSignal holding;
  const pid_t pid = run_child([&] {
    auto guard = v.lock();
    m.lock();
    holding.notify();
    wait_to_be_killed();
  });
  REQUIRE(holding.wait());
  CHECK_FALSE(v.poisoned());  // alive: not poisoned, and asking does not block
  kill_child(pid);
  CHECK(v.poisoned());
  CHECK(v.owner_deaths() == 1);
  CHECK(m.owner_deaths() == 1);
  const auto objects = segment.objects();
  CHECK(objects.at(0).poisoned);
  CHECK(objects.at(1).owner_deaths == 1);
}

// A worker moves a finished chunk's counts into its job in several steps; a worker killed
// among them used to leave the job counted twice (the supervisor settled the chunk again)
// or never complete (its items never reached `settled`). Tiny chunks of trivial items on
// three times more workers than this machine's CPUs spend much of their time settling,
// and are often preempted there: hundreds of kills land at random moments of it. Every
// round must end, with done + failed + skipped == total and each count equal to what the
// per-item outcomes say. Rounds alternate a map, a map cancelled midway (its unclaimed
// items are dropped by workers and the parent) and an imap_unordered (batched results).
// Each task takes nested locks (a Value's guard with an Array's lock inside, then a mark
// in a third object), so kills also land inside them, and the storm's watchdog fails a
// round in which any worker, or this process, sleeps on a free lock or a moved word.
// Time budget: about 8 s (PROCSHARE_SOAK=N multiplies it).
TEST_CASE("pool workers killed at random while settling tiny chunks: exact counts, no hang, no lost wake-up") {
  SegmentName name("settle_storm");
  constexpr int total = 20000;
  procshare::test::LockedTaskObjects objects("settle_objects");  // (made before the pool forks)
  auto& v = objects.v;
  auto& hits = objects.hits;
  auto& finished = objects.finished;
  Pool pool({.workers = 6, .name = name.str()});
  std::vector<std::int64_t> items(total);
  std::iota(items.begin(), items.end(), 0);
  const auto task = [](const std::int64_t& x, Value<std::int64_t> v, Array<std::int64_t> hits,
                       Array<std::uint8_t> finished) {
    if (x % 211 == 5) throw std::runtime_error("item fails");
    return 2 * procshare::test::locked_task(x, v, hits, finished);
  };
  int soak = 1;
  if (const char* s = std::getenv("PROCSHARE_SOAK")) soak = std::max(1, std::atoi(s));
  const auto budget = std::chrono::seconds(8) * soak;
  std::mt19937 random(11);
  int rounds = 0, kills = 0, wrong_rounds = 0;
  bool hung = false;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < budget) {
    const int kind = rounds % 3;  // 0: map, 1: map cancelled midway, 2: imap_unordered
    CAPTURE(rounds);
    CAPTURE(kind);
    std::uint64_t done = 0, failed = 0, skipped = 0;  // from the items' outcomes
    bool wrong = false;
    struct { std::uint64_t done, failed, skipped; } p{};  // the job's counts
    objects.reset();
    std::uint64_t died = 0;  // items that failed as WorkerDied (their task may have got anywhere)
    KillStorm storm(pool, static_cast<std::uint32_t>(random()), 300ms, 15s);
    if (kind < 2) {
      auto job = pool.map_async(Chunk{1}, items, task, v, hits, finished);
      if (kind == 1) {
        std::this_thread::sleep_for(std::chrono::microseconds(random() % 20000));
        job.cancel();
      }
      job.wait_for(20s);  // (the storm's watchdog ends a hang before this)
      storm.stop();
      if (storm.hung()) {
        hung = true;
        FAIL_CHECK("round ", rounds, ": ", storm.failure());
        break;
      }
      const auto progress = job.progress();
      p = {progress.done, progress.failed, progress.skipped};
      for (const auto& o : job.outcomes()) {
        const std::int64_t x = items[o.index()];
        if (o.state() == ItemState::done) {
          ++done;
          wrong |= o.value() != x * 2;
        } else if (o.state() == ItemState::failed) {
          ++failed;
          try {
            std::rethrow_exception(o.error());
          } catch (const TaskError&) {
            wrong |= x % 211 != 5;
          } catch (const WorkerDied&) {
            ++died;
          }
        } else {
          ++skipped;
          wrong |= kind == 0;
        }
      }
    } else {
      std::vector<int> seen(total, 0);
      try {
        for (const auto& o : pool.imap_unordered(items, task, v, hits, finished)) {
          wrong |= seen.at(o.index())++ != 0;
          if (o.state() == ItemState::done) {
            ++done, wrong |= o.value() != items[o.index()] * 2;
          } else if (o.state() == ItemState::failed) {
            ++failed;
            try {
              std::rethrow_exception(o.error());
            } catch (const WorkerDied&) {
              ++died;
            } catch (...) {
            }
          } else {
            ++skipped;
          }
        }
      } catch (const PoolClosed&) {  // (the watchdog killed the supervisor)
      }
      storm.stop();
      if (storm.hung()) {
        hung = true;
        FAIL_CHECK("round ", rounds, ": ", storm.failure());
        break;
      }
      wrong |= std::count(seen.begin(), seen.end(), 1) != total;
      p = {done, failed, skipped};  // (a stream shows no counts: its outcomes must add up)
    }
    CHECK(p.done + p.failed + p.skipped == static_cast<std::uint64_t>(total));
    CHECK(p.done == done);
    CHECK(p.failed == failed);
    CHECK(p.skipped == skipped);
    wrong |= p.done + p.failed + p.skipped != total || p.done != done || p.failed != failed ||
             p.skipped != skipped;
    // The locks' totals: every done item marked itself and counted once under both locks;
    // an item whose worker died may have got anywhere in its task (counted, marked or not).
    std::uint64_t marked = 0;
    for (int i = 0; i < total; ++i) marked += finished.load(static_cast<std::size_t>(i));
    const auto counted = static_cast<std::uint64_t>(v.load());
    CHECK(marked >= done);
    CHECK(marked <= done + died);
    CHECK(counted >= done);
    CHECK(counted <= done + died);
    CHECK(static_cast<std::uint64_t>(hits.load(0)) <= counted);
    CHECK(static_cast<std::uint64_t>(hits.load(0)) + died >= counted);
    wrong |= marked < done || marked > done + died || counted < done || counted > done + died;
    if (wrong) ++wrong_rounds;
    CHECK_FALSE(wrong);
    kills += storm.kills();
    ++rounds;
  }
  const auto inside = v.owner_deaths() + hits.owner_deaths() + finished.owner_deaths();
  MESSAGE(rounds, " rounds, ", kills, " kills (", inside, " inside a task's locks), ", wrong_rounds,
          " rounds with wrong counts");
  REQUIRE_FALSE(hung);
  CHECK(rounds >= 3);
  CHECK(inside > 0);  // (kills did land inside the nested locks)
  // The pool is still whole.
  CHECK(pool.map(std::vector<int>{21}, [](const int& x) { return x * 2; }).at(0) == 42);
}

}  // TEST_SUITE
