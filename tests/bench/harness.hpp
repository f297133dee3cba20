// The benchmark harness shared by value_bench, sync_bench, containers_bench and pool_bench:
// failure reporting, clean-up on a fatal signal (shared-memory files removed, children
// killed), forked children, waiting with a deadline, the Python runner, the common command
// line (--quick, --scale, --rounds, --no-python), statistics (medians, percentiles,
// per-round ratios), interleaved rounds with a progress line, and the "procshare vs
// baseline" rate table. A benchmark program brings only its workloads and its report.
#pragma once

#include <fmt/format.h>

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

// How long one run may take before its children are killed and the benchmark fails.
inline constexpr std::chrono::seconds run_timeout{120};

// ---------------------------------------------------------------------------------------
// Failure: a message on stderr and a non-zero exit, after the shared memory has been
// removed (by the program's destructors on the way out of run()).

struct BenchFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw BenchFailure(fmt::format(format, std::forward<Args>(args)...));
}

// Runs `run` as the program's body: returns its status, or prints
// "\n<program>: FAILED: <what>" on stderr and returns 1 when it throws.
int run_main(int (*run)(int, char**), int argc, char** argv);

// ---------------------------------------------------------------------------------------
// Signals: on SIGINT, SIGTERM or SIGHUP the parent kills every registered child and
// removes every registered shared-memory file, then dies of the signal.

// Kill targets of running children (a negative pid names a process group), for the signal
// handler; each program assigns its own slots below python_slot.
inline constexpr int max_children = 8;
extern volatile sig_atomic_t live_children[max_children];
// The slot the Python runner and python_available() use.
inline constexpr int python_slot = max_children - 1;
// How many shared-memory names the handler can remove.
inline constexpr int max_paths = 4;

// Records this process as the parent and the program's name (for messages), and installs
// the handlers. `ignore_sigpipe`: a dead pipe reader is an error from write(), not a death.
void install_signal_handlers(const char* program, bool ignore_sigpipe = false);
// In a forked child: the default handlers again.
void reset_signal_handlers();
pid_t parent_pid();
const char* program_name();

// Records (or, with "", forgets) the shared-memory `name` in `slot` for the signal handler,
// as "/dev/shm/<name>"; the handler sees the whole path or none.
void remember_path(int slot, const std::string& name);
// The path remembered in `slot` ("" if none).
const char* remembered_path(int slot);

// ---------------------------------------------------------------------------------------
// Clocks and processes.

std::int64_t now_ns();      // steady_clock, the same clock in every process
std::int64_t cpu_now_ns();  // CPU time this process has used
double seconds_since(Clock::time_point start);

std::string describe_status(int status);

// Waits for `pid` until `deadline`; returns its wait status, or nullopt on timeout.
std::optional<int> wait_until(pid_t pid, Clock::time_point deadline);

// Kills and reaps `pids`, and clears every live_children slot.
void kill_workers(const std::vector<pid_t>& pids);

// Forks a child that runs body() and _exits (0, or 1 with "<program>: <what> (pid N):
// <message>" on stderr). It dies with the parent (PR_SET_PDEATHSIG) and never returns
// from main, so never runs the parent's destructors.
pid_t fork_child(std::string_view what, const std::function<void()>& body);

// ---------------------------------------------------------------------------------------
// Python.

// Whether python3 runs here and can import `modules` (fork + exec rather than
// std::system, which would ignore SIGINT meanwhile).
bool python_available(const char* modules = "multiprocessing");

// Runs python3 -c `script` `args...` in its own process group (killed with it, and by the
// signal handler); returns what it printed on stdout. Fails ("<what>: ...") if python
// fails or prints nothing within run_timeout.
std::string run_python(const char* script, const std::vector<std::string>& args,
                       std::string_view what);

// The numbers in `output`, in order (none if it starts with something else).
std::vector<double> parse_numbers(const std::string& output);

// ---------------------------------------------------------------------------------------
// The command line every benchmark takes.

struct CommonOptions {
  int rounds = 7;
  double scale = 1.0;  // --scale=F (--quick is not folded in: see quick)
  bool quick = false;
  bool python = true;
};

// Parses --quick, --scale=F, --rounds=N (5 to 1000; default 7, 5 with --quick) and
// --no-python; --help prints `usage` and exits. `max_scale` > 0 bounds --scale.
CommonOptions parse_common_options(int argc, char** argv, const char* usage,
                                   double max_scale = 0);

// ---------------------------------------------------------------------------------------
// Statistics and text.

double median(std::vector<double> values);                // 0 for none
double percentile(std::vector<double> values, double p);  // nearest rank; 0 for none
std::string rate_text(double rate);
std::string ratio_text(double ratio);

// A comparison: the median of the per-round ratios ours[i] / baseline[i], and its range.
struct Comparison {
  double ratio, low, high;
};
Comparison compare(const std::vector<double>& ours, const std::vector<double>& baseline);

// Runs `round(r)` for r in [0, rounds), with a progress line on a terminal; returns the
// seconds the rounds took.
double run_rounds(int rounds, const std::function<void(int)>& round);

// ---------------------------------------------------------------------------------------
// Timed worker runs: forked workers announce they are ready and spin until the parent
// takes the start time and raises the go flag; each stores its end time and the CPU time
// it spent, and the run lasts from the start to the last end.

inline constexpr int max_workers = 2;

// Lives in an anonymous MAP_SHARED mapping made before any fork.
struct StartLine {
  alignas(64) std::atomic<int> ready;  // workers that are waiting for go
  alignas(64) std::atomic<int> go;     // 1: start now
  alignas(64) std::atomic<std::int64_t> end_ns[max_workers];  // steady_clock, per worker
  std::atomic<std::int64_t> cpu_ns[max_workers];  // CPU time each worker spent after go
};

// What one run measured.
struct RunResult {
  double rate;         // operations per second, all workers together
  double seconds;      // from go to the last worker's end
  double parallelism;  // the workers' CPU time over the wall time: 2.0 when two workers
                       // ran side by side throughout, 1.0 when they took turns on one CPU
};

// The measured time of a run, before the program checks its result.
struct Timing {
  double seconds;      // from go to the last worker's end
  double cpu_seconds;  // the workers' CPU time after go, together
  RunResult result(double operations) const {
    return {operations / seconds, seconds, cpu_seconds / seconds};
  }
};

// Runs work(index) in `processes` forked workers started together. Fails ("<what> ...")
// if a worker fails, or the run does not end within run_timeout.
Timing run_timed_workers(StartLine& line, int processes, std::string_view what,
                         const std::function<void(int)>& work);

// Rates of one variant over the rounds.
struct Series {
  std::vector<double> rates;
  std::vector<double> parallelism;
  double median_rate() const { return median(rates); }
  double busy() const { return median(parallelism); }
  void add(const RunResult& result) {
    rates.push_back(result.rate);
    parallelism.push_back(result.parallelism);
  }
};

// procshare's variant and the baseline it is compared with, run back to back each round.
struct Pair {
  std::function<RunResult(std::int64_t k)> ours;
  std::function<RunResult(std::int64_t k)> baseline;
  std::int64_t k = 0;  // iterations per worker per run, from calibrate()
  Series ours_series{};
  Series baseline_series{};

  // Chooses k so that the slower of the two runs lasts about `run_seconds` (also warming
  // up the mappings and code: these runs are not counted).
  void calibrate(double run_seconds);
  // One measured run of each, the baseline first when `baseline_first`.
  void run_round(bool baseline_first);
};

// A row of the rate table; a target of 0 is none (otherwise a ratio to reach).
struct RateRow {
  std::string name;
  const Series* ours;
  const Series* baseline;
  double target;
};

// Prints the table of `rows` (rates, ratio, per-round range, target); returns one verdict
// line ("met" or "NOT met") per row with a target.
std::vector<std::string> print_rate_table(const std::vector<RateRow>& rows);

}  // namespace bench
