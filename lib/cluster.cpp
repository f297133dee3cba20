// Cluster, one host's side of a job: joining it, the host loop (claim a chunk, run it as a
// local pool job, renew its lease, complete it), progress, the stop, and how the job's
// end is reported. The engine's state changes only through the scripts of
// detail/cluster_scripts.hpp; this file decides when to call them, and retries a call
// the engine did not answer until ClusterOptions::unavailable_after.
#include <procshare/cluster.hpp>

#include "detail/cluster_agent.hpp"
#include "detail/cluster_names.hpp"
#include "detail/cluster_scripts.hpp"

#include <fmt/format.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <functional>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace procshare {

namespace detail {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;


std::uint64_t parse_u64(std::string_view text) {
  std::uint64_t value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}
std::uint64_t number(const EngineReply& reply) {
  if (reply.kind == EngineReply::Kind::integer) return static_cast<std::uint64_t>(reply.integer);
  return parse_u64(reply.text);
}

// What moving a map's results through the engine costs, in bytes per second: the
// sender's serializing and sending, the engine's storing, and a reader's reading (on this
// platform, loopback: 16 MB of results sent in ~75 ms and read back in ~35 ms). A chunk
// whose results take longer to move than it took to compute is not sent: each host that
// needs them computes them again (ResultTransfer::automatic).
constexpr double engine_bytes_per_second = 150e6;

const std::string& tag(const EngineReply& reply) {
  static const std::string none;
  return reply.elements.empty() ? none : reply.elements[0].text;
}

// 128 random bits as hex: a job's epoch, a host's claim nonces. From a generator seeded
// once per process (std::random_device costs ~16 us a call here; a forked child seeds
// its own, so two hosts forked from one parent never share a sequence).
std::string random_id() {
  static std::mutex mutex;
  static std::mt19937_64 generator;
  static pid_t seeded_in = 0;
  std::lock_guard guard(mutex);
  if (seeded_in != ::getpid()) {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(), static_cast<unsigned>(::getpid())};
    generator.seed(seed);
    seeded_in = ::getpid();
  }
  const std::uint64_t high = generator();
  return fmt::format("{:016x}{:016x}", high, generator());
}

std::string kind_name(JobKind kind) {
  return kind == JobKind::find_first ? "find_first" : kind == JobKind::map ? "map" : "submit";
}



// The engine connection's options of a cluster.
EngineOptions engine_options(const ClusterOptions& options) {
  return EngineOptions{.url = options.url,
                       .password_env = options.password_env,
                       .password_file = options.password_file,
                       .connect_timeout = options.connect_timeout,
                       .command_timeout = options.command_timeout,
                       .insecure_transport = options.insecure_transport};
}

// A failure record in the job's fail zset: the position first (so members are unique),
// then what makes the TaskError or WorkerDied again, fields split by '\x1f'.
constexpr char field_separator = '\x1f';

}  // namespace

std::string bytes_hash(std::span<const std::byte> bytes) {
  // FNV-1a over 8-byte words, then a final mix: fast, and the same on every host of a
  // platform (it guards against a host with other items, not against an adversary).
  std::uint64_t h = 0xcbf29ce484222325ull ^ bytes.size();
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    h = (h ^ word) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < bytes.size(); ++i) h = (h ^ static_cast<std::uint8_t>(bytes[i])) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return fmt::format("{:016x}", h);
}

std::string function_identity(AnyFunction function) {
  if (function == nullptr) return {};
  Dl_info info{};
  const void* address = reinterpret_cast<const void*>(function);
  if (::dladdr(address, &info) == 0 || info.dli_fbase == nullptr) return fmt::format("{} ", address);
  const char* file = info.dli_fname != nullptr ? std::strrchr(info.dli_fname, '/') : nullptr;
  return fmt::format("{}+{:#x} ", file != nullptr ? file + 1 : (info.dli_fname ? info.dli_fname : "?"),
                     reinterpret_cast<std::uintptr_t>(address) - reinterpret_cast<std::uintptr_t>(info.dli_fbase));
}

ClusterTask::~ClusterTask() = default;

struct ClusterCore::State {
  std::shared_ptr<Engine> engine;
  ClusterOptions options;
  std::string host;
  std::shared_ptr<PoolCore> pool;
  ClusterSpec spec;
  std::unique_ptr<ClusterTask> task;
  std::string object;  // "cluster job 'J' on URL (host H)", what messages name
  std::vector<std::string> keys;
  std::string epoch;
  std::uint64_t chunk = 0;  // fixed chunk size, or 0: this host asks for `want` items
  std::uint64_t want = 1;
  std::uint64_t most = UINT64_MAX;  // an adaptive chunk's largest size: half the pool's arena
  milliseconds beat_every{};

  struct Running {
    std::uint64_t chunk, first, count;
    std::string token;
    std::shared_ptr<JobState> local;
    Clock::time_point started;
    bool cancelled = false;  // by this host (a chunk above find_first's match)
    int entry = -1;          // its entry on the agent's board
  };
  // The agent that brings a stop or a better match to the running chunks at once
  // (detail/cluster_agent.hpp); forked once this host has been in the job for 50 ms, the
  // length of an adaptive chunk (a fork costs 0.1 to several ms here; before that, a stop
  // or match reaches this host at its next engine call, which comes about as soon).
  Agent agent;
  bool agent_tried = false;
  Clock::time_point agent_at{};
  std::vector<Running> running;
  struct Chunk {  // (one the engine made)
    std::uint64_t chunk, first, end;
  };
  // The option the join handed out (an adaptive map's next chunk, held but not started:
  // it starts when the first chunk ends, shrunk to what that chunk's timing says).
  struct Option : Chunk {
    std::string token;
    int entry = -1;  // on the agent's board (which renews its lease)
  };
  std::optional<Option> option;
  // map: the items [first, end) of the chunks whose results this host holds (its own
  // accepted completions, and those it read)
  std::set<std::pair<std::uint64_t, std::uint64_t>> mine;
  bool waiting = false;    // nothing to claim now: look again at next_claim
  Clock::time_point next_claim{}, next_beat{};
  std::uint64_t claims = 0;
  std::string nonce = random_id().substr(0, 8);  // (with `claims`: each claim's own)
  bool timed = false;  // an adaptive job: `want` comes from a chunk this host timed
  Clock::time_point last_settled{};  // when this host's last chunk ended

  bool ended = false;
  std::string end_state;  // "done", "stopped"
  std::string stopped_by;
  std::uint64_t best;
  std::optional<Progress> final_progress;
  std::optional<std::uint64_t> failed_at_end;  // the job's failed items, when its end said
  std::exception_ptr broken;
  std::optional<Clock::time_point> unreachable_since;

  // ------------------------------------------------------------ engine calls

  [[noreturn]] void lost() {
    throw JobLost("", object,
                  fmt::format("the job's state is gone from the engine ({}): a restart without "
                              "persistence, or its keys were deleted or evicted",
                              server_identity()));
  }
  // "server run_id R, up S s" (a restart changes the one and resets the other), or why
  // it is not known: a user held to the job's keys may not run INFO (-@dangerous takes
  // it away again). Asked only when the job is lost: it costs a round trip.
  std::string server_identity() {
    std::string info;
    try {
      info = engine->command({"INFO", "server"}).text;
    } catch (const PermissionDenied&) {
      return "server run_id unknown: INFO not permitted";
    } catch (const Error& e) {
      return fmt::format("server run_id unknown: {}", e.what());
    }
    const auto field = [&](std::string_view name) {
      const auto at = info.find(name);
      if (at == std::string::npos) return std::string("unknown");
      const auto end = info.find_first_of("\r\n", at);
      return info.substr(at + name.size(), end - at - name.size());
    };
    return fmt::format("server run_id {}, up {} s", field("run_id:"), field("uptime_in_seconds:"));
  }
  // Runs a script, retrying (100 ms to 1 s apart) while the engine does not answer, up
  // to unavailable_after. {'lost'} throws JobLost.
  // `meanwhile` runs on the first try, once the call is sent (see Engine::eval).
  EngineReply run(const char* body, const std::vector<std::string>& args,
                  std::function<void()> meanwhile = nullptr) {
    EngineReply reply =
        retried([&] { return engine->eval(script(body), keys, args, std::exchange(meanwhile, nullptr)); });
    if (tag(reply) == "lost") lost();
    return reply;
  }
  // A stop's second call (scripts::stop): the job's keys expire. Tried once: without it,
  // the agents' acknowledgements, the other hosts' calls and a later join make them expire.
  void expire_stopped() noexcept {
    try {
      engine->eval(script(scripts::expire), keys, {epoch});
    } catch (...) {
    }
  }
  // Ends this host's part of a job it stopped (its own chunks first), then makes the
  // second call, even should the end throw.
  void end_stopped(const std::string& who) {
    struct Then {
      State& s;
      ~Then() { s.expire_stopped(); }
    } then{*this};
    end("stopped", who, spec.total, std::nullopt);
  }
  // A plain command (a read), retried as run() does.
  EngineReply read(const std::vector<std::string>& args) {
    return retried([&] { return engine->command(args); });
  }
  // Makes an engine call, again while the engine does not answer, up to
  // unavailable_after (then EngineUnavailable, naming for how long and the last error);
  // its other errors name the job.
  template <class Call> EngineReply retried(const Call& call) {
    milliseconds backoff{100};
    for (;;) {
      const auto sent = Clock::now();  // (unreachable since the first call that failed was sent)
      try {
        EngineReply reply;
        try {
          reply = call();
        } catch (const EngineUnavailable&) {
          throw;
        } catch (const Error&) {
          rethrow_for(object);
        }
        unreachable_since.reset();
        return reply;
      } catch (const EngineUnavailable& e) {
        const auto now = Clock::now();
        if (!unreachable_since) unreachable_since = sent;
        const auto down = now - *unreachable_since;
        if (down >= options.unavailable_after)
          throw EngineUnavailable(
              "", object,
              fmt::format("the engine was unreachable for {:.1f} s (unavailable_after {} ms); "
                          "last: {}",
                          std::chrono::duration<double>(down).count(),
                          options.unavailable_after.count(), e.what()));
        const auto left = options.unavailable_after - down;
        std::this_thread::sleep_for(std::min<Clock::duration>(backoff, left));
        backoff = std::min(backoff * 2, milliseconds{1000});
      }
    }
  }

  // ------------------------------------------------------------ the job's end

  // Gives up a local job: cancelled, and its results (should it still end) go nowhere.
  void give_up(Running& r) {
    agent.leave(std::exchange(r.entry, -1));
    task->detach(*r.local);  // (first: the job may end in another thread's pool call)
    cancel_job(*pool, *r.local);
    r.cancelled = true;
  }
  void cancel_local() {
    for (Running& r : running) give_up(r);
    running.clear();
  }
  // Forgets the option not started (the job ended, or its lease went elsewhere).
  void drop_option() {
    if (option) agent.leave(option->entry);
    option.reset();
  }
  void end(const std::string& state, const std::string& who, std::uint64_t best_now,
           std::optional<std::uint64_t> failed) {
    if (ended) return;
    ended = true;
    drop_option();
    end_state = state;
    stopped_by = who;
    best = best_now;
    failed_at_end = failed;
    cancel_local();
    if (state == "done" && failed && spec.kind == JobKind::map)  // (known without a call)
      final_progress = Progress{spec.total - *failed, *failed, 0, spec.total};
  }
  void end_from(const EngineReply& reply) {  // {'ended', state, stop, best, failed}
    end(reply.elements.at(1).text, reply.elements.at(2).text, number(reply.elements.at(3)),
        number(reply.elements.at(4)));
  }

  // ------------------------------------------------------------ the host loop

  void start_agent() {
    agent_tried = true;
    try {
      // (the agent's scripts known first: forked, it would load them again for every job,
      // one more round trip before a stop's acknowledgement)
      engine->load(script(scripts::seen));
      engine->load(script(scripts::heartbeat));
    } catch (const Error&) {  // (the engine away: the agent loads them when it can)
    }
    try {
      agent.start(Agent::Job{engine_options(options), keys, epoch, host, options.lease, beat_every, pool});
    } catch (const Error&) {
      // (no fork: stops and matches reach this host at its next engine call instead)
    }
  }

  // Runs `call` on this host's pool; its errors (a pool closed, broken or used by another
  // process, its arena full) also name the cluster job: "pool (WHAT cluster job ...)".
  template <class Call> auto on_pool(const std::string& what, const Call& call) {
    try {
      return call();
    } catch (const PoolClosed& e) {
      throw PoolClosed(e.segment(), fmt::format("{} ({}{})", e.object(), what, object), detail_of(e));
    } catch (const SegmentFull& e) {
      throw SegmentFull(e.segment(), fmt::format("{} ({}{})", e.object(), what, object), detail_of(e));
    }
  }
  // Runs chunk `c`, items [first, first + count), under lease `token`.
  void launch(std::uint64_t c, std::uint64_t first, std::uint64_t count, const std::string& token) {
    running.push_back(Running{c, first, count, token, start_local(first, count), Clock::now()});
    running.back().entry = agent.enter(running.back().local->id, first, c, token);
  }
  // Starts items [first, first + count) as a local job on this host's pool.
  std::shared_ptr<JobState> start_local(std::uint64_t first, std::uint64_t count) {
    return on_pool(fmt::format("items {} to {} of ", first, first + count - 1),
                   [&] { return task->start(first, count); });
  }
  // Whether this host would claim a chunk now: fewer than 1 + prefetch run (just 1 until
  // an adaptive job has timed a chunk: a second chunk of the first guess is no better),
  // and not waiting for one to come free.
  bool wants_chunk(Clock::time_point now) const {
    const std::size_t limit = chunk == 0 && !timed ? 1 : 1 + options.prefetch;
    return !ended && running.size() < limit && !(waiting && now < next_claim);
  }
  // The claim's arguments after the epoch (claim and complete take the same).
  std::vector<std::string> claim_args() {
    return {host, std::to_string(options.lease.count()), fmt::format("{}-{}", nonce, ++claims),
            std::to_string(want), std::to_string(chunk != 0 ? chunk : want / 8)};
  }
  // Takes a claim's reply; returns whether it gave a chunk (which now runs).
  bool take_claim(const EngineReply& reply, Clock::time_point now) {
    const std::string& what = tag(reply);
    if (what == "ended") {
      end_from(reply);
      return false;
    }
    if (what == "wait") {
      waiting = true;
      next_claim = now + options.flush;
      return false;
    }
    const std::uint64_t c = number(reply.elements.at(1));
    const std::uint64_t first = number(reply.elements.at(3));
    const std::uint64_t count = number(reply.elements.at(4)) - first;
    // The job's last items: nothing new is left to claim, only chunks whose lease runs out
    // (looked for after a flush interval, as after a 'wait').
    waiting = first + count >= spec.total;
    if (waiting) next_claim = now + options.flush;
    launch(c, first, count, reply.elements.at(2).text);
    if (reply.elements.size() > 9) {
      option = Option{{number(reply.elements[6]), number(reply.elements[8]), number(reply.elements[9])},
                      reply.elements[7].text};
      option->entry = agent.enter(0, option->first, option->chunk, option->token);
    }
    return true;
  }
  // Starts the option, its first `keep` items (at least one); returns the completion's
  // arguments that shrink it in the engine to what runs.
  std::vector<std::string> start_option(std::uint64_t keep) {
    const Option o = *std::exchange(option, std::nullopt);
    if (agent.leave(o.entry) == AgentMark::lease_lost) return {"", "", "0"};  // (it went elsewhere)
    const std::uint64_t count = std::clamp<std::uint64_t>(keep, 1, o.end - o.first);
    launch(o.chunk, o.first, count, o.token);
    return {std::to_string(o.chunk), o.token, std::to_string(o.first + count)};
  }
  void claim_chunks(Clock::time_point now) {
    if (option && running.empty() && !ended) start_option(most);  // (the first chunk's lease was lost)
    while (wants_chunk(now)) {
      std::vector<std::string> args{epoch};
      for (std::string& a : claim_args()) args.push_back(std::move(a));
      if (!take_claim(run(scripts::claim, args), now)) return;
    }
  }

  void heartbeat(Clock::time_point now) {
    next_beat = now + beat_every;
    if (agent.beating()) return;  // (the agent renews the leases, in or out of a call)
    if (running.empty() && !option) return;
    std::vector<std::string> args{epoch, host, std::to_string(options.lease.count())};
    for (Running& r : running) {
      args.push_back(std::to_string(r.chunk));
      args.push_back(r.token);
      args.push_back(std::to_string(job_progress(*pool, *r.local).done));
    }
    if (option) {
      args.push_back(std::to_string(option->chunk));
      args.push_back(option->token);
      args.push_back("0");
    }
    const EngineReply reply = run(scripts::heartbeat, args);
    if (tag(reply) == "ended") return end_from(reply);
    const std::uint64_t best_now = number(reply.elements.at(1));
    const auto& kept = reply.elements.at(2).elements;
    if (option && kept.size() > running.size() && kept[running.size()].integer == 0) drop_option();
    std::vector<Running> still;
    for (std::size_t i = 0; i < running.size(); ++i) {
      Running& r = running[i];
      // A lost lease (this host was too slow: the chunk went to another) or, in
      // find_first, a chunk wholly above a match found elsewhere: it need not finish.
      const bool lost_lease = i < kept.size() && kept[i].integer == 0;
      if (lost_lease || (r.first > best_now && !r.cancelled)) give_up(r);
      if (lost_lease) continue;
      still.push_back(std::move(r));
    }
    running = std::move(still);
  }

  // A local job ended: complete its chunk.
  void settle(Running& r) {
    agent.attend(options.lease);
    JobState& local = *r.local;
    switch (agent.leave(std::exchange(r.entry, -1))) {
      case AgentMark::stopped:  // (the agent heard the job's stop)
        return end("stopped", agent.who(), spec.total, std::nullopt);
      case AgentMark::above_match:  // (as this host's heartbeat would have)
        r.cancelled = true;
        break;
      case AgentMark::lease_lost:  // (another host runs the chunk: its results count)
        task->detach(local);
        return;
      case AgentMark::running:
        break;
    }
    if (!local.closed.empty()) throw PoolClosed(local.segment, "pool", local.closed);
    if (local.stop_raised && !r.cancelled) {
      // Not this host's cancel: a task's request_stop(), or procshare-ctl on the local pool.
      const EngineReply reply = run(
          scripts::stop, {epoch, fmt::format("a task's request_stop() (or procshare-ctl) on {}, in items {} to {}",
                                             host, r.first, r.first + r.count - 1)});
      if (tag(reply) == "ended") return end_from(reply);
      return end_stopped(reply.elements.at(1).text);
    }
    // The chunk's wall time, with the claim and the queueing behind the chunk before it:
    // an overestimate of what its items cost (what the next chunk's size comes from: never
    // too large); and its time once the chunk before it ended (what computing its items
    // again would cost, for ResultTransfer::automatic).
    const auto ended_at = Clock::now();
    const double seconds = std::chrono::duration<double>(ended_at - r.started).count();
    const double run_seconds = std::chrono::duration<double>(ended_at - std::max(r.started, last_settled)).count();
    last_settled = ended_at;
    if (chunk == 0 && !r.cancelled && r.count > 0) {
      // The next chunk's size: ~50 ms of this host's work at the rate this one ran (an
      // overestimate of the cost of an item, so never too large a chunk). The claim
      // script caps it at the remaining items / (2 x hosts).
      const double fit = seconds > 0 ? 0.05 * static_cast<double>(r.count) / seconds : 1e18;
      want = fit >= 1e18 ? most : std::clamp<std::uint64_t>(static_cast<std::uint64_t>(fit), 1, most);
      timed = true;
    }
    // The option starts now, before this chunk's completion travels (which shrinks it in
    // the engine to what runs): no round trip between the two.
    std::vector<std::string> shrink{"", "", "0"};
    if (option) shrink = start_option(timed ? want : most);
    const bool first_kind = spec.kind == JobKind::find_first;
    // (a plain number, not an optional: g++ 12 warns falsely on the optional here)
    const bool matched = first_kind && local.found.has_value();
    const std::uint64_t found = matched ? r.first + local.found.value() : UINT64_MAX;
    // A map's results go to the engine for the other hosts when computing them again
    // would take longer than moving them (ResultTransfer::automatic), else each host that
    // needs them computes them again (finish). A chunk with failures sends none: the job
    // throws its lowest failure, and nobody reads them. (A result that could not be read
    // back here, a user's transport<R>::read that threw, is a failure too, uncounted.)
    const bool whole = local.failed == 0 && local.failures.empty() && local.skipped == 0 && !r.cancelled;
    std::vector<std::byte> results;
    if (task->keeps_results() && whole) {
      const double budget = options.results == ResultTransfer::engine ? 1e18 : run_seconds * engine_bytes_per_second;
      task->write(r.first, r.count, budget >= 1e18 ? SIZE_MAX : static_cast<std::size_t>(budget), results);
    }
    std::vector<std::string> args{epoch,
                                  std::to_string(r.chunk),
                                  r.token,
                                  std::to_string(local.done),
                                  std::to_string(local.failed),
                                  std::to_string(local.skipped),
                                  matched ? std::to_string(found) : "-1",
                                  std::string(reinterpret_cast<const char*>(results.data()), results.size())};
    // The next claim rides on this call when this host wants one (one round trip for both).
    const auto now = Clock::now();
    const bool claim = wants_chunk(now);
    args.push_back(claim ? "1" : "0");
    for (std::string& a : claim_args()) args.push_back(std::move(a));
    for (std::string& a : shrink) args.push_back(std::move(a));
    for (const JobState::Failure& f : local.failures) {
      const std::uint64_t position = r.first + f.index;
      if (position >= found) continue;  // (above the match: it cannot matter)
      args.push_back(std::to_string(position));
      args.push_back(failure_record(position, f));
    }
    const EngineReply reply = run(scripts::complete, args);
    const std::string& what = tag(reply);
    if (what == "ended") return end_from(reply);
    if (what == "fenced") {  // (another host holds the chunk now: its results count)
      if (reply.elements.size() > 1) take_claim(reply.elements[1], now);
      return;
    }
    if (spec.kind == JobKind::map && whole) mine.insert({r.first, r.first + r.count});  // (its results are in place)
    if (reply.elements.at(1).text == "done")
      return end("done", "", number(reply.elements.at(2)), number(reply.elements.at(3)));
    if (reply.elements.size() > 4) take_claim(reply.elements[4], now);
  }

  bool drive(Deadline deadline) {
    if (broken) std::rethrow_exception(broken);
    try {
      for (;;) {
        agent.attend(options.lease);  // (the chunks it computed are settled soon: the agent renews them)
        if (agent.stopped()) end("stopped", agent.who(), spec.total, std::nullopt);
        if (ended) return true;
        // Settle what ended (wait_job with a past deadline only collects results).
        for (std::size_t i = 0; i < running.size() && !ended;) {
          if (wait_job(*pool, *running[i].local, Clock::time_point{})) {
            Running r = std::move(running[i]);
            running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
            settle(r);
          } else {
            ++i;
          }
        }
        if (ended) return true;
        auto now = Clock::now();
        if (!agent_tried && now >= agent_at) start_agent();
        if (now >= next_beat) heartbeat(now);
        if (!ended) claim_chunks(now);
        // (a chunk claimed after the agent stopped the others: it never saw this one)
        if (agent.stopped()) end("stopped", agent.who(), spec.total, std::nullopt);
        if (ended) return true;
        now = Clock::now();
        if (now >= deadline) return false;
        Deadline wake = std::min(deadline, next_beat);
        if (!agent_tried) wake = std::min(wake, agent_at);
        if (waiting) wake = std::min(wake, next_claim);
        if (running.empty()) {
          std::this_thread::sleep_until(std::min(wake, now + options.flush));
        } else {
          std::vector<JobState*> states;
          for (Running& r : running) states.push_back(r.local.get());
          wait_any(*pool, states, wake);
        }
      }
    } catch (...) {
      cancel_local();
      broken = std::current_exception();
      throw;
    }
  }

  Progress status() {
    const EngineReply reply = run(scripts::status, {epoch});
    const auto& e = reply.elements;
    Progress p{number(e.at(4)) + number(e.at(7)), number(e.at(5)), number(e.at(6)), spec.total};
    if (e.at(1).text != "running") {
      p.done = std::min(number(e.at(4)), spec.total);
      p.skipped = spec.total - std::min(spec.total, p.done + p.failed);
    }
    return p;
  }

  // A failure of item `position` (run on this host) as the fail zset holds it.
  std::string failure_record(std::uint64_t position, const JobState::Failure& f) const {
    return fmt::format("{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}", position, field_separator, f.died ? 1 : 0, field_separator,
                       f.pid, field_separator, f.signal, field_separator, f.exit_status, field_separator, host,
                       field_separator, f.type, field_separator, f.message);
  }
  [[noreturn]] void throw_failure(const std::string& record) {
    std::vector<std::string> f;
    std::size_t at = 0;
    for (int k = 0; k < 7; ++k) {
      const auto next = record.find(field_separator, at);
      if (next == std::string::npos) throw Error("", object, "a failure record in the engine is garbled");
      f.push_back(record.substr(at, next - at));
      at = next + 1;
    }
    f.push_back(record.substr(at));
    const auto to = [](const std::string& text) {
      long long value = 0;
      std::from_chars(text.data(), text.data() + text.size(), value);
      return value;
    };
    const std::string where = fmt::format("{}, item run by host {}", object, f[5]);
    const auto index = static_cast<std::uint64_t>(to(f[0]));
    if (f[1] == "1")
      throw WorkerDied("", where, index, static_cast<int>(to(f[2])), static_cast<int>(to(f[3])),
                       static_cast<int>(to(f[4])));
    throw TaskError("", where, index, f[6], f[7], static_cast<int>(to(f[2])));
  }

  void finish(std::uint64_t limit) {
    if (broken) std::rethrow_exception(broken);
    const bool gather = task->keeps_results() && end_state != "stopped";
    if (failed_at_end != std::uint64_t{0}) {  // (known to be none: no round trip)
      // (first, that the keys are still the job's: they expire `keep` after its end)
      if (read({"HGET", keys[0], "epoch"}).text != epoch) lost();
      const EngineReply lowest = read({"ZRANGE", keys[6], "0", "0", "WITHSCORES"});
      if (lowest.elements.size() == 2 && number(lowest.elements[1]) < limit)
        throw_failure(lowest.elements[0].text);
    }
    if (end_state == "stopped") throw Stopped("", object, fmt::format("the job was stopped by {}", stopped_by));
    if (!gather || covers_all()) return;  // (all computed here: no call at all)
    // The results of the chunks this host has not (other hosts completed them), by their
    // items (a chunk's number is not enough: a server restarted from its append-only file
    // may have made a chunk again, with other items), 256 chunks a call; those not in the
    // engine (cheaper to compute again than to move) this host computes again.
    if (read({"HGET", keys[0], "epoch"}).text != epoch) lost();  // (they expire `keep` after the end)
    std::vector<Chunk> wanted, again;
    const EngineReply made = read({"HGETALL", keys[9]});
    for (std::size_t i = 0; i + 1 < made.elements.size(); i += 2) {
      const std::string& range = made.elements[i + 1].text;
      const auto space = range.find(' ');
      if (space == std::string::npos) continue;
      const std::uint64_t first = parse_u64(std::string_view(range).substr(0, space));
      const std::uint64_t end = parse_u64(std::string_view(range).substr(space + 1));
      if (mine.count({first, end}) == 0) wanted.push_back({parse_u64(made.elements[i].text), first, end});
    }
    for (std::size_t at = 0; at < wanted.size(); at += 256) {
      std::vector<std::string> args{"HMGET", keys[7]};
      const std::size_t end = std::min(wanted.size(), at + 256);
      for (std::size_t k = at; k < end; ++k) args.push_back(std::to_string(wanted[k].chunk));
      const EngineReply reply = read(args);
      for (std::size_t k = at; k < end; ++k) {
        const EngineReply& bytes = reply.elements.at(k - at);
        if (bytes.kind != EngineReply::Kind::string) {
          if (options.results == ResultTransfer::engine) lost();  // (every result was sent)
          again.push_back(wanted[k]);
          continue;
        }
        task->read(wanted[k].first, wanted[k].end - wanted[k].first,
                   std::as_bytes(std::span(bytes.text.data(), bytes.text.size())));
        mine.insert({wanted[k].first, wanted[k].end});
      }
    }
    compute_again(std::move(again));
    if (!covers_all()) lost();  // (an item without a result: never a default value)
  }

  // Whether the chunks this host holds the results of cover every item.
  bool covers_all() const {
    std::uint64_t next = 0;
    for (const auto& [first, end] : mine) {
      if (first > next) return false;
      next = std::max(next, end);
    }
    return next >= spec.total;
  }

  // Runs the chunks `again` on this host's pool (their results were not sent: cheaper to
  // compute again than to move), not counted in the job, in pieces that fit this host's
  // arena. Throws their lowest failure as the job would, PoolClosed, Stopped (a task's
  // request_stop() meanwhile).
  void compute_again(std::vector<Chunk> again) {
    std::sort(again.begin(), again.end(), [](const Chunk& a, const Chunk& b) { return a.first < b.first; });
    std::vector<Running> runs;
    try {
      for (const auto& c : again)
        for (std::uint64_t first = c.first; first < c.end;) {
          const std::uint64_t count = std::min(c.end - first, most);
          runs.push_back(Running{c.chunk, first, count, "", start_local(first, count), Clock::now()});
          first += count;
        }
      std::optional<std::string> lowest;
      std::uint64_t lowest_at = UINT64_MAX;
      const Running* stopped = nullptr;
      for (Running& r : runs) {
        wait_job(*pool, *r.local, no_deadline);
        JobState& local = *r.local;
        if (!local.closed.empty()) throw PoolClosed(local.segment, "pool", local.closed);
        for (const JobState::Failure& f : local.failures)
          if (r.first + f.index < lowest_at) {
            lowest_at = r.first + f.index;
            lowest = failure_record(lowest_at, f);
          }
        if (local.skipped > 0 && stopped == nullptr) stopped = &r;
      }
      if (lowest) throw_failure(*lowest);
      if (stopped != nullptr)
        throw Stopped("", object,
                      fmt::format("a task's request_stop() (or procshare-ctl) on {} while it computed again "
                                  "the results of items {} to {}, which were not sent (cheaper to compute than "
                                  "to move)",
                                  host, stopped->first, stopped->first + stopped->count - 1));
    } catch (...) {
      for (Running& r : runs) give_up(r);
      throw;
    }
    for (const Running& r : runs) mine.insert({r.first, r.first + r.count});
  }
};

ClusterCore::ClusterCore(std::shared_ptr<Engine> engine, const ClusterOptions& options, std::string host,
                         std::shared_ptr<PoolCore> pool, ClusterSpec spec, std::unique_ptr<ClusterTask> task)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.engine = std::move(engine);
  s.options = options;
  s.host = std::move(host);
  s.pool = std::move(pool);
  s.spec = std::move(spec);
  s.task = std::move(task);
  s.object = fmt::format("cluster job '{}' on {} (host {})", options.job, s.engine->url(), s.host);
  s.keys = job_keys(options.job);
  s.chunk = options.chunk;
  // (an adaptive job's first chunks: 1/256 of the items; then ~50 ms of work each)
  // (and never more than half the pool's arena holds: a job too big for one Pool::map
  // runs in chunks that fit)
  if (const std::uint64_t bytes = s.task->arena_bytes_per_item(); bytes > 0)
    s.most = std::max<std::uint64_t>(1, detail::pool_arena_bytes(*s.pool) / 2 / bytes);
  s.want = s.chunk != 0 ? s.chunk : std::clamp<std::uint64_t>((s.spec.total + 255) / 256, 1, s.most);
  s.beat_every = options.flush;
  s.best = s.spec.total;
  const std::string kind = kind_name(s.spec.kind);
  const std::vector<std::string> mine_spec{kind,         std::to_string(s.spec.total), std::to_string(s.chunk),
                                           s.spec.items, s.spec.args,                  s.spec.task,
                                           options.results == ResultTransfer::engine ? "engine" : "automatic"};
  // (first, that the pool can run a chunk: a closed one writes nothing in the engine)
  s.on_pool("to run ", [&] { check_usable(*s.pool); });
  std::vector<std::string> args{random_id()};
  args.insert(args.end(), mine_spec.begin(), mine_spec.end());
  args.push_back(s.host);
  args.push_back(std::to_string(options.keep.count()));
  std::vector<std::string> claim = s.claim_args();  // (the first chunk rides on the join)
  args.insert(args.end(), claim.begin() + 1, claim.end());
  // (and an adaptive job's option, its next chunk, up to half the arena: not find_first's,
  // whose chunks must start in the order they are made)
  args.push_back(s.chunk == 0 && s.spec.kind != JobKind::find_first ? std::to_string(s.most) : "0");
  // (the results' room is made while the join travels; and surely, should it have failed)
  const EngineReply reply = s.run(scripts::join, args, [&] { s.task->prepare(); });
  s.task->prepare();
  if (tag(reply) == "mismatch") {
    const std::string& field = reply.elements.at(1).text;
    static const char* const fields[] = {"kind", "n", "chunk", "items", "args", "task", "results"};
    std::string here;
    for (std::size_t i = 0; i < 7; ++i)
      if (field == fields[i]) here = mine_spec[i];
    static const char* const said[] = {"kind of call", "number of items", "chunk size", "items (hash)",
                                       "arguments (hash)", "task (function and types)",
                                       "result transfer (ClusterOptions::results)"};
    std::string what = field;
    for (std::size_t i = 0; i < 7; ++i)
      if (field == fields[i]) what = said[i];
    throw JobMismatch("", s.object,
                      fmt::format("this host's {} is not the job's: '{}' here, '{}' in the job ({})",
                                  what, here, reply.elements.at(2).text, field));
  }
  s.epoch = reply.elements.at(1).text;
  s.next_beat = Clock::now() + s.beat_every;  // (the join set the first lease)
  s.agent_at = Clock::now() + milliseconds(50);
  if (reply.elements.at(2).text != "running")
    s.end(reply.elements.at(2).text, reply.elements.at(3).text, number(reply.elements.at(4)),
          number(reply.elements.at(5)));
  else if (reply.elements.size() > 6)
    s.take_claim(reply.elements[6], Clock::now());
}

ClusterCore::~ClusterCore() {
  State& s = *state_;
  s.agent.stop();  // (first: a renewal of its would undo the hand-back below)
  if (!s.ended && !s.broken && (!s.running.empty() || s.option)) {
    // Leaving with chunks claimed: hand them back (leases that end now), so that other
    // hosts rerun them at once rather than after `lease`. One try, no retry: never throws.
    std::vector<std::string> args{s.epoch, s.host, "0"};
    for (const State::Running& r : s.running) {
      args.push_back(std::to_string(r.chunk));
      args.push_back(r.token);
      args.push_back("0");
    }
    if (s.option) {
      args.push_back(std::to_string(s.option->chunk));
      args.push_back(s.option->token);
      args.push_back("0");
    }
    try {
      s.engine->eval(script(scripts::heartbeat), s.keys, args);
    } catch (...) {
    }
  }
  s.cancel_local();
}

bool ClusterCore::drive(Deadline deadline) { return state_->drive(deadline); }

void ClusterCore::start_agent() {
  State& s = *state_;
  if (!s.agent_tried && !s.ended) s.start_agent();
}

Progress ClusterCore::progress() {
  State& s = *state_;
  if (s.final_progress) return *s.final_progress;
  s.drive(Clock::now());
  const Progress p = s.status();
  if (s.ended) s.final_progress = p;
  return p;
}

void ClusterCore::cancel() {
  State& s = *state_;
  if (s.broken) std::rethrow_exception(s.broken);
  if (s.ended) return;
  const EngineReply reply = s.run(scripts::stop, {s.epoch, fmt::format("cancel() on {}", s.host)});
  if (tag(reply) == "ended") return s.end_from(reply);
  s.end_stopped(reply.elements.at(1).text);
}

void ClusterCore::finish(std::uint64_t limit) { state_->finish(limit); }

void ClusterCore::throw_taken() const {
  throw InvalidArgument("", state_->object,
                        "get() after get() returned the results (it moved them out): keep the vector "
                        "the first get() returned");
}

std::optional<std::uint64_t> ClusterCore::best() const {
  const State& s = *state_;
  if (s.end_state == "done" && s.best < s.spec.total) return s.best;
  return std::nullopt;
}

const std::string& ClusterCore::host() const noexcept { return state_->host; }

}  // namespace detail

// ---------------------------------------------------------------- Cluster

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  if (options_.host.empty()) {
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    options_.host = fmt::format("{}:{}", name, ::getpid());
  }
  const std::string object =
      fmt::format("cluster job '{}' on {} (host {})", options_.job, detail::display_url(options_.url), options_.host);
  const auto bad = [&](std::string_view why) { throw InvalidArgument("", object, why); };
  if (!detail::printable_name(options_.job))
    bad("the job name must be 1 to 200 printable characters without space, '{' or '}'");
  if (!detail::printable_name(options_.host)) bad("the host name must be 1 to 200 printable characters without space, '{' or '}'");
  if (options_.lease.count() <= 0) bad(fmt::format("lease must be positive (it is {} ms)", options_.lease.count()));
  if (options_.flush.count() <= 0 || options_.flush * 3 > options_.lease)
    bad(fmt::format("flush must be positive and at most lease / 3, so that a working host renews its "
                    "leases in time (flush {} ms, lease {} ms)",
                    options_.flush.count(), options_.lease.count()));
  if (options_.unavailable_after.count() <= 0)
    bad(fmt::format("unavailable_after must be positive (it is {} ms)", options_.unavailable_after.count()));
  if (options_.keep.count() <= 0) bad(fmt::format("keep must be positive (it is {} ms)", options_.keep.count()));
  if (options_.prefetch > 64) bad(fmt::format("prefetch must be at most 64 (it is {})", options_.prefetch));
  try {
    engine_ = std::make_shared<detail::Engine>(detail::engine_options(options_));
  } catch (const Error&) {
    detail::rethrow_for(object);
  }
}

Cluster::~Cluster() = default;

}  // namespace procshare
