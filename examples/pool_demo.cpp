// pool_demo: the flagship demo. Searches generated records (default_records of them, a
// minute or so of work on two cores, so there is time to try the commands) for rare
// "interesting" ones on a worker Pool, with a live progress bar fed by the pool's shared
// progress counters, and ends with a summary. At start it prints the procshare-ctl
// commands another terminal can use to watch the job, change its work per record, and
// stop it early -- which it honours at once. The commands name the procshare-ctl built
// beside the demo by a path that works from the current folder (the project folder, for
// `bash run.sh demo`), or plain `procshare-ctl` if there is none.
//
// Usage: pool_demo [--workers N] [--records N] [--rounds N]
// Prints the ctl commands, a progress bar (plain lines when stdout is not a terminal),
// then "searched R records in S s (X records/s) with W workers: F found, K skipped".
#include <procshare/procshare.hpp>

#include "ctl_command.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

constexpr std::uint64_t block_size = 1000;  // records per task
// The default search: long enough to watch, change and stop from another terminal.
constexpr std::uint64_t default_records = 400'000'000;

// A record is generated from its id; it is interesting if its mixed hash is 0 mod 99,991.
static std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

// The task: scans one block of records, `rounds` hash rounds each (the controller can
// change `rounds` while the job runs), counts the interesting ones into `found`.
static std::int64_t scan_block(std::uint64_t block, procshare::Atomic<std::int64_t> rounds,
                               procshare::Atomic<std::int64_t> found) {
  const std::int64_t work = rounds.load(std::memory_order_relaxed);
  std::int64_t hits = 0;
  for (std::uint64_t id = block * block_size; id < (block + 1) * block_size; ++id) {
    std::uint64_t h = id;
    for (std::int64_t r = 0; r < work; ++r) h = mix(h);
    hits += h % 99991 == 0;
  }
  if (hits) found.fetch_add(hits, std::memory_order_relaxed);
  return hits;
}


int main(int argc, char** argv) {
  unsigned workers = 0;
  std::uint64_t records = default_records;
  std::int64_t rounds = 100;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view flag = argv[i];
    if (flag == "--workers") workers = static_cast<unsigned>(std::atoi(argv[i + 1]));
    else if (flag == "--records") records = std::strtoull(argv[i + 1], nullptr, 10);
    else if (flag == "--rounds") rounds = std::atoll(argv[i + 1]);
    else return fmt::print(stderr, "usage: pool_demo [--workers N] [--records N] [--rounds N]\n"), 2;
  }
  if (argc % 2 == 0 || records < block_size || rounds < 1)
    return fmt::print(stderr, "usage: pool_demo [--workers N] [--records N >= 1000] [--rounds N >= 1]\n"), 2;

  const std::string name = fmt::format("pool-demo-{}", ::getpid());
  auto segment = procshare::Segment::create(name, 64 * 1024);
  auto work = segment.create_atomic<std::int64_t>("rounds", rounds);
  auto found = segment.create_atomic<std::int64_t>("found", 0);
  procshare::Pool pool({.workers = workers, .name = name + "-pool"});
  std::vector<std::uint64_t> blocks(records / block_size);
  std::iota(blocks.begin(), blocks.end(), 0);

  const auto start = std::chrono::steady_clock::now();
  auto job = pool.map_async(blocks, scan_block, work, found);
  fmt::print("searching {} records in {} blocks with {} workers\n", blocks.size() * block_size,
             blocks.size(), pool.workers());
  const std::string control = pool.control_segment();
  const std::string ctl = ctl_command();
  fmt::print("from another terminal in this folder (the search runs long on purpose; --records N "
             "shortens it):\n");
  fmt::print("  {:<72} # live progress\n", ctl + " watch " + control);
  fmt::print("  {:<72} # workers and jobs\n", ctl + " show " + control);
  fmt::print("  {:<72} # less work per record\n", ctl + " set " + name + " rounds 10");
  fmt::print("  {:<72} # stop early\n", ctl + " stop " + control);
  std::fflush(stdout);

  const bool terminal = ::isatty(STDOUT_FILENO) != 0;
  auto last_line = start;
  for (;;) {
    const auto p = job.progress();
    const auto now = std::chrono::steady_clock::now();
    const double fraction = double(p.done + p.failed + p.skipped) / double(p.total);
    if (terminal) {
      const int filled = static_cast<int>(fraction * 40);
      fmt::print("\r[{}{}] {:3.0f}%  {} found", std::string(filled, '#'), std::string(40 - filled, '.'),
                 fraction * 100, found.load());
      std::fflush(stdout);
    } else if (now - last_line >= 1s) {
      last_line = now;
      fmt::print("{:.0f}% of blocks, {} found\n", fraction * 100, found.load());
      std::fflush(stdout);
    }
    if (job.wait_for(100ms)) break;
  }
  if (terminal) fmt::print("\n");

  bool stopped = false;
  try {
    job.get();
  } catch (const procshare::Stopped&) {
    stopped = true;
  }
  const auto p = job.progress();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto searched = p.done * block_size;
  fmt::print("{}searched {} records in {:.2f} s ({:.0f} records/s) with {} workers: {} found, {} skipped\n",
             stopped ? "stopped by controller: " : "", searched, seconds, searched / seconds,
             pool.workers(), found.load(), p.skipped * block_size);
  return 0;
}
