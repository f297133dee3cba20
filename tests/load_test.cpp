// Load: 2 x hardware_concurrency() processes hammer one Value, one Array, one Queue, one Map
// and one Vector for a fixed number of iterations each, while the parent keeps a Pool busy
// with a map and a stream of submits. At the end every total is exact: the Value's sum,
// each Array slot, every queue item received exactly once, each Map counter, the Vector's
// contents, every pool result and the pool tasks' own shared counter.
//
// The Pool is used only by the process that made it (the parent); the children hammer the
// segment's objects meanwhile, so the pool's workers and supervisor compete with them for
// the CPUs and for the locks the tasks take.
//
// Iterations: 2,000,000 per process (about 3 s on 2 cores), times PROCSHARE_LOAD_SCALE (a
// factor, default 1; 0.25 under AddressSanitizer, whose every access is checked).
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <vector>

using namespace procshare;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using namespace std::chrono_literals;

namespace {

using I64 = std::int64_t;

#if defined(__SANITIZE_ADDRESS__)
constexpr double default_scale = 0.25;
#else
constexpr double default_scale = 1.0;
#endif

// Iterations per process.
I64 iterations() {
  double scale = default_scale;
  if (const char* s = std::getenv("PROCSHARE_LOAD_SCALE")) scale = std::atof(s);
  return std::max<I64>(100, static_cast<I64>(2000000 * scale));
}

int processes() { return 2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// A child's exit codes: which bounded wait gave up.
enum Code : int { no_start = 3, push_timed_out = 4, pop_timed_out = 5 };

}  // namespace

TEST_SUITE("load") {

TEST_CASE("2 x cores processes hammering a Value, Array, Queue, Map and Vector, and a busy Pool: exact totals") {
  const int p_count = processes();
  const I64 n = iterations();
  const I64 keys = 64;           // Map counters
  const I64 log_every = 8;       // one Vector push per this many iterations
  const I64 items = p_count * n; // queue items in all
  MESSAGE("load: ", p_count, " processes x ", n, " iterations");

  SegmentName name("load");
  // The received marks (1 byte per item) and the Vector's arena (room for its doubling).
  const auto bytes = static_cast<std::size_t>(items) + static_cast<std::size_t>(items / log_every) * 8 * 3 + (8 << 20);
  auto segment = Segment::create(name, bytes);
  auto total = segment.create_value<I64>("total", 0);
  auto slots = segment.create_array<I64>("slots", static_cast<std::size_t>(p_count) + 1, 0);
  auto queue = segment.create_queue<I64>("queue", 64);
  auto seen = segment.create_array<std::uint8_t>("seen", static_cast<std::size_t>(items), 0);
  auto counters = segment.create_map<I64, I64>("counters", 64 << 10);
  auto log = segment.create_vector<I64>("log", static_cast<std::size_t>(items / log_every) * 8 * 3 + (1 << 20));
  auto pool_hits = segment.create_atomic<I64>("pool_hits", 0);
  auto go = segment.create_event("go");
  auto foreign = segment.create_atomic<I64>("foreign", 0);  // items popped by another process

  // The pool first: its workers are forks of this process, and see the segment.
  Pool pool({.workers = 2, .arena_bytes = std::size_t{64} << 20});

  const auto start = std::chrono::steady_clock::now();
  std::vector<pid_t> children;
  for (int p = 0; p < p_count; ++p)
    children.push_back(run_child([&, p] {
      if (!go.wait_for(60s)) ::_exit(no_start);
      for (I64 i = 0; i < n; ++i) {
        total += 1;
        slots.update(static_cast<std::size_t>(p), [](const I64& x) { return x + 1; });
        slots.update(static_cast<std::size_t>(p_count), [](const I64& x) { return x + 1; });
        if (!queue.push_for(p * n + i, 60s)) ::_exit(push_timed_out);
        const auto got = queue.pop_for(60s);  // someone's item, never blocked for good: see below
        if (!got) ::_exit(pop_timed_out);
        if (*got / n != p) foreign += 1;
        seen.update(static_cast<std::size_t>(*got), [](const std::uint8_t& x) { return std::uint8_t(x + 1); });
        {
          auto g = counters.lock();
          g.insert_or_assign(i % keys, g.get(i % keys).value_or(0) + 1);
        }
        if (i % log_every == 0) log.push_back(p * n + i);
      }
    }));
  // Every process pushes before it pops, so while one waits in pop the queue holds at
  // least one item per process in the same state: nobody waits for ever.
  go.set();

  // Meanwhile, the pool: a map and a stream of submits whose tasks share a counter.
  std::vector<I64> inputs(static_cast<std::size_t>(std::max<I64>(1000, n)));
  std::iota(inputs.begin(), inputs.end(), 0);
  auto job = pool.map_async(inputs, [](const I64& x, Atomic<I64> hits) {
    hits += 1;
    return x * 3;
  }, pool_hits);
  const I64 submits = std::max<I64>(50, n / 100);
  I64 submitted_sum = 0;
  for (I64 i = 0; i < submits; ++i) {
    auto future = pool.submit([](I64 x, Atomic<I64> hits) {
      hits += 1;
      return x + 1;
    }, i, pool_hits);
    REQUIRE(future.wait_for(60s));
    submitted_sum += future.get();
  }
  REQUIRE(job.wait_for(120s));
  const auto results = job.get();

  bool all_ok = true;
  for (const pid_t child : children) {
    const auto status = wait_child(child, 180s);
    CHECK_FALSE(status.timed_out);
    CHECK(status.ok());
    all_ok = all_ok && status.ok();
  }
  const auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // How much the processes interleaved (not asserted: a loaded machine may run them one
  // after another, and the totals must be exact either way).
  MESSAGE("load: done in ", took, " s; ", foreign.load(), " of ", items,
          " queue items were popped by another process than their producer");
  REQUIRE(all_ok);

  // The Value and the Array.
  CHECK(total.load() == items);
  const auto counts = slots.snapshot();
  for (int p = 0; p < p_count; ++p) CHECK(counts[static_cast<std::size_t>(p)] == n);
  CHECK(counts.back() == items);
  // Every queue item received exactly once.
  CHECK(queue.size() == 0);
  const auto marks = seen.snapshot();
  CHECK(std::count(marks.begin(), marks.end(), std::uint8_t{1}) == items);
  // The Map's counters.
  const auto map = counters.snapshot();
  CHECK(map.size() == static_cast<std::size_t>(std::min(keys, n)));
  for (I64 k = 0; k < keys && k < n; ++k) {
    const I64 per_process = (n - 1 - k) / keys + 1;  // i in [0, n) with i % keys == k
    CHECK(map.at(k) == p_count * per_process);
  }
  // The Vector: each process's logged items, all of them, once.
  auto logged = log.snapshot();
  std::sort(logged.begin(), logged.end());
  std::vector<I64> expected;
  for (int p = 0; p < p_count; ++p)
    for (I64 i = 0; i < n; i += log_every) expected.push_back(p * n + i);
  CHECK(logged == expected);
  // The pool's results and its tasks' counter.
  bool results_exact = results.size() == inputs.size();
  for (std::size_t i = 0; results_exact && i < results.size(); ++i) results_exact = results[i] == inputs[i] * 3;
  CHECK(results_exact);
  CHECK(submitted_sum == submits * (submits + 1) / 2);
  CHECK(pool_hits.load() == static_cast<I64>(inputs.size()) + submits);
  // Nobody died or was poisoned; the segment validates for another opener.
  for (const auto& o : Segment::open(name).objects()) {
    INFO(o.name);
    CHECK_FALSE(o.poisoned);
    CHECK(o.owner_deaths == 0);
  }
}

}  // TEST_SUITE
