// Pipe and Connection: messages between a parent and forked children, and what a
// closed, killed or garbled peer does to the other end.
#include "support.hpp"

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace procshare;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::wait_child;
using namespace std::chrono_literals;

namespace {

// Throws in a child (which then exits 1) when a received value is not what was expected.
void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);
}

// Whether `fd` has something to read within `timeout`.
bool wait_readable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

// Whether thread `tid` of this process sleeps in poll(2) (as /proc/self/task/TID/syscall
// says: the syscall number comes first; "running" while it runs).
bool sleeping_in_poll(pid_t tid) {
  std::ifstream file("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long number = -1;
  if (!(file >> number)) return false;
  return number == SYS_poll || number == SYS_ppoll;
}

std::vector<std::int64_t> pattern(std::size_t n) {
  std::vector<std::int64_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int64_t>(i * 2654435761u) ^ 0x5a5a;
  return v;
}

}  // namespace

TEST_SUITE("pipe") {

TEST_CASE("ints, strings and vectors round-trip both ways between a parent and a forked child") {
  Pipe pipe({.name = "roundtrip"});
  const pid_t child = run_child([&] {
    pipe.first.close();
    Connection& mine = pipe.second;
    const int n = mine.recv<int>();
    const std::string text = mine.recv<std::string>();
    auto numbers = mine.recv<std::vector<double>>();
    const auto pair = mine.recv<std::pair<std::string, long>>();
    mine.send(n + 1);
    mine.send(text + "!");
    std::reverse(numbers.begin(), numbers.end());
    mine.send(numbers);
    mine.send(std::make_tuple(pair.second, pair.first));
  });
  pipe.second.close();
  Connection& mine = pipe.first;
  mine.send(41);
  mine.send(std::string("hello"));
  mine.send(std::vector<double>{1.5, 2.5, 3.5});
  mine.send(std::make_pair(std::string("key"), 7L));
  CHECK(mine.recv<int>() == 42);
  CHECK(mine.recv<std::string>() == "hello!");
  CHECK(mine.recv<std::vector<double>>() == std::vector<double>{3.5, 2.5, 1.5});
  CHECK(mine.recv<std::tuple<long, std::string>>() == std::make_tuple(7L, std::string("key")));
  CHECK(wait_child(child).ok());
}

TEST_CASE("structured bindings give the two ends, and one process can use both") {
  auto [left, right] = Pipe();
  left.send(std::string("to the right"));
  right.send(std::vector<int>{1, 2, 3});
  CHECK(right.recv<std::string>() == "to the right");
  CHECK(left.recv<std::vector<int>>() == std::vector<int>{1, 2, 3});
  CHECK(left.description() == "pipe 'pipe' end 0");
  CHECK(right.description() == "pipe 'pipe' end 1");
}

TEST_CASE("a one-way pipe's receiving end refuses to send and its sending end to receive") {
  Pipe pipe({.duplex = false, .name = "oneway"});
  Connection& receiver = pipe.first;
  Connection& sender = pipe.second;
  CHECK(receiver.readable());
  CHECK_FALSE(receiver.writable());
  CHECK(sender.writable());
  CHECK_FALSE(sender.readable());
  CHECK_THROWS_WITH_AS(receiver.send(1),
                       "pipe 'oneway' end 0: send: this is the receiving end of a one-way pipe "
                       "(PipeOptions::duplex = false): it cannot send",
                       InvalidArgument);
  CHECK_THROWS_WITH_AS((void)sender.recv<int>(),
                       "pipe 'oneway' end 1: recv: this is the sending end of a one-way pipe "
                       "(PipeOptions::duplex = false): it cannot receive",
                       InvalidArgument);
  CHECK_THROWS_AS((void)sender.poll(), InvalidArgument);
  const pid_t child = run_child([&] {
    receiver.close();
    sender.send(std::string("one way"));
  });
  sender.close();
  CHECK(receiver.recv_for<std::string>(20s) == "one way");
  CHECK(wait_child(child).ok());
  CHECK_THROWS_AS((void)receiver.recv_for<std::string>(20s), PipeClosed);
}

TEST_CASE("poll returns false while nothing has arrived, then true once a message has") {
  Pipe pipe({.name = "polled"});
  PipeSignal go;
  const pid_t child = run_child([&] {
    pipe.first.close();
    if (!go.wait()) ::_exit(2);
    pipe.second.send(std::vector<std::string>{"a", "bb", "ccc"});
  });
  pipe.second.close();
  Connection& mine = pipe.first;
  CHECK_FALSE(mine.poll());
  CHECK_FALSE(mine.poll(0ms));
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(mine.poll(50ms));
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took >= 50ms);
  CHECK(took < 950ms);
  go.notify();
  CHECK(mine.poll(20s));
  CHECK(mine.poll());  // still there: poll does not consume it
  CHECK(mine.recv<std::vector<std::string>>() == std::vector<std::string>{"a", "bb", "ccc"});
  CHECK(wait_child(child).ok());
}

TEST_CASE("recv_for on an empty pipe throws Timeout no earlier than the deadline") {
  Pipe pipe({.name = "quiet"});
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS((void)pipe.first.recv_for<int>(40ms),
                       "pipe 'quiet' end 0: recv_for: no whole message arrived before the deadline",
                       Timeout);
  CHECK(std::chrono::steady_clock::now() - start >= 40ms);
  CHECK_THROWS_AS((void)pipe.first.recv_until<int>(std::chrono::system_clock::now() + 5ms), Timeout);
  pipe.second.send(3);
  CHECK(pipe.first.recv_for<int>(0ms) == 3);  // already there: no wait needed
}

TEST_CASE("recv after the peer closed its end returns what was sent, then throws PipeClosed") {
  Pipe pipe({.name = "closing"});
  const pid_t child = run_child([&] {
    pipe.first.close();
    pipe.second.send(1);
    pipe.second.send(std::string("last"));
  });  // the child exits: its end closes
  pipe.second.close();
  Connection& mine = pipe.first;
  CHECK(wait_child(child).ok());
  CHECK(mine.recv<int>() == 1);
  CHECK(mine.recv<std::string>() == "last");
  CHECK(mine.poll());  // recv will not block: it throws
  CHECK_THROWS_WITH_AS((void)mine.recv<int>(),
                       "pipe 'closing' end 0: recv: the other end was closed or its process died",
                       PipeClosed);
  CHECK_THROWS_AS((void)mine.recv<int>(), PipeClosed);  // and stays so
}

TEST_CASE("a peer SIGKILLed while the receiver is blocked in recv makes recv throw PipeClosed at once") {
  Pipe pipe({.name = "killed"});
  PipeSignal ready;
  const pid_t child = run_child([&] {
    pipe.first.close();
    ready.notify();
    for (;;) ::pause();
  });
  pipe.second.close();
  REQUIRE(ready.wait());
  const pid_t receiver = static_cast<pid_t>(::syscall(SYS_gettid));
  std::atomic<bool> saw_blocked{false};
  std::atomic<bool> rescued{false};
  std::atomic<bool> returned{false};
  std::chrono::steady_clock::time_point killed_at{};
  std::thread killer([&] {
    const auto give_up = std::chrono::steady_clock::now() + 20s;
    while (!sleeping_in_poll(receiver) && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(1ms);
    saw_blocked = sleeping_in_poll(receiver);
    killed_at = std::chrono::steady_clock::now();
    ::kill(child, SIGKILL);
    // Watchdog: a recv that never returns is unblocked (and the test fails) after 20 s.
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!returned && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    if (!returned) {
      rescued = true;
      ::shutdown(pipe.first.fd(), SHUT_RDWR);
    }
  });
  CHECK_THROWS_WITH_AS((void)pipe.first.recv<long>(),
                       "pipe 'killed' end 0: recv: the other end was closed or its process died",
                       PipeClosed);
  const auto returned_at = std::chrono::steady_clock::now();
  returned = true;
  killer.join();
  CHECK(saw_blocked);
  CHECK_FALSE(rescued);
  CHECK(returned_at - killed_at < 2s);
  CHECK(wait_child(child).signal == SIGKILL);
}

TEST_CASE("a peer killed in the middle of sending 64 MiB makes recv throw PipeClosed, never a partial value") {
  Pipe pipe({.name = "cut"});
  const pid_t child = run_child([&] {
    pipe.first.close();
    pipe.second.send(std::string(64u << 20, 'x'));  // blocks: the socket holds far less
    ::_exit(3);                                      // never reached before the kill
  });
  pipe.second.close();
  Connection& mine = pipe.first;
  REQUIRE(wait_readable(mine.fd(), 20000ms));
  CHECK_FALSE(mine.poll());  // takes what is there now: the start of the message
  ::kill(child, SIGKILL);
  CHECK(wait_child(child).signal == SIGKILL);
  CHECK_THROWS_WITH_AS((void)mine.recv_for<std::string>(20s),
                       doctest::Contains("pipe 'cut' end 0: recv_for: the other end was closed or "
                                         "its process died in the middle of a message ("),
                       PipeClosed);
  CHECK_THROWS_AS((void)mine.recv_for<std::string>(1s), PipeClosed);
}

TEST_CASE("send to a peer whose process died throws PipeClosed instead of dying of SIGPIPE") {
  Pipe pipe({.name = "dead"});
  const pid_t peer = run_child([&] { pipe.first.close(); });
  pipe.second.close();
  CHECK(wait_child(peer).ok());
  // The sender runs in a child with SIGPIPE's default action, which is death.
  const pid_t sender = run_child([&] {
    ::signal(SIGPIPE, SIG_DFL);
    for (const std::size_t size : {std::size_t{8}, std::size_t{4} << 20}) {
      try {
        pipe.first.send(std::string(size, 'y'));
        ::_exit(2);
      } catch (const PipeClosed& e) {
        if (std::string(e.what()) != "pipe 'dead' end 0: send: the other end was closed or its process died")
          ::_exit(3);
      }
    }
  });
  const auto status = wait_child(sender);
  CHECK(status.signal != SIGPIPE);
  CHECK(status.ok());
  CHECK_THROWS_WITH_AS(pipe.first.send(1),
                       "pipe 'dead' end 0: send: the other end was closed or its process died",
                       PipeClosed);
}

TEST_CASE("a 24 MiB message round-trips exactly, also when poll() took part of it first") {
  Pipe pipe({.name = "large"});
  const pid_t child = run_child([&] {
    pipe.first.close();
    auto numbers = pipe.second.recv<std::vector<std::int64_t>>();
    auto text = pipe.second.recv<std::string>();
    expect(numbers == pattern(numbers.size()), "the numbers arrived changed");
    pipe.second.send(numbers);
    pipe.second.send(text);
  });
  pipe.second.close();
  Connection& mine = pipe.first;
  const auto numbers = pattern(2u << 20);  // 16 MiB
  std::string text(8u << 20, '\0');
  std::iota(text.begin(), text.end(), '\0');
  mine.send(numbers);
  mine.send(text);
  REQUIRE(wait_readable(mine.fd(), 20000ms));
  CHECK_FALSE(mine.poll());  // part of the echo: kept for recv
  CHECK(mine.recv_for<std::vector<std::int64_t>>(30s) == numbers);
  CHECK(mine.recv_for<std::string>(30s) == text);
  CHECK(wait_child(child).ok());
}

TEST_CASE("20,000 messages of mixed types arrive complete and in order") {
  Pipe pipe({.name = "ordered"});
  constexpr int count = 20000;
  const pid_t child = run_child([&] {
    pipe.first.close();
    for (int i = 0; i < count; ++i) {
      if (i % 3 == 0)
        pipe.second.send(std::to_string(i));
      else
        pipe.second.send(i);
    }
  });
  pipe.second.close();
  int wrong = 0;
  for (int i = 0; i < count; ++i) {
    if (i % 3 == 0)
      wrong += pipe.first.recv_for<std::string>(20s) != std::to_string(i);
    else
      wrong += pipe.first.recv_for<int>(20s) != i;
  }
  CHECK(wrong == 0);
  CHECK_THROWS_AS((void)pipe.first.recv_for<int>(20s), PipeClosed);
  CHECK(wait_child(child).ok());
}

TEST_CASE("recv of another type than was sent is TypeMismatch and leaves the message for the right type") {
  Pipe pipe({.name = "typed"});
  pipe.first.send(std::string("text"));
  CHECK_THROWS_WITH_AS((void)pipe.second.recv<int>(),
                       doctest::Contains("pipe 'typed' end 1: recv<int>: the next message was sent "
                                         "as std::"),
                       TypeMismatch);
  CHECK_THROWS_AS((void)pipe.second.recv<long>(), TypeMismatch);
  CHECK(pipe.second.recv<std::string>() == "text");
}

TEST_CASE("an end that was closed or moved from is PipeClosed; the other end sees the close") {
  Pipe pipe({.name = "shut"});
  Connection moved = std::move(pipe.first);
  CHECK(pipe.first.closed());
  CHECK(pipe.first.fd() == -1);
  CHECK_THROWS_WITH_AS(pipe.first.send(1),
                       "pipe 'shut' end 0: send: this end is closed (close() was called, or it was "
                       "moved from)",
                       PipeClosed);
  moved.send(5);
  CHECK(pipe.second.recv<int>() == 5);
  moved.close();
  moved.close();  // idempotent
  CHECK_THROWS_AS((void)moved.recv<int>(), PipeClosed);
  CHECK_THROWS_AS((void)moved.poll(), PipeClosed);
  CHECK_THROWS_AS((void)pipe.second.recv_for<int>(5s), PipeClosed);
  CHECK_THROWS_AS(pipe.second.send(1), PipeClosed);
  Connection empty;
  CHECK(empty.closed());
  CHECK_THROWS_AS(empty.send(1), PipeClosed);
}

TEST_CASE("bytes that are not a message are CorruptMessage, and the end is closed") {
  Pipe pipe({.name = "garbled"});
  const char junk[] = "this is not a procshare message header";
  REQUIRE(::write(pipe.second.fd(), junk, sizeof junk) == static_cast<ssize_t>(sizeof junk));
  CHECK_THROWS_WITH_AS((void)pipe.first.recv<int>(),
                       "pipe 'garbled' end 0: recv: the bytes that arrived are not a procshare "
                       "message (bad header); this end is now closed",
                       CorruptMessage);
  CHECK(pipe.first.closed());
}

}  // TEST_SUITE
