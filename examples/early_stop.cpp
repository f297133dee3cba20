// early_stop: one task fails; the main process sees it in the job's progress and stops
// the rest of the job at once (the tutorials' "a child reports an error, the main
// process terminates the pool"), without losing the pool. Prints the failure and how
// much work the stop skipped.
//
// Usage: early_stop [items=200000] [bad item=5000]
// Prints "item B failed ...", then "stopped: D done, S skipped of N"; exits 1 if
// nothing was skipped.
#include <procshare/procshare.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

// A task: "process" one record; record `bad` is corrupt.
static int check_record(int record, int bad) {
  std::this_thread::sleep_for(std::chrono::microseconds(20));  // the work
  if (record == bad) throw std::runtime_error(fmt::format("record {} is corrupt", record));
  return record % 7;
}

int main(int argc, char** argv) {
  const int items = argc > 1 ? std::atoi(argv[1]) : 200000;
  const int bad = argc > 2 ? std::atoi(argv[2]) : 5000;
  std::vector<int> records(static_cast<std::size_t>(items));
  std::iota(records.begin(), records.end(), 0);

  procshare::Pool pool({.workers = 2});
  auto job = pool.map_async(records, check_record, bad);
  for (;;) {  // the controller loop: watch progress, stop at the first failure
    const auto progress = job.progress();
    if (progress.failed > 0) {
      job.cancel();
      break;
    }
    if (progress.done == progress.total) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  try {
    job.get();
    fmt::print("no record failed\n");
  } catch (const procshare::TaskError& e) {
    fmt::print("item {} failed in worker {}: {}\n", e.index(), e.worker_pid(), e.message());
  }
  const auto p = job.progress();
  fmt::print("stopped: {} done, {} skipped of {}\n", p.done, p.skipped, p.total);
  return p.skipped > 0 ? 0 : 1;
}
