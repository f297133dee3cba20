// Process: forking the child, running the callable in it, and reaping it (process.hpp).
//
// The child reports how its callable ended through one private page, mapped MAP_SHARED |
// MAP_ANONYMOUS before the fork (so nothing exists in /dev/shm and nothing outlives the
// two processes): it writes an exception's type and message, then one release store of
// `outcome`. The parent reads the page only after it has reaped the child, and unmaps it
// then. The exit status itself comes from waitpid().
#include <procshare/process.hpp>

#include "detail/names.hpp"
#include "detail/streams.hpp"

#include <fmt/format.h>

#include <cxxabi.h>

#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>
#include <typeinfo>

namespace procshare {
namespace detail {
namespace {

// What the child writes for the parent, in a page of its own.
struct OutcomeRecord {
  static constexpr std::uint32_t none = 0;      // the callable has not finished (or exit())
  static constexpr std::uint32_t returned = 1;  // it returned
  static constexpr std::uint32_t threw = 2;     // it threw: type and message below
  std::atomic<std::uint32_t> outcome;
  std::uint32_t type_length;
  std::uint32_t message_length;
  std::uint32_t reserved;
  char text[4096 - 16];  // the type, then the message (cut to fit)
};
static_assert(sizeof(OutcomeRecord) == 4096);

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// Threads of this process: /proc/self/task has one entry per thread, plus "." and "..".
int thread_count() {
  struct stat info {};
  if (::stat("/proc/self/task", &info) != 0 || info.st_nlink < 3) return 1;
  return static_cast<int>(info.st_nlink - 2);
}

// In the child: records an exception (the type, then as much of the message as fits).
void record_failure(OutcomeRecord& record, const char* mangled_type, const char* message) noexcept {
  try {
    const std::string type = demangle(mangled_type);
    const std::size_t type_length = std::min(type.size(), sizeof record.text / 2);
    const std::size_t message_length =
        std::min(std::strlen(message), sizeof record.text - type_length);
    std::memcpy(record.text, type.data(), type_length);
    std::memcpy(record.text + type_length, message, message_length);
    record.type_length = static_cast<std::uint32_t>(type_length);
    record.message_length = static_cast<std::uint32_t>(message_length);
  } catch (...) {  // out of memory demangling: the type stays unknown
    record.type_length = 0;
    record.message_length = 0;
  }
  record.outcome.store(OutcomeRecord::threw, std::memory_order_release);
}

}  // namespace

// A Process's state; lives on the heap so that Process moves cheaply.
class ProcessState {
public:
  enum class Phase { created, running, ended };

  std::unique_ptr<ProcessTarget> target;
  std::string name;
  bool daemon = false;
  bool allow_threads = false;
  pid_t creator = ::getpid();
  Phase phase = Phase::created;
  pid_t pid = 0;
  int pidfd = -1;                     // -1 without pidfd_open (then join_for polls)
  OutcomeRecord* record = nullptr;    // mapped from start() until reaped
  std::optional<int> exitcode;
  bool threw = false;                 // the callable threw: type and message below
  std::string type, message;
  bool reported = false;              // join() has thrown it

  std::string object() const { return fmt::format("process '{}'", name); }

  // Throws InvalidArgument unless this is the starting process and start() was called.
  void require_started(std::string_view call) const {
    if (::getpid() != creator)
      throw InvalidArgument("", object(),
                            fmt::format("{} from process {}: only the process that made it ({}) may "
                                        "call it",
                                        call, ::getpid(), creator));
    if (phase == Phase::created)
      throw InvalidArgument("", object(), fmt::format("{} before start()", call));
  }

  // Reaps the child if it has ended (waiting for it when `block`); returns whether it has.
  bool reap(bool block) {
    if (phase != Phase::running) return phase == Phase::ended;
    int status = 0;
    pid_t r;
    while ((r = ::waitpid(pid, &status, block ? 0 : WNOHANG)) < 0 && errno == EINTR) {
    }
    if (r == 0) return false;
    const std::uint32_t outcome = record->outcome.load(std::memory_order_acquire);
    if (r == pid) {
      if (WIFEXITED(status)) exitcode = WEXITSTATUS(status);
      else if (WIFSIGNALED(status)) exitcode = -WTERMSIG(status);
    } else if (outcome != OutcomeRecord::none) {  // reaped by someone else (ECHILD)
      exitcode = outcome == OutcomeRecord::returned ? 0 : 1;
    }
    if (outcome == OutcomeRecord::threw && exitcode == 1) {
      threw = true;
      type.assign(record->text, std::min<std::size_t>(record->type_length, sizeof record->text));
      if (type.empty()) type = "unknown exception";
      const std::size_t from = std::min<std::size_t>(record->type_length, sizeof record->text);
      message.assign(record->text + from,
                     std::min<std::size_t>(record->message_length, sizeof record->text - from));
    }
    release();
    phase = Phase::ended;
    return true;
  }

  void throw_if_failed() {
    if (!threw) return;
    reported = true;
    throw TaskError(object(), type, message, pid);
  }

  void signal(int number) {
    if (phase != Phase::running) return;  // reaped: the pid may belong to another process now
    if (pidfd >= 0) ::syscall(SYS_pidfd_send_signal, pidfd, number, nullptr, 0);
    else ::kill(pid, number);
  }

  void release() noexcept {
    if (record != nullptr) ::munmap(record, sizeof *record);
    record = nullptr;
    if (pidfd >= 0) ::close(pidfd);
    pidfd = -1;
  }

  ~ProcessState() {
    if (::getpid() != creator) return;  // a forked copy: the child is not ours
    if (phase == Phase::running) {
      if (daemon) signal(SIGKILL);
      reap(true);
    }
    if (threw && !reported)
      std::fprintf(stderr, "procshare: ~Process: %s (nobody called join() to see it)\n",
                   TaskError(object(), type, message, pid).what());
    release();
  }
};

namespace {

// The child's whole life: run the callable, record how it ended, flush, _exit.
[[noreturn]] void child_main(ProcessState& state, pid_t parent) noexcept {
  if (state.daemon) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);  // the parent died before prctl
  }
  const pid_t self = ::getpid();
  OutcomeRecord& record = *state.record;
  int code = 0;
  try {
    state.target->run();
    if (::getpid() == self) record.outcome.store(OutcomeRecord::returned, std::memory_order_release);
  } catch (const std::exception& e) {
    code = 1;
    if (::getpid() == self) record_failure(record, typeid(e).name(), e.what());
  } catch (...) {
    code = 1;
    const std::type_info* type = abi::__cxa_current_exception_type();
    if (::getpid() == self)
      record_failure(record, type ? type->name() : "", "an exception not derived from std::exception");
  }
  // (::getpid() != self: the callable forked, and its copy returned here; it exits the
  // same way but leaves the record to the real child.)
  flush_standard_streams();
  ::_exit(code);
}

}  // namespace
}  // namespace detail

using detail::ProcessState;

Process::Process(ProcessOptions options, std::unique_ptr<detail::ProcessTarget> target)
    : state_(std::make_unique<ProcessState>()) {
  static std::atomic<int> counter{0};
  const int number = ++counter;  // counted even when named, as Python does
  state_->target = std::move(target);
  state_->name = options.name.empty() ? fmt::format("Process-{}", number) : std::move(options.name);
  state_->daemon = options.daemon;
  state_->allow_threads = options.allow_threads;
}

Process::~Process() = default;
Process::Process(Process&&) noexcept = default;
Process& Process::operator=(Process&&) noexcept = default;

void Process::start() {
  if (!state_) throw InvalidArgument("", "process", "start() on a moved-from Process");
  ProcessState& s = *state_;
  if (::getpid() != s.creator)
    throw InvalidArgument("", s.object(),
                          fmt::format("start() from process {}: only the process that made it "
                                      "({}) may start it",
                                      ::getpid(), s.creator));
  if (s.phase != ProcessState::Phase::created)
    throw InvalidArgument("", s.object(),
                          fmt::format("start() called twice: it was started already (pid {})", s.pid));
  if (!s.allow_threads) {
    if (const int threads = detail::thread_count(); threads > 1)
      throw InvalidArgument("", s.object(),
                            fmt::format("this process runs {} threads, and forking a threaded "
                                        "process is unsafe; set ProcessOptions::allow_threads if "
                                        "you know it is fine",
                                        threads));
  }
  void* page = ::mmap(nullptr, sizeof(detail::OutcomeRecord), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED)
    throw Error("", s.object(),
                fmt::format("cannot map the page for its outcome: {}", detail::os_reason(errno)));
  s.record = ::new (page) detail::OutcomeRecord{};
  detail::flush_standard_streams();  // nothing buffered may be printed twice
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int error = errno;
    s.release();
    throw Error("", s.object(), fmt::format("cannot fork: {}", detail::os_reason(error)));
  }
  if (pid == 0) detail::child_main(s, parent);
  s.pid = pid;
  s.pidfd = detail::pidfd_open(pid);
  s.phase = ProcessState::Phase::running;
}

void Process::join() { join_until(detail::no_deadline); }

bool Process::join_until(detail::Deadline deadline) {
  if (!state_) throw InvalidArgument("", "process", "join() on a moved-from Process");
  ProcessState& s = *state_;
  s.require_started("join()");
  if (deadline == detail::no_deadline) {
    s.reap(true);
  } else {
    while (!s.reap(false)) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
      const int wait_ms = static_cast<int>(std::min<std::int64_t>(left.count(), 1000));
      if (s.pidfd >= 0) {
        pollfd exited{s.pidfd, POLLIN, 0};
        ::poll(&exited, 1, wait_ms);  // readable once the child has exited
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(std::min(wait_ms, 1)));
      }
    }
  }
  s.throw_if_failed();
  return true;
}

bool Process::is_alive() {
  if (!state_) return false;
  ProcessState& s = *state_;
  if (s.phase == ProcessState::Phase::created) return false;
  s.require_started("is_alive()");
  return !s.reap(false);
}

std::optional<int> Process::exitcode() {
  if (!state_) return std::nullopt;
  ProcessState& s = *state_;
  if (s.phase == ProcessState::Phase::created) return std::nullopt;
  s.require_started("exitcode()");
  s.reap(false);
  return s.exitcode;
}

int Process::pid() const noexcept { return state_ ? state_->pid : 0; }

const std::string& Process::name() const noexcept {
  static const std::string none;
  return state_ ? state_->name : none;
}

void Process::set_name(std::string name) {
  if (state_) state_->name = std::move(name);
}

bool Process::daemon() const noexcept { return state_ && state_->daemon; }

void Process::terminate() {
  if (!state_) throw InvalidArgument("", "process", "terminate() on a moved-from Process");
  state_->require_started("terminate()");
  state_->signal(SIGTERM);
}

void Process::kill() {
  if (!state_) throw InvalidArgument("", "process", "kill() on a moved-from Process");
  state_->require_started("kill()");
  state_->signal(SIGKILL);
}

}  // namespace procshare
