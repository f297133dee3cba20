// The shared benchmark harness: see harness.hpp.
#include "harness.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

namespace bench {

volatile sig_atomic_t live_children[max_children] = {};

namespace {

char shm_paths[max_paths][160];  // "/dev/shm/<name>", or "" (set before any signal)
pid_t parent = 0;
const char* program = "bench";
bool sigpipe_ignored = false;

constexpr int fatal_signals[] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void on_fatal_signal(int signal_number) {
  if (::getpid() == parent) {
    for (const sig_atomic_t target : live_children)
      if (target != 0) ::kill(static_cast<pid_t>(target), SIGKILL);
    for (const char* path : shm_paths)
      if (path[0] != '\0') ::unlink(path);
  }
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number);
}

}  // namespace

int run_main(int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "\n%s: FAILED: %s\n", program, error.what());
    return 1;
  }
}

void install_signal_handlers(const char* program_name, bool ignore_sigpipe) {
  parent = ::getpid();
  program = program_name;
  sigpipe_ignored = ignore_sigpipe;
  for (const int s : fatal_signals) ::signal(s, on_fatal_signal);
  if (ignore_sigpipe) ::signal(SIGPIPE, SIG_IGN);
}

void reset_signal_handlers() {
  for (const int s : fatal_signals) ::signal(s, SIG_DFL);
  if (sigpipe_ignored) ::signal(SIGPIPE, SIG_DFL);
}

pid_t parent_pid() { return parent; }

const char* program_name() { return program; }

void remember_path(int slot, const std::string& name) {
  char* path = shm_paths[slot];
  path[0] = '\0';  // never half a path in the handler's view
  if (name.empty()) return;
  const std::string text = fmt::format("/dev/shm/{}", name);
  const std::size_t n = std::min(text.size(), sizeof shm_paths[slot] - 1);
  std::memcpy(path + 1, text.data() + 1, n - 1);
  path[n] = '\0';
  std::atomic_signal_fence(std::memory_order_seq_cst);
  path[0] = text[0];  // last: the handler sees the whole path or none
}

const char* remembered_path(int slot) { return shm_paths[slot]; }

// ---------------------------------------------------------------------------------------

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

std::int64_t cpu_now_ns() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("ended with wait status {}", status);
}

std::optional<int> wait_until(pid_t pid, Clock::time_point deadline) {
  const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
  if (pidfd >= 0) {
    for (;;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd watched{static_cast<int>(pidfd), POLLIN, 0};
      const int ready = ::poll(&watched, 1, static_cast<int>(std::max<long>(0, left.count())));
      if (ready > 0) break;
      if (ready == 0) {
        ::close(static_cast<int>(pidfd));
        return std::nullopt;
      }
      if (errno != EINTR) break;  // fall back to a plain waitpid
    }
    ::close(static_cast<int>(pidfd));
  } else {
    // No pidfd here: poll the child every millisecond.
    for (;;) {
      int status = 0;
      const pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done == pid) return status;
      if (done < 0 && errno != EINTR) fail("waitpid: {}", std::strerror(errno));
      if (Clock::now() >= deadline) return std::nullopt;
      ::usleep(1000);
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waitpid: {}", std::strerror(errno));
  return status;
}

void kill_workers(const std::vector<pid_t>& pids) {
  for (const pid_t pid : pids) {
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  }
  for (auto& slot : live_children) slot = 0;
}

pid_t fork_child(std::string_view what, const std::function<void()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid > 0) return pid;
  int code = 0;
  try {
    reset_signal_handlers();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(3);
    body();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s (pid %d): %s\n", program, std::string(what).c_str(),
                 static_cast<int>(::getpid()), error.what());
    code = 1;
  } catch (...) {
    code = 1;
  }
  ::_exit(code);
}

// ---------------------------------------------------------------------------------------

bool python_available(const char* modules) {
  const std::string import = fmt::format("import {}", modules);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid == 0) {
    reset_signal_handlers();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, STDOUT_FILENO);
      ::dup2(null, STDERR_FILENO);
    }
    ::execlp("python3", "python3", "-c", import.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  live_children[python_slot] = pid;
  const std::optional<int> status = wait_until(pid, Clock::now() + std::chrono::seconds(60));
  if (!status) {
    ::kill(pid, SIGKILL);
    wait_until(pid, Clock::now() + std::chrono::seconds(5));
  }
  live_children[python_slot] = 0;
  return status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
}

std::string run_python(const char* script, const std::vector<std::string>& args,
                       std::string_view what) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) fail("pipe: {}", std::strerror(errno));
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid == 0) {
    reset_signal_handlers();
    ::setpgid(0, 0);  // its own group, so that python's workers can be killed with it
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(out[1], STDOUT_FILENO);
    std::vector<char*> argv = {const_cast<char*>("python3"), const_cast<char*>("-c"),
                               const_cast<char*>(script)};
    for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    ::execvp("python3", argv.data());
    std::fprintf(stderr, "%s: cannot run python3: %s\n", program, std::strerror(errno));
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here, so that the group exists before any kill
  live_children[python_slot] = -pid;  // the signal handler kills the whole group
  ::close(out[1]);
  const auto deadline = Clock::now() + run_timeout;
  auto give_up = [&] {
    ::close(out[0]);
    ::kill(-pid, SIGKILL);
    int ignored = 0;
    while (::waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {}
    live_children[python_slot] = 0;
    fail("{}: no result within {} s", what, run_timeout.count());
  };
  std::string output;
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) give_up();
    pollfd watched{out[0], POLLIN, 0};
    const int ready = ::poll(&watched, 1, static_cast<int>(std::min<long>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) fail("poll: {}", std::strerror(errno));
    if (ready <= 0) continue;
    char buffer[4096];
    const ssize_t got = ::read(out[0], buffer, sizeof buffer);
    if (got > 0) {
      output.append(buffer, static_cast<std::size_t>(got));
    } else if (got == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(out[0]);
  const std::optional<int> status = wait_until(pid, deadline);
  if (!status) give_up();
  ::kill(-pid, SIGKILL);  // any stray python worker
  live_children[python_slot] = 0;
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
    fail("{} {}", what, describe_status(*status));
  return output;
}

std::vector<double> parse_numbers(const std::string& output) {
  std::vector<double> numbers;
  const char* cursor = output.c_str();
  for (;;) {
    char* end = nullptr;
    const double value = std::strtod(cursor, &end);
    if (end == cursor) break;
    numbers.push_back(value);
    cursor = end;
  }
  return numbers;
}

// ---------------------------------------------------------------------------------------

CommonOptions parse_common_options(int argc, char** argv, const char* usage, double max_scale) {
  CommonOptions options;
  bool rounds_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--quick") {
      options.quick = true;
      if (!rounds_given) options.rounds = 5;
    } else if (arg.starts_with("--scale=")) {
      char* end = nullptr;
      const double value = std::strtod(argv[i] + 8, &end);
      if (end == argv[i] + 8 || *end != '\0' || !(value > 0) || !std::isfinite(value) ||
          (max_scale > 0 && value > max_scale)) {
        if (max_scale > 0)
          fail("--scale wants a positive number up to {}, got '{}'", max_scale, argv[i] + 8);
        fail("--scale wants a positive number, got '{}'", argv[i] + 8);
      }
      options.scale *= value;
    } else if (arg.starts_with("--rounds=")) {
      char* end = nullptr;
      const long rounds = std::strtol(argv[i] + 9, &end, 10);
      if (end == argv[i] + 9 || *end != '\0' || rounds < 5 || rounds > 1000)
        fail("--rounds wants a whole number from 5 to 1000, got '{}'", argv[i] + 9);
      options.rounds = static_cast<int>(rounds);
      rounds_given = true;
    } else if (arg == "--no-python") {
      options.python = false;
    } else if (arg == "--help" || arg == "-h") {
      std::puts(usage);
      std::exit(0);
    } else {
      fail("unknown argument '{}' (try --help)", arg);
    }
  }
  return options;
}

// ---------------------------------------------------------------------------------------

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100 * static_cast<double>(values.size())));
  return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

std::string rate_text(double rate) {
  if (rate >= 1e6) return fmt::format("{:.2f} M/s", rate / 1e6);
  return fmt::format("{:.1f} k/s", rate / 1e3);
}

std::string ratio_text(double ratio) {
  return ratio >= 10 ? fmt::format("{:.0f}x", ratio) : fmt::format("{:.2f}x", ratio);
}

Comparison compare(const std::vector<double>& ours, const std::vector<double>& baseline) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < ours.size() && i < baseline.size(); ++i)
    ratios.push_back(ours[i] / baseline[i]);
  if (ratios.empty()) return {0, 0, 0};
  const auto [low, high] = std::minmax_element(ratios.begin(), ratios.end());
  return {median(ratios), *low, *high};
}

double run_rounds(int rounds, const std::function<void(int)>& round) {
  const bool progress = ::isatty(STDERR_FILENO) != 0;
  const auto started = Clock::now();
  for (int r = 0; r < rounds; ++r) {
    round(r);
    if (progress) std::fprintf(stderr, "\rround %d/%d done", r + 1, rounds);
  }
  if (progress) std::fprintf(stderr, "\r%40s\r", "");
  return seconds_since(started);
}

// ---------------------------------------------------------------------------------------

Timing run_timed_workers(StartLine& line, int processes, std::string_view what,
                         const std::function<void(int)>& work) {
  line.ready.store(0);
  line.go.store(0);
  for (auto& end : line.end_ns) end.store(0);
  for (auto& cpu : line.cpu_ns) cpu.store(0);

  std::vector<pid_t> pids;
  for (int i = 0; i < processes; ++i) {
    pids.push_back(fork_child(fmt::format("worker ({})", what), [&line, &work, i] {
      line.ready.fetch_add(1);
      while (line.go.load(std::memory_order_acquire) == 0) ::sched_yield();
      const std::int64_t cpu_start = cpu_now_ns();
      work(i);
      line.end_ns[i].store(now_ns());
      line.cpu_ns[i].store(cpu_now_ns() - cpu_start);
    }));
    live_children[i] = pids.back();
  }
  const auto deadline = Clock::now() + run_timeout;
  while (line.ready.load() < processes) {
    for (const pid_t pid : pids) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        std::erase(pids, pid);
        kill_workers(pids);
        fail("{} worker {} {} before starting", what, pid, describe_status(status));
      }
    }
    if (Clock::now() > deadline) {
      kill_workers(pids);
      fail("{}: workers did not start within {} s", what, run_timeout.count());
    }
    ::sched_yield();
  }
  const std::int64_t start = now_ns();
  line.go.store(1, std::memory_order_release);

  std::string failures;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    const std::optional<int> status = wait_until(pids[i], deadline);
    if (!status) {
      kill_workers(pids);
      fail("{} with {} processes: no result within {} s (hung?)", what, processes,
           run_timeout.count());
    }
    live_children[i] = 0;
    if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
      failures += fmt::format(" worker {} {};", pids[i], describe_status(*status));
  }
  if (!failures.empty()) fail("{} with {} processes:{}", what, processes, failures);

  std::int64_t end = 0;
  std::int64_t cpu = 0;
  for (int i = 0; i < processes; ++i) {
    end = std::max(end, line.end_ns[i].load());
    cpu += line.cpu_ns[i].load();
  }
  if (end <= start) fail("{}: a worker did not record its end time", what);
  return {static_cast<double>(end - start) * 1e-9, static_cast<double>(cpu) * 1e-9};
}

void Pair::calibrate(double run_seconds) {
  std::int64_t n = 10'000;
  for (;;) {
    const RunResult our_run = ours(n);
    const RunResult baseline_run = baseline(n);
    const double seconds = std::max(our_run.seconds, baseline_run.seconds);
    // Short runs overstate 2-process rates (the second worker may start after the first
    // is done), so the run measured here must itself be long enough to overlap.
    if (seconds >= 0.1 || n >= (std::int64_t{1} << 40)) {
      k = std::max<std::int64_t>(1000,
                                 std::llround(static_cast<double>(n) * run_seconds / seconds));
      return;
    }
    n *= 4;
  }
}

void Pair::run_round(bool baseline_first) {
  if (baseline_first) baseline_series.add(baseline(k));
  ours_series.add(ours(k));
  if (!baseline_first) baseline_series.add(baseline(k));
}

std::vector<std::string> print_rate_table(const std::vector<RateRow>& rows) {
  fmt::print("\n{:<42} {:>12} {:>12} {:>8}  {:<15} {}\n", "benchmark", "procshare", "baseline",
             "ratio", "(round range)", "target");
  std::vector<std::string> verdicts;
  for (const RateRow& row : rows) {
    const Comparison c = compare(row.ours->rates, row.baseline->rates);
    const std::string target =
        row.target > 0 ? fmt::format(">= {}", ratio_text(row.target)) : std::string("-");
    fmt::print("{:<42} {:>12} {:>12} {:>8}  {:<15} {}\n", row.name,
               rate_text(row.ours->median_rate()), rate_text(row.baseline->median_rate()),
               ratio_text(c.ratio), fmt::format("({}-{})", ratio_text(c.low), ratio_text(c.high)),
               target);
    if (row.target > 0) {
      const bool met = c.ratio >= row.target;
      verdicts.push_back(fmt::format(
          "{:<42} {} ({} vs target {}{})", row.name, met ? "met" : "NOT met",
          ratio_text(c.ratio), target,
          met ? "" : fmt::format(", {:.0f}% short", 100 * (1 - c.ratio / row.target))));
    }
  }
  return verdicts;
}

}  // namespace bench
