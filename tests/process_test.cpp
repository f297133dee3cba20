// Process: start, join, exit codes, exceptions, signals, daemons, captures, shared totals,
// misuse, and the standard streams around fork (Process children and Pool workers), with
// real processes.
#include "support.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

using namespace procshare;
using procshare::test::all_gone;
using procshare::test::PipeSignal;
using procshare::test::process_gone;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using namespace std::chrono_literals;

namespace {

[[noreturn]] void sleep_for_ever() {
  for (;;) ::pause();
}

}  // namespace

TEST_SUITE("process") {

TEST_CASE("a started process runs its callable and join() gives exitcode 0") {
  SegmentName name;
  auto segment = Segment::create(name, 64 * 1024);
  auto ran = segment.create_value<int>("ran", 0);
  Process p([ran]() mutable { ran.store(42); });
  CHECK(p.pid() == 0);
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == std::nullopt);
  CHECK(p.name().rfind("Process-", 0) == 0);
  p.start();
  CHECK(p.pid() > 0);
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK_FALSE(p.is_alive());
  CHECK(ran.load() == 42);
  p.join();  // again: returns at once
  CHECK(process_gone(p.pid()));  // reaped: no zombie left
}

TEST_CASE("Process-N names count up, and ProcessOptions::name and set_name rename") {
  Process a([] {});
  Process b([] {});
  const int na = std::stoi(a.name().substr(8));
  CHECK(b.name() == "Process-" + std::to_string(na + 1));
  Process named({.name = "loader"}, [] {});
  CHECK(named.name() == "loader");
  named.set_name("reloader");
  CHECK(named.name() == "reloader");
  CHECK_FALSE(named.daemon());
}

TEST_CASE("a child that calls exit(3) has exitcode 3") {
  auto p = Process::spawn([] { std::exit(3); });
  p.join();
  CHECK(p.exitcode() == 3);
  auto q = Process::spawn([](int code) { ::_exit(code); }, 7);
  q.join();
  CHECK(q.exitcode() == 7);
}

TEST_CASE("an exception in the callable makes join() throw TaskError with its type, message and pid") {
  auto p = Process::spawn({.name = "thrower"}, [](int x) {
    throw std::invalid_argument("bad x " + std::to_string(x));
  }, 7);
  const int pid = p.pid();
  const std::string text =
      "process 'thrower': the callable threw in pid " + std::to_string(pid) + ": std::invalid_argument: bad x 7";
  CHECK_THROWS_WITH_AS(p.join(), text.c_str(), TaskError);
  try {
    p.join();  // every join() reports it
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.exception_type() == "std::invalid_argument");
    CHECK(e.message() == "bad x 7");
    CHECK(e.worker_pid() == pid);
    CHECK(e.index() == 0);
    CHECK(e.object() == "process 'thrower'");
  }
  CHECK(p.exitcode() == 1);

  auto q = Process::spawn([] { throw 42; });
  try {
    q.join();
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.exception_type() == "int");
    CHECK(e.message() == "an exception not derived from std::exception");
  }
  CHECK(q.exitcode() == 1);
}

TEST_CASE("join_for() and exitcode() report a thrown exception once the child ended") {
  auto p = Process::spawn([] { throw std::runtime_error(std::string(10000, 'x')); });
  try {
    p.join_for(30s);
    FAIL("no exception");
  } catch (const TaskError& e) {
    CHECK(e.exception_type() == "std::runtime_error");
    // cut to fit the child's one-page record, never more than was thrown
    CHECK(e.message().size() > 3000);
    CHECK(e.message().size() < 4096);
    CHECK(e.message().find_first_not_of('x') == std::string::npos);
  }
}

TEST_CASE("kill() gives exitcode -SIGKILL and terminate() gives -SIGTERM") {
  PipeSignal started;
  auto killed = Process::spawn([&started] {
    started.notify();
    sleep_for_ever();
  });
  REQUIRE(started.wait());
  CHECK(killed.is_alive());
  killed.kill();
  killed.join();
  CHECK(killed.exitcode() == -SIGKILL);
  killed.kill();  // ended: nothing to signal, no error

  auto terminated = Process::spawn([&started] {
    std::signal(SIGTERM, SIG_DFL);  // the child inherited doctest's handler
    started.notify();
    sleep_for_ever();
  });
  REQUIRE(started.wait());
  terminated.terminate();
  terminated.join();
  CHECK(terminated.exitcode() == -SIGTERM);
}

TEST_CASE("a process killed by an outside SIGKILL while it works has exitcode -9 and join returns") {
  SegmentName name;
  auto segment = Segment::create(name, 64 * 1024);
  auto work = segment.create_value<long>("work", 0);
  PipeSignal started;
  auto p = Process::spawn([&started, work]() mutable {
    started.notify();
    for (;;) work += 1;
  });
  REQUIRE(started.wait());
  while (work.load() < 1000) std::this_thread::yield();  // it is mid-work
  REQUIRE(::kill(p.pid(), SIGKILL) == 0);
  p.join();
  CHECK(p.exitcode() == -9);
  CHECK_FALSE(p.is_alive());
}

TEST_CASE("join_for returns false while the child runs and true once it ended; is_alive follows") {
  PipeSignal go;
  auto p = Process::spawn([&go] {
    if (!go.wait(60s)) ::_exit(9);
  });
  CHECK(p.is_alive());
  CHECK(p.exitcode() == std::nullopt);
  const auto before = std::chrono::steady_clock::now();
  CHECK_FALSE(p.join_for(50ms));
  CHECK(std::chrono::steady_clock::now() - before >= 50ms);
  CHECK(p.is_alive());
  go.notify();
  CHECK(p.join_for(30s));
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == 0);
  CHECK(p.join_for(0ms));
}

TEST_CASE("a daemon child dies when its parent is SIGKILLed; a non-daemon child lives on") {
  SegmentName name;
  auto segment = Segment::create(name, 64 * 1024);
  auto daemon_pid = segment.create_atomic<int>("daemon", 0);
  auto plain_pid = segment.create_atomic<int>("plain", 0);
  PipeSignal ready;
  const pid_t middle = run_child([&] {
    auto daemon = Process::spawn({.daemon = true}, [] { sleep_for_ever(); });
    auto plain = Process::spawn([] { sleep_for_ever(); });
    daemon_pid.store(daemon.pid());
    plain_pid.store(plain.pid());
    ready.notify();
    sleep_for_ever();
  });
  REQUIRE(ready.wait());
  const int daemon = daemon_pid.load(), plain = plain_pid.load();
  REQUIRE(daemon > 0);
  REQUIRE(plain > 0);
  CHECK_FALSE(process_gone(daemon));
  REQUIRE(::kill(middle, SIGKILL) == 0);
  CHECK(wait_child(middle).signal == SIGKILL);
  const bool daemon_gone = all_gone({daemon}, 2s);
  CHECK(daemon_gone);
  CHECK_FALSE(process_gone(plain));
  ::kill(plain, SIGKILL);  // an orphan now: init reaps it
  if (!daemon_gone) ::kill(daemon, SIGKILL);
}

TEST_CASE("destroying a running daemon Process kills and reaps it; a non-daemon one is waited for") {
  int daemon_pid = 0;
  {
    auto daemon = Process::spawn({.daemon = true}, [] { sleep_for_ever(); });
    daemon_pid = daemon.pid();
  }
  int signalled = ::kill(daemon_pid, 0), error = errno;
  CHECK(signalled != 0);  // gone, and reaped (not a zombie)
  CHECK(error == ESRCH);

  SegmentName name;
  auto segment = Segment::create(name, 64 * 1024);
  auto finished = segment.create_value<int>("finished", 0);
  int plain_pid = 0;
  {
    auto plain = Process::spawn([finished]() mutable {
      std::this_thread::sleep_for(100ms);  // still running when the destructor starts
      finished.store(1);
    });
    plain_pid = plain.pid();
  }
  CHECK(finished.load() == 1);
  signalled = ::kill(plain_pid, 0);
  error = errno;
  CHECK(signalled != 0);
  CHECK(error == ESRCH);
}

TEST_CASE("captures and arguments are copies the child sees, move-only ones included") {
  SegmentName name;
  auto segment = Segment::create(name, 64 * 1024);
  auto result = segment.create_value<long>("result", 0);
  const std::string word = "seven";
  std::vector<long> numbers{1, 2, 3, 4};
  auto owned = std::make_unique<long>(100);
  Process p(
      [word, numbers, result](const std::string& suffix, std::unique_ptr<long>& boxed, long k) mutable {
        long sum = 0;
        for (long x : numbers) sum += x;
        if (word + suffix != "seven!") throw std::logic_error("wrong capture: " + word + suffix);
        result.store(sum + *boxed + k);
      },
      std::string("!"), std::move(owned), 1000L);
  numbers.push_back(1000000);  // after construction: the child has the copy made before
  p.start();
  p.join();
  CHECK(result.load() == 10 + 100 + 1000);
}

TEST_CASE("8 processes adding to a Value give the exact total") {
  SegmentName name;
  auto segment = Segment::create(name, 64 * 1024);
  auto total = segment.create_value<long>("total", 0);
  std::vector<Process> processes;
  for (int i = 0; i < 8; ++i)
    processes.push_back(Process::spawn(
        [total](int n) mutable {
          for (int k = 0; k < n; ++k) total += 1;
        },
        5000));
  for (Process& p : processes) p.join();
  for (Process& p : processes) CHECK(p.exitcode() == 0);
  CHECK(total.load() == 40000);
}

TEST_CASE("start() twice, and join(), terminate() or kill() before start(), throw InvalidArgument naming the process") {
  Process p({.name = "twice"}, [] {});
  CHECK_THROWS_WITH_AS(p.join(), "process 'twice': join() before start()", InvalidArgument);
  CHECK_THROWS_WITH_AS(p.join_for(1s), "process 'twice': join() before start()", InvalidArgument);
  CHECK_THROWS_WITH_AS(p.terminate(), "process 'twice': terminate() before start()", InvalidArgument);
  CHECK_THROWS_WITH_AS(p.kill(), "process 'twice': kill() before start()", InvalidArgument);
  p.start();
  const std::string text =
      "process 'twice': start() called twice: it was started already (pid " + std::to_string(p.pid()) + ")";
  CHECK_THROWS_WITH_AS(p.start(), text.c_str(), InvalidArgument);
  p.join();
  CHECK_THROWS_WITH_AS(p.start(), text.c_str(), InvalidArgument);
  CHECK(p.exitcode() == 0);
}

TEST_CASE("start() refuses to fork a threaded process unless allow_threads") {
  PipeSignal stop;
  std::thread other([&stop] { stop.wait(60s); });
  Process p({.name = "threaded"}, [] {});
  CHECK_THROWS_WITH_AS(p.start(),
                       "process 'threaded': this process runs 2 threads, and forking a threaded "
                       "process is unsafe; set ProcessOptions::allow_threads if you know it is fine",
                       InvalidArgument);
  auto q = Process::spawn({.allow_threads = true}, [] {});
  q.join();
  CHECK(q.exitcode() == 0);
  stop.notify();
  other.join();
  p.start();  // no other thread now
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("a forked copy of a Process cannot join it, and its destructor leaves the child alone") {
  PipeSignal go;
  auto p = Process::spawn([&go] {
    if (!go.wait(60s)) ::_exit(9);
  });
  const pid_t copy = run_child([&] {
    try {
      p.join();
      ::_exit(2);
    } catch (const InvalidArgument&) {
    }
    // returning runs no destructor here (run_child _exits), so end p's copy by hand:
    Process moved(std::move(p));
  });
  CHECK(wait_child(copy).ok());
  CHECK(p.is_alive());
  go.notify();
  p.join();
  CHECK(p.exitcode() == 0);
}

}  // TEST_SUITE

// ---------------------------------------------------------------- output

namespace {

// A pool task that prints two lines without flushing.
int print_from_task(int i) {
  std::printf("pool task %d printf\n", i);
  std::cout << "pool task " << i << " cout\n";
  return i;
}

// The lines print_from_children writes, each exactly once.
std::vector<std::string> expected_lines() {
  std::vector<std::string> lines{"parent printf before fork", "parent cout before fork"};
  for (int i = 0; i < 3; ++i) {
    lines.push_back("process " + std::to_string(i) + " printf");
    lines.push_back("process " + std::to_string(i) + " cout");
  }
  lines.push_back("parent printf before the pool");
  lines.push_back("parent cout before the pool");
  for (int i = 0; i < 4; ++i) {
    lines.push_back("pool task " + std::to_string(i) + " printf");
    lines.push_back("pool task " + std::to_string(i) + " cout");
  }
  lines.push_back("parent printf at the end");
  lines.push_back("parent cout at the end");
  return lines;
}

// In a forked sub-process whose stdout is `fd` (a file or a pipe, so stdio buffers fully):
// the parent writes a line with printf and one with std::cout, then 3 Processes write
// theirs, then the parent two more, then a Pool of 2 workers, none flushing. `own_cout_buffer`: std::cout gets a buffer of
// its own (sync_with_stdio(false)), which only an explicit std::cout.flush() empties.
void print_from_children(int fd, bool own_cout_buffer) {
  if (::dup2(fd, STDOUT_FILENO) < 0) std::abort();
  ::close(fd);
  if (own_cout_buffer) std::ios::sync_with_stdio(false);
  std::printf("parent printf before fork\n");
  std::cout << "parent cout before fork\n";
  std::vector<Process> processes;
  for (int i = 0; i < 3; ++i)
    processes.push_back(Process::spawn([i] {
      std::printf("process %d printf\n", i);
      std::cout << "process " << i << " cout\n";
    }));
  for (Process& p : processes) p.join();
  std::printf("parent printf before the pool\n");
  std::cout << "parent cout before the pool\n";
  {
    Pool pool({.workers = 2});
    const auto results = pool.map(std::vector<int>{0, 1, 2, 3}, print_from_task);
    if (results != std::vector<int>{0, 1, 2, 3}) ::_exit(3);
  }
  std::printf("parent printf at the end\n");
  std::cout << "parent cout at the end\n";
  std::cout.flush();
  std::fflush(nullptr);
}

// How many times each line of `text` occurs.
std::map<std::string, int> count_lines(const std::string& text) {
  std::map<std::string, int> counts;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) ++counts[line];
  return counts;
}

void check_each_line_once(const std::string& text) {
  const auto counts = count_lines(text);
  std::size_t total = 0;
  for (const auto& [line, n] : counts) total += static_cast<std::size_t>(n);
  CAPTURE(text);
  for (const std::string& line : expected_lines()) {
    CAPTURE(line);
    CHECK(counts.count(line) == 1);
    if (counts.count(line)) CHECK(counts.at(line) == 1);
  }
  CHECK(total == expected_lines().size());
}

// A temporary file, removed when destroyed.
struct TemporaryFile {
  std::string path;
  int fd;
  TemporaryFile() {
    char name[] = "/tmp/procshare-process-test-XXXXXX";
    fd = ::mkstemp(name);
    if (fd < 0) std::abort();
    path = name;
  }
  ~TemporaryFile() {
    ::close(fd);
    ::unlink(path.c_str());
  }
  std::string read() const {
    std::ifstream in(path);
    std::stringstream all;
    all << in.rdbuf();
    return all.str();
  }
};

}  // namespace

TEST_SUITE("process") {

TEST_CASE("lines printed by Process children and Pool workers appear once each in a file") {
  for (const bool own_cout_buffer : {false, true}) {
    CAPTURE(own_cout_buffer);
    TemporaryFile file;
    const pid_t writer = run_child([&] { print_from_children(file.fd, own_cout_buffer); });
    REQUIRE(wait_child(writer).ok());
    check_each_line_once(file.read());
  }
}

TEST_CASE("lines printed by Process children and Pool workers appear once each in a pipe") {
  for (const bool own_cout_buffer : {false, true}) {
    CAPTURE(own_cout_buffer);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t writer = run_child([&] {
      ::close(fds[0]);
      print_from_children(fds[1], own_cout_buffer);
    });
    ::close(fds[1]);
    std::string text;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    for (;;) {  // until every writer (children, pool workers) has closed the pipe
      pollfd readable{fds[0], POLLIN, 0};
      if (::poll(&readable, 1, 100) == 1) {
        char buffer[4096];
        const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
        if (n <= 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
      }
      if (std::chrono::steady_clock::now() > deadline) break;
    }
    ::close(fds[0]);
    REQUIRE(wait_child(writer).ok());
    check_each_line_once(text);
  }
}

TEST_CASE("a pool worker flushes after each task: its line is in the file once get() returns, even after terminate()") {
  TemporaryFile file;
  const pid_t writer = run_child([&] {
    if (::dup2(file.fd, STDOUT_FILENO) < 0) std::abort();
    std::ios::sync_with_stdio(false);
    Pool pool({.workers = 1});
    if (pool.submit(print_from_task, 7).get() != 7) ::_exit(3);
    const auto counts = count_lines(file.read());
    if (!counts.count("pool task 7 printf") || !counts.count("pool task 7 cout")) ::_exit(4);
    pool.terminate();  // SIGKILLs the worker: what it had not written is lost
  });
  const auto status = wait_child(writer);
  CHECK(status.exited);
  CHECK(status.code == 0);  // 4: the task's lines were still in the worker's buffers
  auto counts = count_lines(file.read());
  CHECK(counts["pool task 7 printf"] == 1);
  CHECK(counts["pool task 7 cout"] == 1);
}

}  // TEST_SUITE
