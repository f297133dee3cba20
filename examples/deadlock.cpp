// deadlock: two processes take two locks in opposite order, the textbook deadlock.
// First each takes its first lock and waits for the other with try_lock_for: both time
// out, and each reports the would-be hang instead of hanging. Then both do the same work
// with procshare::lock(a, b), which takes the locks in one global order: no deadlock.
//
// Usage: deadlock [rounds=20000]
// Prints the two detections, then "counter = 2 x rounds" (exits 1 if it is off).
#include <procshare/procshare.hpp>

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  const long rounds = argc > 1 ? std::atol(argv[1]) : 20000;
  auto segment = procshare::Segment::create(fmt::format("deadlock-demo-{}", ::getpid()), 64 * 1024);
  auto a = segment.create_mutex("a");
  auto b = segment.create_mutex("b");
  auto both_hold_one = segment.create_barrier("both-hold-one", 2);
  auto counter = segment.create_value<long>("counter", 0);

  // The same job for both processes; `reversed` takes the locks in the other order.
  auto job = [&](bool reversed) {
    procshare::Mutex& first = reversed ? b : a;
    procshare::Mutex& second = reversed ? a : b;
    const char* names[] = {reversed ? "b" : "a", reversed ? "a" : "b"};

    // 1. Naive order: each holds one lock and wants the other's.
    first.lock();
    both_hold_one.arrive_and_wait();
    const bool taken = second.try_lock_for(200ms);
    if (!taken)
      fmt::print("pid {}: holds '{}', waited 200 ms for '{}': would deadlock, backing off\n",
                 ::getpid(), names[0], names[1]);
    both_hold_one.arrive_and_wait();  // both have tried while holding their first lock
    if (taken) second.unlock();
    first.unlock();

    // 2. procshare::lock takes both in one global order, whatever order they are named in.
    for (long i = 0; i < rounds; ++i) {
      if (reversed) procshare::lock(b, a); else procshare::lock(a, b);
      counter += 1;
      a.unlock();
      b.unlock();
    }
  };

  std::fflush(stdout);
  const pid_t child = ::fork();
  if (child == 0) {
    job(true);
    std::fflush(stdout);
    std::_Exit(0);
  }
  job(false);
  ::waitpid(child, nullptr, 0);
  fmt::print("counter = {} (expected {})\n", counter, 2 * rounds);
  return counter.load() == 2 * rounds ? 0 : 1;
}
