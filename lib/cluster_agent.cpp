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
#include <optional>
#include <thread>
#include <vector>

namespace procshare::detail {

namespace {

constexpr std::uint64_t mark_bits = 7;

std::uint64_t mark_of(std::uint64_t state) { return state & mark_bits; }
bool is_running(std::uint64_t state) { return mark_of(state) == static_cast<std::uint64_t>(AgentMark::running); }

void copy_text(char (&to)[1024], std::string_view text) {
  const std::size_t n = std::min(text.size(), sizeof to - 1);
  std::memcpy(to, text.data(), n);
  to[n] = '\0';
}

// Marks entry `slot`, read as `state`, `mark`, and stops its local job (`job`, if
// started); false if the entry changed since (settled, or a later chunk).
bool mark(AgentBoard::Slot& slot, std::uint64_t state, std::uint64_t job, PoolCore& pool, AgentMark mark) {
  if (!slot.state.compare_exchange_strong(state, (state & ~mark_bits) | static_cast<std::uint64_t>(mark)))
    return false;
  if (job != 0) stop_local_job(pool, job);
  return true;
}

// Marks `how` every running entry for which `pick(first item)` holds.
template <class Pick> void mark_running(AgentBoard& board, PoolCore& pool, AgentMark how, const Pick& pick) {
  for (AgentBoard::Slot& slot : board.slot) {
    const std::uint64_t state = slot.state.load();
    if (!is_running(state)) continue;
    const std::uint64_t job = slot.job.load();
    // (read while the entry still had this generation: a later chunk fails the exchange)
    if (pick(slot.first.load())) mark(slot, state, job, pool, how);
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

// The agent's side of a job.
struct AgentLoop {
  AgentBoard& board;
  const Agent::Job& job;
  std::optional<Engine> listen, calls;

  [[noreturn]] void leave(int code) {
    board.gone.store(1);
    ::_exit(code);
  }
  // The job is done: every chunk was completed, so whatever the host's pool still
  // computes of it was completed elsewhere.
  [[noreturn]] void done() {
    mark_running(board, *job.pool, AgentMark::lease_lost, [](std::uint64_t) { return true; });
    leave(0);
  }
  // The stop came: the host's chunks are stopped; then the engine hears that this host
  // knows (what a stop from procshare-ctl waits for). A stop is the job's end.
  [[noreturn]] void stopped(std::string_view who) {
    stop_all(board, *job.pool, who);
    try {
      calls->eval(script(scripts::seen), job.keys, {job.epoch, job.host});
    } catch (const Error&) {  // (the engine did not answer: the stop stands all the same)
    }
    leave(0);
  }
  // Subscribes (again, after a broken connection), then reads what a message may have
  // said before.
  void subscribe() {
    listen.reset();
    listen.emplace(job.engine);
    const std::string& meta = job.keys.at(0);
    listen->command({"SUBSCRIBE", meta.substr(0, meta.size() - 4) + "ctl"});
    const EngineReply m = calls->command({"HMGET", meta, "state", "stop", "best", "epoch"});
    const auto text = [&](std::size_t i) { return i < m.elements.size() ? m.elements[i].text : std::string(); };
    if (text(3) != job.epoch) leave(0);  // (the job is lost: the host finds out itself)
    if (text(0) == "stopped") stopped(text(1));
    if (text(0) == "done") done();
    above_match(board, *job.pool, text(2));
  }
  void hear(const EngineReply& message) {
    if (message.elements.size() != 3 || message.elements[0].text != "message") return;
    const std::string_view text = message.elements[2].text;
    if (text == "done") done();
    if (text.rfind("stop ", 0) == 0) stopped(text.substr(5));
    if (text.rfind("best ", 0) == 0) above_match(board, *job.pool, text.substr(5));
  }
  // Renews the leases of the chunks the host's pool still computes, with their progress
  // (and of an option not started yet, while it computes any); stops a chunk whose lease
  // went elsewhere. A chunk computed but not completed (the host's program is busy
  // elsewhere, or frozen) keeps its lease only until it runs out: then it goes to another
  // host, rather than hold the job up for as long as the program is away.
  void beat() {
    struct Held {
      AgentBoard::Slot* slot;
      std::uint64_t state, job;
    };
    std::vector<Held> held;
    std::vector<std::string> args{job.epoch, job.host, std::to_string(job.lease.count())};
    const bool attended = std::chrono::steady_clock::now().time_since_epoch().count() < board.attended_until.load();
    for (AgentBoard::Slot& slot : board.slot) {
      const std::uint64_t state = slot.state.load();
      if (!is_running(state)) continue;
      const std::uint64_t local = slot.job.load();
      const std::uint64_t chunk = slot.chunk.load();
      char token[sizeof slot.token];
      for (int w = 0; w < AgentBoard::token_words; ++w) {
        const std::uint64_t word = slot.token[w].load(std::memory_order_relaxed);
        std::memcpy(token + w * 8, &word, 8);
      }
      if (slot.state.load() != state) continue;  // (changed while read)
      std::optional<std::uint64_t> done = local != 0 ? local_job_computing(*job.pool, local) : 0;
      if (done) slot.reported.store(*done);
      else if (attended) done = slot.reported.load();  // (computed: the host completes it soon)
      else continue;
      held.push_back({&slot, state, local});
      args.push_back(std::to_string(chunk));
      args.push_back(std::string(token, ::strnlen(token, sizeof token)));
      args.push_back(std::to_string(*done));
    }
    // (an option alone: the pool computes nothing of this host's)
    if (std::none_of(held.begin(), held.end(), [](const Held& h) { return h.job != 0; })) return;
    const EngineReply reply = calls->eval(script(scripts::heartbeat), job.keys, args);
    const std::string what = reply.elements.empty() ? "" : reply.elements[0].text;
    if (what == "lost") leave(0);
    if (what == "ended") {
      if (reply.elements.at(1).text == "stopped") stopped(reply.elements.at(2).text);
      done();
    }
    const auto& kept = reply.elements.at(2).elements;
    for (std::size_t i = 0; i < held.size() && i < kept.size(); ++i)
      if (kept[i].integer == 0) mark(*held[i].slot, held[i].state, held[i].job, *job.pool, AgentMark::lease_lost);
    above_match(board, *job.pool, reply.elements.at(1).text);
  }
  // Listens and beats until the job ends or the host dies. The engine unreachable:
  // tried again (100 ms to 1 s apart) for as long as the host lives; the host's own calls
  // give up after its unavailable_after.
  [[noreturn]] void run(pid_t parent) {
    using Clock = std::chrono::steady_clock;
    auto backoff = std::chrono::milliseconds(100);
    auto next_beat = Clock::now();
    for (;;) {
      try {
        if (!calls) calls.emplace(job.engine);
        if (!listen) subscribe();
        const auto message = listen->receive(next_beat);
        if (message) hear(*message);
        if (Clock::now() >= next_beat) {
          next_beat = Clock::now() + job.flush;
          beat();
        }
        backoff = std::chrono::milliseconds(100);
      } catch (const EngineUnavailable&) {
        listen.reset();
        calls.reset();
        if (::getppid() != parent) leave(0);
        std::this_thread::sleep_for(backoff);
        backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
      }
      if (::getppid() != parent) leave(0);
    }
  }
};

// The agent's whole life; never returns.
[[noreturn]] void agent_main(AgentBoard& board, const Agent::Job& job, pid_t parent) noexcept {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(0);  // the host died before prctl
  ::signal(SIGINT, SIG_IGN);              // (a terminal's ^C is the host's to handle; it dies with it)
  AgentLoop loop{board, job, std::nullopt, std::nullopt};
  try {
    loop.run(parent);
  } catch (...) {  // (a failed agent is a gone one: the host renews its leases itself again)
  }
  loop.leave(2);
}

}  // namespace

Agent::Agent() : creator_(::getpid()) {
  void* page = ::mmap(nullptr, sizeof(AgentBoard), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED)
    throw Error("", "cluster agent", fmt::format("cannot map its board: {}", std::strerror(errno)));
  board_ = new (page) AgentBoard{};  // (zeroed: every entry free)
}

Agent::~Agent() {
  stop();
  ::munmap(board_, sizeof(AgentBoard));
}

void Agent::stop() noexcept {
  if (pid_ <= 0 || reaped_ || ::getpid() != creator_) return;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (stopped() && std::chrono::steady_clock::now() < until) {
    const pid_t r = ::waitpid(pid_, nullptr, WNOHANG);
    if (r == pid_ || (r < 0 && errno != EINTR)) {
      reaped_ = true;
      return;
    }
    ::usleep(1000);
  }
  ::kill(pid_, SIGKILL);  // (not reaped yet: the pid is still the agent's, a zombie at worst)
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

void Agent::attend(std::chrono::milliseconds grace) noexcept {
  board_->attended_until.store((std::chrono::steady_clock::now() + grace).time_since_epoch().count());
}

void Agent::start(const Job& job) {
  if (pid_ > 0) return;
  const pid_t parent = ::getpid();
  flush_standard_streams();  // nothing buffered may be printed twice
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("", "cluster agent", fmt::format("cannot fork: {}", std::strerror(errno)));
  if (pid == 0) agent_main(*board_, job, parent);
  pid_ = pid;
}

bool Agent::beating() noexcept {
  if (pid_ <= 0 || reaped_ || board_->gone.load() != 0) return false;
  if (::getpid() == creator_ && ::waitpid(pid_, nullptr, WNOHANG) == pid_) {  // (killed: it could not say so)
    reaped_ = true;
    return false;
  }
  return true;
}

int Agent::enter(std::uint64_t job, std::uint64_t first, std::uint64_t chunk, std::string_view token) {
  for (int i = 0; i < AgentBoard::slots; ++i) {
    AgentBoard::Slot& slot = board_->slot[i];
    if (slot.state.load() != 0) continue;
    slot.job.store(job);
    slot.first.store(first);
    slot.reported.store(0);  // (not the progress of the slot's last chunk)
    slot.chunk.store(chunk);
    char padded[sizeof slot.token] = {};
    std::memcpy(padded, token.data(), std::min(token.size(), sizeof padded - 1));
    for (int w = 0; w < AgentBoard::token_words; ++w) {
      std::uint64_t word;
      std::memcpy(&word, padded + w * 8, 8);
      slot.token[w].store(word, std::memory_order_relaxed);
    }
    slot.state.store((++generation_ << 3) | static_cast<std::uint64_t>(AgentMark::running));
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
