// progress_counter: N forked workers share one job of M items and log each finished item
// as "(k / M)" with their pid, the classic multiprocessing tutorial job, with an exact
// final count. Workers claim items from a shared Atomic<int64> cursor; the progress
// count is a Value<int64> whose += is atomic across processes (Python's
// `counter.value += 1` is not).
//
// Usage: progress_counter [workers=4] [items=24]
// Prints one line per item, then "done: M of M items by N workers"; exits 1 if the
// count is off.
#include <procshare/procshare.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  const int workers = argc > 1 ? std::atoi(argv[1]) : 4;
  const std::int64_t items = argc > 2 ? std::atoll(argv[2]) : 24;
  if (workers < 1 || items < 0) {
    fmt::print(stderr, "usage: progress_counter [workers >= 1] [items >= 0]\n");
    return 2;
  }

  // One segment per run; removed when `segment` goes out of scope in this process.
  auto segment = procshare::Segment::create(fmt::format("progress-counter-{}", ::getpid()),
                                            64 * 1024);
  auto cursor = segment.create_atomic<std::int64_t>("cursor", 0);  // next item to claim
  auto done = segment.create_value<std::int64_t>("done", 0);       // items finished

  for (int w = 0; w < workers; ++w) {
    std::fflush(stdout);
    if (::fork() == 0) {
      for (std::int64_t item; (item = cursor.fetch_add(1)) < items;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(item % 3));  // "work"
        const std::int64_t k = done += 1;
        fmt::print("({} / {}) item {} done by pid {}\n", k, items, item, ::getpid());
        std::fflush(stdout);
      }
      std::_Exit(0);
    }
  }
  while (::wait(nullptr) > 0) {
  }

  fmt::print("done: {} of {} items by {} workers\n", done, items, workers);
  return done.load() == items ? 0 : 1;
}
