// Process: runs a callable with arguments in a forked child process (Python's
// multiprocessing.Process), and reports how it ended.
//
// Ownership: a Process owns its child. It is move-only; the process that started the
//   child is the only one that may join, signal or reap it (a forked copy of the object
//   does nothing, in its destructor too). Use one Process from one thread at a time.
// Starting: `Process p(f, args...)` makes a process that is not started yet, as Python's
//   Process(target=f, args=...); `p.start()` forks. `Process::spawn(f, args...)` does both.
//   start() flushes stdout, stderr and std::cout / std::cerr / std::clog first, so nothing
//   the parent buffered is printed twice. It refuses (InvalidArgument) to fork a process
//   that runs other threads, unless ProcessOptions::allow_threads, as Pool does.
// What the child sees: a fork of the parent at start(): the callable and its arguments
//   are copies made at construction, so lambdas may capture anything (by value: a
//   reference captures the parent's object as it was at the fork, and the child's writes
//   to it stay in the child). Shared state travels through procshare objects in a
//   Segment (handles work in the child as they are). This differs from Pool, whose tasks
//   must be function pointers or capture-less lambdas with transportable arguments,
//   because a pool worker was forked before the task existed. Signal dispositions are
//   inherited too (as with fork() and Python): a child that inherited a SIGTERM handler
//   may outlive terminate().
// The child's end: it returns from the callable (exit code 0), throws (exit code 1, and
//   join() throws TaskError with the exception's type, message and the child's pid), or
//   calls exit()/_exit() itself (that code). After the callable, the child flushes the
//   standard streams and leaves with _exit(): the parent's atexit handlers and static
//   destructors never run in it, and no exception ever escapes it. An exception's type and
//   message travel in a private shared anonymous page (nothing in /dev/shm, nothing left
//   behind if the child is killed); a message is cut to its first ~4 KiB.
// Daemons: ProcessOptions::daemon makes the child die with its parent (PR_SET_PDEATHSIG
//   with SIGKILL, then a getppid() re-check in case the parent died first), however the
//   parent dies. The signal is tied to the thread that called start(): if that thread
//   ends while the process goes on, the daemon child is killed too.
// Destruction: destroying a Process whose child still runs waits for a non-daemon child
//   to end (as Python waits for non-daemon children at exit, and std::jthread joins), and
//   SIGKILLs and reaps a daemon child; either way no zombie is left. Call terminate() or
//   kill() first not to wait. If the callable threw and no join() reported it, the
//   destructor prints the failure on stderr (it never throws).
// Reaping: the Process reaps its child itself (waitpid on its pid). If other code reaps
//   it first (wait(), waitpid(-1), SIGCHLD set to SIG_IGN), its exit status is lost:
//   the Process then reports exitcode() 0 or 1 if the child recorded that it returned or
//   threw, and nullopt otherwise.
// Errors: InvalidArgument for start() twice, join()/join_for()/terminate()/kill() before
//   start(), any call but name()/pid() from another process than the one that started
//   it, or other threads without allow_threads; Error when fork() fails; TaskError from
//   join()/join_for() when the callable threw.
#pragma once

#include <procshare/detail/config.hpp>
#include <procshare/error.hpp>
#include <procshare/futex.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace procshare {

// Options for Process.
struct ProcessOptions {
  // The process's name, for messages; "" means "Process-N" (N counts the Process objects
  // made in this process, from 1, as in Python).
  std::string name{};
  // The child dies with its parent (see Daemons at the top), and the destructor kills it
  // instead of waiting for it.
  bool daemon = false;
  // Fork even though the process runs other threads (only what fork() copies is safe).
  bool allow_threads = false;
};

namespace detail {

// The callable and its arguments, copied when the Process is made; run in the child.
struct ProcessTarget {
  virtual ~ProcessTarget() = default;
  virtual void run() = 0;
};

template <class F, class... Args> struct ProcessTargetOf final : ProcessTarget {
  std::tuple<F, Args...> call;
  template <class G, class... A>
  explicit ProcessTargetOf(G&& f, A&&... args) : call(std::forward<G>(f), std::forward<A>(args)...) {}
  void run() override {
    std::apply([](F& f, Args&... args) { std::invoke(f, args...); }, call);
  }
};

class ProcessState;

}  // namespace detail

// Process: see the top of this file.
class PROCSHARE_API Process {
public:
  // A process that will run f(args...) (copies of them) once start() is called; not
  // started yet. Default options: named "Process-N", not a daemon.
  template <class F, class... Args>
    requires(!std::is_same_v<std::remove_cvref_t<F>, ProcessOptions> &&
             std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>)
  explicit Process(F&& f, Args&&... args) : Process(ProcessOptions{}, std::forward<F>(f), std::forward<Args>(args)...) {}
  // The same, with `options` (name, daemon, allow_threads).
  template <class F, class... Args>
    requires std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>
  Process(ProcessOptions options, F&& f, Args&&... args)
      : Process(std::move(options),
                std::make_unique<detail::ProcessTargetOf<std::decay_t<F>, std::decay_t<Args>...>>(
                    std::forward<F>(f), std::forward<Args>(args)...)) {}

  // Makes a Process and starts it: Process::spawn(f, args...) is Process(f, args...)
  // then start(). Throws as start().
  template <class F, class... Args>
    requires(!std::is_same_v<std::remove_cvref_t<F>, ProcessOptions>)
  static Process spawn(F&& f, Args&&... args) {
    Process process(std::forward<F>(f), std::forward<Args>(args)...);
    process.start();
    return process;
  }
  // The same, with `options`.
  template <class F, class... Args>
  static Process spawn(ProcessOptions options, F&& f, Args&&... args) {
    Process process(std::move(options), std::forward<F>(f), std::forward<Args>(args)...);
    process.start();
    return process;
  }

  // If the child still runs: waits for it (non-daemon) or kills it (daemon), and reaps
  // it; in the starting process only. Never throws (see Destruction at the top).
  ~Process();
  // Moves the child and its state; the moved-from Process may only be destroyed or
  // assigned to.
  Process(Process&&) noexcept;
  // Ends this Process's own child first, as the destructor does, then takes `other`'s.
  Process& operator=(Process&&) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Flushes the standard streams and forks the child, which runs the callable. Throws
  // InvalidArgument if it was started already or other threads run (without
  // allow_threads), Error if fork() fails.
  void start();
  // Waits for the child to end and reaps it. Throws TaskError if the callable threw (each
  // time it is called), InvalidArgument before start(). A child killed by a signal is
  // not an error: see exitcode().
  void join();
  // Waits at most `timeout` for the child to end; returns whether it has (and reaped it).
  // Throws as join().
  template <class Rep, class Period> bool join_for(const std::chrono::duration<Rep, Period>& timeout) {
    return join_until(detail::deadline_after(timeout));
  }
  // Whether the child was started and has not ended (reaps it if it has). Never blocks.
  bool is_alive();
  // How the child ended: nullopt if not started or still running; 0 if the callable
  // returned; 1 if it threw; N if it called exit(N); -S if signal S killed it (Python's
  // convention, e.g. -9 for SIGKILL). Never blocks (reaps the child if it has ended).
  std::optional<int> exitcode();
  // The child's pid; 0 before start().
  int pid() const noexcept;
  // The name: ProcessOptions::name, or "Process-N".
  const std::string& name() const noexcept;
  // Renames the process (messages use the new name).
  void set_name(std::string name);
  // Whether it is a daemon (ProcessOptions::daemon).
  bool daemon() const noexcept;
  // Sends SIGTERM to the child if it is still running (else does nothing): exitcode()
  // becomes -SIGTERM unless the child handles the signal. Throws InvalidArgument before
  // start().
  void terminate();
  // Sends SIGKILL likewise: exitcode() becomes -SIGKILL. Throws InvalidArgument before
  // start().
  void kill();

private:
  Process(ProcessOptions options, std::unique_ptr<detail::ProcessTarget> target);
  bool join_until(detail::Deadline deadline);

  std::unique_ptr<detail::ProcessState> state_;
};

}  // namespace procshare
