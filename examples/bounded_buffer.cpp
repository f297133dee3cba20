// bounded_buffer: the classic bounded-buffer problem across processes. Producers push
// numbered items into a small shared Queue; consumers pop until the queue is closed and
// drained. Every item is counted once: the totals printed at the end add up exactly.
//
// Usage: bounded_buffer [producers=3] [consumers=2] [items per producer=100000]
// Prints each consumer's share, then "produced N items (sum S), consumed N items (sum S)";
// exits 1 if the two differ.
#include <procshare/procshare.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

int main(int argc, char** argv) {
  const int producers = argc > 1 ? std::atoi(argv[1]) : 3;
  const int consumers = argc > 2 ? std::atoi(argv[2]) : 2;
  const std::int64_t items = argc > 3 ? std::atoll(argv[3]) : 100000;
  if (producers < 1 || consumers < 1 || items < 0) {
    fmt::print(stderr, "usage: bounded_buffer [producers >= 1] [consumers >= 1] [items >= 0]\n");
    return 2;
  }

  auto segment = procshare::Segment::create(fmt::format("bounded-buffer-{}", ::getpid()), 1 << 20);
  auto buffer = segment.create_queue<std::int64_t>("buffer", 16);  // the bounded buffer
  auto counts = segment.create_array<std::int64_t>("counts", consumers, 0);
  auto sums = segment.create_array<std::int64_t>("sums", consumers, 0);

  for (int c = 0; c < consumers; ++c) {
    std::fflush(stdout);
    if (::fork() == 0) {
      std::int64_t count = 0, sum = 0;
      try {
        for (;;) {
          sum += buffer.pop();  // waits while the buffer is empty
          ++count;
        }
      } catch (const procshare::QueueClosed&) {  // closed and drained: done
      }
      counts.store(c, count);
      sums.store(c, sum);
      std::_Exit(0);
    }
  }
  std::vector<pid_t> producer_pids;
  for (int p = 0; p < producers; ++p) {
    std::fflush(stdout);
    const pid_t pid = ::fork();
    if (pid == 0) {
      for (std::int64_t i = 1; i <= items; ++i) buffer.push(i);  // waits while full
      std::_Exit(0);
    }
    producer_pids.push_back(pid);
  }
  for (const pid_t pid : producer_pids) ::waitpid(pid, nullptr, 0);
  buffer.close();  // consumers finish what is left, then stop
  while (::wait(nullptr) > 0) {
  }

  std::int64_t consumed = 0, consumed_sum = 0;
  for (int c = 0; c < consumers; ++c) {
    fmt::print("consumer {} took {} items\n", c, counts.load(c));
    consumed += counts.load(c);
    consumed_sum += sums.load(c);
  }
  const std::int64_t produced = producers * items, produced_sum = producers * (items * (items + 1) / 2);
  fmt::print("produced {} items (sum {}), consumed {} items (sum {})\n", produced, produced_sum,
             consumed, consumed_sum);
  return produced == consumed && produced_sum == consumed_sum ? 0 : 1;
}
