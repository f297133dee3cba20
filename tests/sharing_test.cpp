// Real processes sharing objects: forked children with exact totals, and an unrelated
// process (this binary re-executed with --attach) that opens the segment by name.
#define DOCTEST_CONFIG_IMPLEMENT
#include "support.hpp"

#include <doctest/doctest.h>

#include <mutex>
#include <spawn.h>

using namespace procshare;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;

extern char** environ;

namespace {

constexpr int attach_rounds = 1000;

// Run in the re-executed binary: opens segment `name` by name and updates what the
// parent created. Exit code 0 if everything it read was as expected.
int attach(const std::string& name) {
  auto segment = Segment::open(name);
  auto counter = segment.open_value<std::int64_t>("counter");
  auto hits = segment.open_atomic<std::int64_t>("hits");
  auto slots = segment.open_array<int>("slots");
  auto ready = segment.open_flag("ready");
  if (!ready.is_set() || slots.size() != 4) return 3;
  for (int i = 0; i < attach_rounds; ++i) {
    counter += 1;
    hits.fetch_add(2);
    slots.update(1, [](int x) { return x + 3; });
  }
  segment.create_value<std::int64_t>("reply", counter.load() * 10);
  return 0;
}

// Runs this test binary again as `--attach NAME`; returns its exit status.
procshare::test::ChildStatus run_attached(const std::string& name) {
  std::string self = "/proc/self/exe", flag = "--attach", arg = name;
  char* argv[] = {self.data(), flag.data(), arg.data(), nullptr};
  pid_t pid = 0;
  if (::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, environ) != 0) return {};
  return wait_child(pid);
}

// Starts `n` children running fn(i), releases them together, and waits for them all.
// Returns how many exited cleanly.
template <class F> int run_together(int n, Segment& segment, F fn) {
  auto go = segment.create_flag("go");
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i)
    pids.push_back(run_child([&, i] {
      while (!go.is_set()) std::this_thread::yield();
      fn(i);
    }));
  go.set();
  int ok = 0;
  for (const pid_t pid : pids) ok += wait_child(pid).ok() ? 1 : 0;
  return ok;
}

}  // namespace

TEST_SUITE("sharing") {

TEST_CASE("4 processes x 100,000 updates of a Value, an Atomic and an Array element give exact totals") {
  SegmentName name("totals");
  auto segment = Segment::create(name, 64 * 1024);
  auto value = segment.create_value<std::int64_t>("value", 0);
  auto atomic = segment.create_atomic<std::int64_t>("atomic", 0);
  auto array = segment.create_array<std::int64_t>("array", 4, 0);
  constexpr int processes = 4, rounds = 100'000;
  CHECK(run_together(processes, segment, [&](int) {
          for (int i = 0; i < rounds; ++i) {
            value += 1;
            atomic.fetch_add(1);
            array.update(2, [](std::int64_t x) { return x + 1; });
          }
        }) == processes);
  CHECK(value.load() == processes * rounds);
  CHECK(atomic.load() == processes * rounds);
  CHECK(array.snapshot() == std::vector<std::int64_t>{0, 0, processes * rounds, 0});
}

TEST_CASE("4 processes counting under a shared Mutex with std::scoped_lock lose no update") {
  SegmentName name("mutexcount");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  auto guarded = segment.create_array<std::int64_t>("guarded", 1, 0);
  constexpr int processes = 4, rounds = 50'000;
  CHECK(run_together(processes, segment, [&](int) {
          for (int i = 0; i < rounds; ++i) {
            std::scoped_lock held(m);
            auto g = guarded.lock();  // nested: the array's own lock inside the mutex
            g[0] += 1;
          }
        }) == processes);
  CHECK(guarded.load(0) == processes * rounds);
  CHECK(m.owner_deaths() == 0);
}

TEST_CASE("8 processes racing test_and_set on a Flag: exactly one winner in each of 1,000 rounds") {
  SegmentName name("flagrace");
  constexpr int processes = 8, rounds = 1000;
  auto segment = Segment::create(name, 1024 * 1024, {.max_objects = rounds + 8});
  std::vector<Flag> flags;
  for (int r = 0; r < rounds; ++r) {
    std::string flag_name = "f";
    flag_name += std::to_string(r);  // (not "f" + ...: g++ 12 -O2 warns falsely on it)
    flags.push_back(segment.create_flag(flag_name));
  }
  auto winners = segment.create_array<int>("winners", rounds, 0);
  auto arrived = segment.create_atomic<int>("arrived", 0);
  CHECK(run_together(processes, segment, [&](int) {
          for (int r = 0; r < rounds; ++r) {
            if (r % 100 == 0) {  // a barrier every 100 rounds keeps the racers together
              arrived.fetch_add(1);
              while (arrived.load() < processes * (r / 100 + 1)) std::this_thread::yield();
            }
            if (!flags[r].test_and_set()) winners.update(r, [](int w) { return w + 1; });
          }
        }) == processes);
  CHECK(winners.snapshot() == std::vector<int>(rounds, 1));
}

TEST_CASE("an unrelated process opens the segment by name and its updates reach the parent") {
  SegmentName name("attach");
  auto segment = Segment::create(name, 64 * 1024);
  auto counter = segment.create_value<std::int64_t>("counter", 5);
  auto hits = segment.create_atomic<std::int64_t>("hits", 0);
  auto slots = segment.create_array<int>("slots", 4, 0);
  segment.create_flag("ready", true);
  const auto status = run_attached(name.str());
  REQUIRE(status.ok());
  CHECK(counter.load() == 5 + attach_rounds);
  CHECK(hits.load() == 2 * attach_rounds);
  CHECK(slots.snapshot() == std::vector<int>{0, 3 * attach_rounds, 0, 0});
  CHECK(segment.open_value<std::int64_t>("reply").load() == (5 + attach_rounds) * 10);
}

TEST_CASE("a forked child opens an object created after the fork, by name") {
  SegmentName name("inherit");
  auto segment = Segment::create(name, 64 * 1024);
  auto before = segment.create_value<int>("before", 0);
  procshare::test::PipeSignal created;
  const pid_t pid = run_child([&] {
    if (!created.wait()) throw std::runtime_error("never told that 'after' exists");
    auto after = Segment::open(name).open_value<int>("after");  // same mapping, reused
    before += 1;
    after += 1;
  });
  segment.create_value<int>("after", 10);
  created.notify();
  CHECK(wait_child(pid).ok());
  CHECK(before.load() == 1);
  CHECK(segment.open_value<int>("after").load() == 11);
}

}  // TEST_SUITE

int main(int argc, char** argv) {
  if (argc == 3 && std::string_view(argv[1]) == "--attach") {
    try {
      return attach(argv[2]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "attach: %s\n", e.what());
      return 2;
    }
  }
  return doctest::Context(argc, argv).run();
}
