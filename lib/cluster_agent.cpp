// Cluster, a host's agent (detail/cluster_agent.hpp): the board the host and its agent
// share, forking the agent, and the agent's whole life. Shared memory it writes: the
// board, and (through stop_local_job) the stop flags of the host's pool jobs.
#include "detail/cluster_agent.hpp"

#include "detail/cluster_scripts.hpp"
#include "detail/pool_core.hpp"
#include "detail/streams.hpp"

#include <fmt/format.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <new>

namespace procshare::detail {

namespace {

constexpr std::uint64_t mark_bits = 3;

std::uint64_t mark_of(std::uint64_t state) { return state & mark_bits; }

void copy_text(char (&to)[1024], std::string_view text) {
  const std::size_t n = std::min(text.size(), sizeof to - 1);
  std::memcpy(to, text.data(), n);
  to[n] = '\0';
}

// Marks `mark` every running entry for which `pick(first item)` holds, and stops its
// local job.
template <class Pick> void mark_running(AgentBoard& board, PoolCore& pool, AgentMark mark, const Pick& pick) {
  for (AgentBoard::Slot& slot : board.slot) {
    std::uint64_t state = slot.state.load();
    if (mark_of(state) != static_cast<std::uint64_t>(AgentMark::running)) continue;
    const std::uint64_t job = slot.job.load();
    if (!pick(slot.first.load())) continue;
    // (read while the entry still had this generation: a new job in the slot fails the
    // exchange)
    if (slot.state.compare_exchange_strong(state, (state & ~mark_bits) | static_cast<std::uint64_t>(mark)))
      stop_local_job(pool, job);
  }
}

void stop_all(AgentBoard& board, PoolCore& pool, std::string_view who) {
  copy_text(board.who, who);
  board.stopped.store(1);  // (before the marks: a host that sees a mark finds `who`)
  mark_running(board, pool, AgentMark::stopped, [](std::uint64_t) { return true; });
}

void above_match(AgentBoard& board, PoolCore& pool, std::string_view best) {
  std::uint64_t k = 0;
  if (std::from_chars(best.data(), best.data() + best.size(), k).ec != std::errc{}) return;
  mark_running(board, pool, AgentMark::above_match, [k](std::uint64_t first) { return first > k; });
}

// The agent's whole life; never returns.
[[noreturn]] void agent_main(AgentBoard& board, const EngineOptions& options, const std::vector<std::string>& keys,
                             const std::string& epoch, const std::string& host, PoolCore& pool,
                             pid_t parent) noexcept {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(0);  // the host died before prctl
  ::signal(SIGINT, SIG_IGN);              // (a terminal's ^C is the host's to handle; it dies with it)
  try {
    const std::string& meta = keys.at(0);
    Engine listen(options);
    listen.command({"SUBSCRIBE", meta.substr(0, meta.size() - 4) + "ctl"});
    // (after the subscription: a stop or match from now on comes as a message too)
    Engine calls(options);
    // The stop came: the host's chunks are stopped; then the engine hears that this host
    // knows (once: a stop is the job's end).
    const auto stopped = [&](std::string_view who) {
      stop_all(board, pool, who);
      static const std::string seen = std::string(scripts::prelude) + scripts::seen;
      calls.eval(seen, keys, {epoch, host});
      ::_exit(0);
    };
    {
      const EngineReply m = calls.command({"HMGET", meta, "state", "stop", "best"});
      const auto text = [&](std::size_t i) { return i < m.elements.size() ? m.elements[i].text : std::string(); };
      if (text(0) == "stopped") stopped(text(1));
      if (text(0) == "done") ::_exit(0);
      if (!text(2).empty()) above_match(board, pool, text(2));
    }
    for (;;) {
      const auto message = listen.receive(std::chrono::steady_clock::now() + std::chrono::seconds(1));
      if (!message) {
        if (::getppid() != parent) ::_exit(0);
        continue;
      }
      if (message->elements.size() != 3 || message->elements[0].text != "message") continue;
      const std::string_view text = message->elements[2].text;
      if (text == "done") ::_exit(0);
      if (text.rfind("stop ", 0) == 0) stopped(text.substr(5));
      if (text.rfind("best ", 0) == 0) above_match(board, pool, text.substr(5));
    }
  } catch (const std::exception& e) {
    copy_text(board.why, e.what());
  } catch (...) {
    copy_text(board.why, "an unknown exception");
  }
  board.failed.store(1);
  ::_exit(2);
}

}  // namespace

Agent::Agent() : creator_(::getpid()) {
  void* page = ::mmap(nullptr, sizeof(AgentBoard), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED)
    throw Error("", "cluster agent", fmt::format("cannot map its board: {}", std::strerror(errno)));
  board_ = new (page) AgentBoard{};  // (zeroed: every entry free)
}

Agent::~Agent() {
  if (pid_ > 0 && ::getpid() == creator_) {
    // An agent that brought a stop tells the engine so, then exits: given up to 2 s for it
    // (what a stop from procshare-ctl waits for); any other is killed at once.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (stopped() && ::waitpid(pid_, nullptr, WNOHANG) == 0 && std::chrono::steady_clock::now() < until)
      ::usleep(1000);
    ::kill(pid_, SIGKILL);  // (reaped already: a zombie is not reused before waitpid; ESRCH)
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  ::munmap(board_, sizeof(AgentBoard));
}

void Agent::start(const EngineOptions& options, const std::vector<std::string>& keys, const std::string& epoch,
                  const std::string& host, std::shared_ptr<PoolCore> pool) {
  if (pid_ > 0) return;
  const pid_t parent = ::getpid();
  flush_standard_streams();  // nothing buffered may be printed twice
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("", "cluster agent", fmt::format("cannot fork: {}", std::strerror(errno)));
  if (pid == 0) agent_main(*board_, options, keys, epoch, host, *pool, parent);
  pid_ = pid;
}

int Agent::enter(std::uint64_t job, std::uint64_t first) {
  for (int i = 0; i < AgentBoard::slots; ++i) {
    AgentBoard::Slot& slot = board_->slot[i];
    if (slot.state.load() != 0) continue;
    slot.job.store(job);
    slot.first.store(first);
    slot.state.store((++generation_ << 2) | static_cast<std::uint64_t>(AgentMark::running));
    return i;
  }
  return -1;
}

AgentMark Agent::leave(int slot) {
  if (slot < 0) return AgentMark::running;
  return static_cast<AgentMark>(mark_of(board_->slot[slot].state.exchange(0)));
}

bool Agent::stopped() const noexcept { return board_->stopped.load() != 0; }

std::string Agent::who() const { return board_->who; }

}  // namespace procshare::detail
