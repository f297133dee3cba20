// Cluster reports (cluster_report.hpp): reading a job's keys in the engine into the
// reports `procshare-ctl cluster` prints, stopping a job with its own stop script, and
// removing the keys of jobs that ended or were abandoned. The key schema is documented at
// the top of detail/cluster_scripts.hpp; the failure record's format in lib/cluster.cpp.
#include <procshare/cluster_report.hpp>

#include "detail/cluster_names.hpp"
#include "detail/cluster_scripts.hpp"

#include <fmt/format.h>

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <thread>
#include <utility>

namespace procshare {

namespace {

using detail::Engine;
using detail::EngineReply;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// The lease a job made before meta held its creator's lease is taken to have (the
// ClusterOptions default; scripts::forget assumes the same '10000').
constexpr long long default_lease_ms = 10000;


long long to_number(std::string_view text) {
  long long value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}
std::uint64_t to_count(std::string_view text) { return static_cast<std::uint64_t>(std::max(0LL, to_number(text))); }

// The host in a lease token "fence:host:nonce" (a host name may hold ':', never a space).
std::string host_of_token(std::string_view token) {
  const auto first = token.find(':');
  const auto last = token.rfind(':');
  if (first == std::string_view::npos || last <= first) return std::string(token);
  return std::string(token.substr(first + 1, last - first - 1));
}

// A chunk's items "first end".
std::pair<std::uint64_t, std::uint64_t> range_of(std::string_view text) {
  const auto space = text.find(' ');
  if (space == std::string_view::npos) return {0, 0};
  return {to_count(text.substr(0, space)), to_count(text.substr(space + 1))};
}

// Runs `call`; an engine error it throws is thrown again as the same type, under
// `object` (the job and the URL) rather than the engine's own "engine 'URL'".
template <class Call> auto naming(const std::string& object, const Call& call) {
  try {
    return call();
  } catch (const NotFound&) {
    throw;  // (ours already)
  } catch (const Error&) {
    detail::rethrow_for(object);
  }
}

// A connection and what messages name: "cluster job 'J' on URL", or "engine URL".
struct Session {
  std::string object;
  std::unique_ptr<Engine> engine;

  Session(const EngineOptions& options, std::string_view job) {
    object = job.empty() ? fmt::format("engine '{}'", detail::display_url(options.url))
                         : fmt::format("cluster job '{}' on {}", job, detail::display_url(options.url));
    if (!job.empty()) {
      if (!detail::printable_name(job))
        throw InvalidArgument("", object,
                              "a job name is 1 to 200 printable characters without space, '{' or '}'");
    }
    engine = naming(object, [&] { return std::make_unique<Engine>(options); });
  }
  EngineReply command(const std::vector<std::string>& args) {
    return naming(object, [&] { return engine->command(args); });
  }
  EngineReply eval(const std::string& script, const std::vector<std::string>& keys,
                   const std::vector<std::string>& args) {
    return naming(object, [&] { return engine->eval(script, keys, args); });
  }
  // The server's clock in ms (what leases and last-seen times are on).
  long long now() {
    const EngineReply t = command({"TIME"});
    if (t.elements.size() != 2) throw Error("", object, "the engine's TIME reply is not two numbers");
    return to_number(t.elements[0].text) * 1000 + to_number(t.elements[1].text) / 1000;
  }
  // A hash's fields and values, read in bounded steps (HSCAN with a COUNT).
  std::vector<std::pair<std::string, std::string>> hash(const std::string& key) {
    std::vector<std::pair<std::string, std::string>> out;
    std::string cursor = "0";
    do {
      const EngineReply r = command({"HSCAN", key, cursor, "COUNT", "1000"});
      if (r.elements.size() != 2) throw Error("", object, fmt::format("the engine's HSCAN reply on {} is garbled", key));
      cursor = r.elements[0].text;
      const auto& items = r.elements[1].elements;
      for (std::size_t i = 0; i + 1 < items.size(); i += 2) out.emplace_back(items[i].text, items[i + 1].text);
    } while (cursor != "0");
    return out;
  }
  [[noreturn]] void no_such_job() {
    throw NotFound("", object,
                   "no such job (never made, or its keys expired `keep` after its end, or were cleaned)");
  }
};

// A job's summary from its keys, at the server time `now`.
ClusterJobSummary summarize(Session& s, std::string_view job, long long now) {
  const auto keys = detail::job_keys(job);
  std::map<std::string, std::string> meta;
  for (auto& [field, value] : s.hash(keys[0])) meta[field] = std::move(value);
  if (meta.count("epoch") == 0) s.no_such_job();
  const auto field = [&](const char* name) -> const std::string& {
    static const std::string none;
    const auto at = meta.find(name);
    return at == meta.end() ? none : at->second;
  };
  ClusterJobSummary out;
  out.name = job;
  out.kind = field("kind");
  out.state = field("state");
  out.stopped_by = field("stop");
  out.total = to_count(field("n"));
  out.done_items = to_count(field("done_items"));
  out.failed_items = to_count(field("failed_items"));
  out.skipped_items = to_count(field("skipped_items"));
  if (const std::uint64_t best = to_count(field("best")); field("kind") == "find_first" && best < out.total)
    out.best = best;
  out.lease = milliseconds(meta.count("lease") ? to_number(field("lease")) : default_lease_ms);
  out.age = milliseconds(std::max(0LL, now - to_number(field("created"))));
  const bool running = out.state == "running";
  if (!running && meta.count("ended")) out.since_end = milliseconds(std::max(0LL, now - to_number(field("ended"))));
  long long last_seen = -1;
  const auto hosts = s.hash(keys[8]);
  for (const auto& [host, seen] : hosts) last_seen = std::max(last_seen, to_number(seen));
  out.hosts = hosts.size();
  out.silent = last_seen < 0 ? out.age : milliseconds(std::max(0LL, now - last_seen));
  if (running) {
    for (const auto& [chunk, items] : s.hash(keys[3])) out.partial_items += to_count(items);
    const EngineReply latest = s.command({"ZREVRANGE", keys[1], "0", "0", "WITHSCORES"});
    const bool lease_alive = latest.elements.size() == 2 && to_number(latest.elements[1].text) > now;
    out.abandoned = !lease_alive && (last_seen < 0 || last_seen + out.lease.count() <= now);
  }
  return out;
}

// A failure record: position, died, pid, signal, exit status, host, type, message, split
// by '\x1f' (the message is the rest: it keeps any separator it held).
ClusterFailure decode_failure(const std::string& record, const std::string& object) {
  std::vector<std::string> f;
  std::size_t at = 0;
  for (int k = 0; k < 7; ++k) {
    const auto next = record.find('\x1f', at);
    if (next == std::string::npos)
      throw Error("", object, fmt::format("a failure record in the engine is garbled ({} fields, not 8)", k + 1));
    f.push_back(record.substr(at, next - at));
    at = next + 1;
  }
  ClusterFailure out;
  out.position = to_count(f[0]);
  out.died = f[1] == "1";
  out.pid = static_cast<int>(to_number(f[2]));
  out.signal = static_cast<int>(to_number(f[3]));
  out.exit_status = static_cast<int>(to_number(f[4]));
  out.host = f[5];
  out.type = f[6];
  out.message = record.substr(at);
  return out;
}

std::string failure_text(const ClusterFailure& f) {
  if (!f.died) return fmt::format("item {} on host {}: {}: {} (worker pid {})", f.position, f.host, f.type, f.message, f.pid);
  if (f.signal != 0)
    return fmt::format("item {} on host {}: worker {} was killed by signal {} ({})", f.position, f.host, f.pid,
                       f.signal, ::strsignal(f.signal));
  return fmt::format("item {} on host {}: worker {} exited with status {} while running it", f.position, f.host,
                     f.pid, f.exit_status);
}

// "running", "abandoned", "done", "stopped".
std::string shown_state(const ClusterJobSummary& j) { return j.abandoned ? "abandoned" : j.state; }

std::string percent_of(const ClusterJobSummary& j) {
  return j.total ? fmt::format("{}%", j.settled() * 100 / j.total) : "100%";
}

std::string summary_json(const ClusterJobSummary& j) {
  return fmt::format(
      "{{\"name\":{},\"kind\":{},\"state\":{},\"abandoned\":{},\"stopped_by\":{},\"hosts\":{},\"total\":{},"
      "\"settled\":{},\"done_items\":{},\"failed_items\":{},\"skipped_items\":{},\"partial_items\":{},"
      "\"best\":{},\"lease_ms\":{},\"age_ms\":{},\"since_end_ms\":{},\"silent_ms\":{}}}",
      json_quote(j.name), json_quote(j.kind), json_quote(j.state), j.abandoned, json_quote(j.stopped_by), j.hosts,
      j.total, j.settled(), j.done_items, j.failed_items, j.skipped_items, j.partial_items,
      j.best ? std::to_string(*j.best) : "null", j.lease.count(), j.age.count(), j.since_end.count(),
      j.silent.count());
}

// Whoever stops a job here, as the hosts' Stopped names it: "USER@HOST pid PID"; made
// once per thread and process (getpwuid reads the user database: ~35 us that would delay
// a stop; no lock that a fork could leave held).
std::string this_process() {
  thread_local pid_t made_in = 0;
  thread_local std::string made;
  if (made_in != ::getpid()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const passwd* user = ::getpwuid(::geteuid());
    made = fmt::format("{}@{} pid {}", user != nullptr ? user->pw_name : std::to_string(::geteuid()), host,
                       ::getpid());
    made_in = ::getpid();
  }
  return made;
}

}  // namespace

std::string human_duration(milliseconds duration) {
  const long long ms = duration.count();
  if (ms < 0) return "-" + human_duration(milliseconds(-ms));
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms < 60'000) return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000);
  const long long s = ms / 1000;
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
  return fmt::format("{}d{:02}h", s / 86400, s % 86400 / 3600);
}

std::vector<ClusterJobSummary> list_cluster_jobs(const EngineOptions& engine) {
  Session s(engine, "");
  // Job names from their meta keys, in bounded steps (SCAN, never KEYS).
  std::vector<std::string> names;
  std::string cursor = "0";
  do {
    const EngineReply r = s.command({"SCAN", cursor, "MATCH", "psj:{*}:meta", "COUNT", "1000"});
    if (r.elements.size() != 2) throw Error("", s.object, "the engine's SCAN reply is garbled");
    cursor = r.elements[0].text;
    for (const auto& key : r.elements[1].elements) {
      const std::string& k = key.text;  // psj:{NAME}:meta
      if (k.size() > 11 && k.find('}') == k.size() - 6) names.push_back(k.substr(5, k.size() - 11));
    }
  } while (cursor != "0");
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());  // (SCAN may return a key twice)
  const long long now = s.now();
  std::vector<ClusterJobSummary> out;
  for (const std::string& name : names) {
    try {
      out.push_back(summarize(s, name, now));
    } catch (const NotFound&) {  // (it expired or was cleaned since the SCAN saw it)
    }
  }
  return out;
}

ClusterJobSummary summarize_cluster_job(const EngineOptions& engine, std::string_view job) {
  Session s(engine, job);
  return summarize(s, job, s.now());
}

ClusterJobReport inspect_cluster_job(const EngineOptions& engine, std::string_view job, std::size_t failures) {
  Session s(engine, job);
  const auto keys = detail::job_keys(job);
  const long long now = s.now();
  ClusterJobReport out;
  out.url = detail::display_url(engine.url);
  out.summary = summarize(s, job, now);
  const EngineReply m = s.command({"HMGET", keys[0], "made", "done_chunks", "redelivered", "fenced", "created", "ended"});
  if (m.elements.size() != 6) throw Error("", s.object, "the engine's HMGET reply is garbled");
  out.chunks_made = to_count(m.elements[0].text);
  out.chunks_done = to_count(m.elements[1].text);
  out.redelivered = to_count(m.elements[2].text);
  out.fenced = to_count(m.elements[3].text);
  const long long created = to_number(m.elements[4].text);
  const long long life_end = out.summary.state == "running" ? now : to_number(m.elements[5].text);
  const double life_seconds = static_cast<double>(std::max(1LL, life_end - created)) / 1000;

  std::map<std::string, ClusterHostReport> hosts;
  for (const auto& [name, seen] : s.hash(keys[8])) {
    ClusterHostReport& h = hosts[name];
    h.name = name;
    h.last_seen = milliseconds(std::max(0LL, now - to_number(seen)));
  }
  std::map<std::string, std::string> owner;
  for (auto& [chunk, token] : s.hash(keys[2])) {
    hosts[host_of_token(token)].chunks_held++;
    owner[chunk] = std::move(token);
  }
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& [chunk, range] : s.hash(keys[9])) ranges[chunk] = range_of(range);
  for (const auto& [chunk, token] : s.hash(keys[5])) {
    const auto at = ranges.find(chunk);
    if (at != ranges.end()) hosts[host_of_token(token)].items_completed += at->second.second - at->second.first;
  }
  for (auto& [name, h] : hosts) {
    h.name = name;  // (a holder or completer no longer in the hosts hash)
    h.items_per_second = static_cast<double>(h.items_completed) / life_seconds;
    out.hosts.push_back(std::move(h));
  }

  if (out.summary.state == "running") {
    std::map<std::string, std::string> partial;
    for (auto& [chunk, items] : s.hash(keys[3])) partial[chunk] = std::move(items);
    const EngineReply leases = s.command({"ZRANGE", keys[1], "0", "-1", "WITHSCORES"});
    for (std::size_t i = 0; i + 1 < leases.elements.size(); i += 2) {
      const std::string& chunk = leases.elements[i].text;
      ClusterLease l;
      l.chunk = to_count(chunk);
      if (const auto r = ranges.find(chunk); r != ranges.end()) std::tie(l.first, l.end) = r->second;
      if (const auto p = partial.find(chunk); p != partial.end()) l.partial = to_count(p->second);
      // (a free chunk's deadline is 0, see scripts::claim; a held one's never is; its owner,
      // read before, may be missing if it was claimed since)
      l.free = to_number(leases.elements[i + 1].text) == 0;
      if (!l.free) {
        if (const auto o = owner.find(chunk); o != owner.end()) l.holder = host_of_token(o->second);
        l.left = milliseconds(to_number(leases.elements[i + 1].text) - now);
      }
      out.leases.push_back(std::move(l));
    }
    std::sort(out.leases.begin(), out.leases.end(),
              [](const ClusterLease& a, const ClusterLease& b) { return a.chunk < b.chunk; });
  }

  out.failures_total = static_cast<std::uint64_t>(s.command({"ZCARD", keys[6]}).integer);
  if (failures > 0 && out.failures_total > 0) {
    const EngineReply lowest = s.command({"ZRANGE", keys[6], "0", std::to_string(failures - 1)});
    for (const auto& record : lowest.elements) out.failures.push_back(decode_failure(record.text, s.object));
  }
  return out;
}

std::string format_cluster_jobs(const std::vector<ClusterJobSummary>& jobs, ReportFormat format) {
  if (format == ReportFormat::json) {
    std::string out = "[";
    for (std::size_t i = 0; i < jobs.size(); ++i) out += (i ? "," : "") + summary_json(jobs[i]);
    return out + "]\n";
  }
  std::string out = fmt::format("{:<32} {:<10} {:<9} {:>5} {:>24} {:>10} {:>8}\n", "JOB", "KIND", "STATE", "HOSTS",
                                "DONE/TOTAL", "BEST", "AGE");
  for (const auto& j : jobs)
    out += fmt::format("{:<32} {:<10} {:<9} {:>5} {:>24} {:>10} {:>8}\n", j.name, j.kind, shown_state(j), j.hosts,
                       fmt::format("{}/{} ({})", j.settled(), j.total, percent_of(j)),
                       j.best ? std::to_string(*j.best) : "-", human_duration(j.age));
  return out;
}

std::string format_cluster_job(const ClusterJobReport& r, ReportFormat format) {
  const ClusterJobSummary& j = r.summary;
  if (format == ReportFormat::json) {
    std::string out = fmt::format("{{\"url\":{},\"job\":{},\"chunks_made\":{},\"chunks_done\":{},\"redelivered\":{},"
                                  "\"fenced\":{},\"failures_total\":{},\"hosts\":[",
                                  json_quote(r.url), summary_json(j), r.chunks_made, r.chunks_done, r.redelivered,
                                  r.fenced, r.failures_total);
    for (std::size_t i = 0; i < r.hosts.size(); ++i) {
      const auto& h = r.hosts[i];
      out += fmt::format("{}{{\"name\":{},\"last_seen_ms\":{},\"chunks_held\":{},\"items_completed\":{},"
                         "\"items_per_second\":{:.1f}}}",
                         i ? "," : "", json_quote(h.name), h.last_seen.count(), h.chunks_held, h.items_completed,
                         h.items_per_second);
    }
    out += "],\"leases\":[";
    for (std::size_t i = 0; i < r.leases.size(); ++i) {
      const auto& l = r.leases[i];
      out += fmt::format(
          "{}{{\"chunk\":{},\"first\":{},\"end\":{},\"partial\":{},\"holder\":{},\"left_ms\":{},\"free\":{}}}",
          i ? "," : "", l.chunk, l.first, l.end, l.partial, json_quote(l.holder), l.left.count(), l.free);
    }
    out += "],\"failures\":[";
    for (std::size_t i = 0; i < r.failures.size(); ++i) {
      const auto& f = r.failures[i];
      out += fmt::format("{}{{\"position\":{},\"died\":{},\"pid\":{},\"signal\":{},\"exit_status\":{},\"host\":{},"
                         "\"type\":{},\"message\":{}}}",
                         i ? "," : "", f.position, f.died, f.pid, f.signal, f.exit_status, json_quote(f.host),
                         json_quote(f.type), json_quote(f.message));
    }
    return out + "]}\n";
  }
  std::string out = fmt::format("cluster job '{}' on {}: {} {}", j.name, r.url, j.kind, shown_state(j));
  if (j.abandoned) out += fmt::format(" (no host seen for {}, no lease alive)", human_duration(j.silent));
  if (j.state != "running") out += fmt::format(" {} ago", human_duration(j.since_end));
  out += fmt::format(", made {} ago, lease {}\n", human_duration(j.age), human_duration(j.lease));
  if (j.state == "stopped") out += fmt::format("  stopped by {}\n", j.stopped_by);
  out += fmt::format("  items: {}/{} ({}): {} done, {} failed, {} skipped, {} in running chunks\n", j.settled(),
                     j.total, percent_of(j), j.done_items, j.failed_items, j.skipped_items, j.partial_items);
  if (j.kind == "find_first") out += fmt::format("  best match: {}\n", j.best ? std::to_string(*j.best) : "none yet");
  out += fmt::format("  chunks: {} made, {} done, {} redelivered; {} calls fenced\n", r.chunks_made, r.chunks_done,
                     r.redelivered, r.fenced);
  out += fmt::format("hosts: {}\n", r.hosts.size());
  if (!r.hosts.empty())
    out += fmt::format("  {:<32} {:>10} {:>5} {:>12} {:>12}\n", "HOST", "LAST SEEN", "HELD", "ITEMS", "ITEMS/S");
  for (const auto& h : r.hosts)
    out += fmt::format("  {:<32} {:>10} {:>5} {:>12} {:>12.1f}\n", h.name, human_duration(h.last_seen) + " ago",
                       h.chunks_held, h.items_completed, h.items_per_second);
  if (j.state == "running") {
    out += fmt::format("leases: {}\n", r.leases.size());
    if (!r.leases.empty())
      out += fmt::format("  {:>8} {:>24} {:>10} {:<32} {:>10}\n", "CHUNK", "ITEMS", "PARTIAL", "HOLDER", "LEFT");
    for (const auto& l : r.leases)
      out += fmt::format("  {:>8} {:>24} {:>10} {:<32} {:>10}\n", l.chunk, fmt::format("{}-{}", l.first, l.end),
                         l.partial, l.free ? "(free: the next claim takes it)" : l.holder,
                         l.free ? "-" : l.left.count() > 0 ? human_duration(l.left) : "expired");
  }
  out += fmt::format("failures: {}", r.failures_total);
  if (!r.failures.empty())
    out += r.failures.size() < r.failures_total ? fmt::format(" (the lowest {})", r.failures.size())
                                                : std::string(" (lowest first)");
  out += "\n";
  for (const auto& f : r.failures) out += "  " + failure_text(f) + "\n";
  return out;
}

ClusterStopResult stop_cluster_job(const EngineOptions& engine, std::string_view job, const ClusterStopOptions& options) {
  Session s(engine, job);
  const auto keys = detail::job_keys(job);
  ClusterStopResult out;
  const std::string origin = fmt::format("{} ({})", options.origin.empty() ? "stop_cluster_job()" : options.origin,
                                         this_process());
  // (the job of that name, whichever its epoch: one round trip)
  const EngineReply reply = s.eval(detail::script(detail::scripts::stop), keys, {"", origin});
  const std::string tag = reply.elements.empty() ? "" : reply.elements[0].text;
  if (tag == "lost") s.no_such_job();
  if (tag == "ended") {  // (nothing to change)
    out.state = reply.elements.at(1).text;
    out.stopped_by = reply.elements.at(2).text;
    return out;
  }
  const auto stopped_at = Clock::now();
  try {  // (the stop's second call, once its message left: the keys expire; see scripts::stop)
    s.eval(detail::script(detail::scripts::expire), keys, {""});
  } catch (const Error&) {  // (the stop stands; the hosts' agents, or a later join, make them expire)
  }
  out.stopped = true;
  out.state = "stopped";
  out.stopped_by = origin;
  if (!options.wait) return out;
  out.waited = true;
  // The hosts seen within a lease before the stop, and whether each has been seen since.
  const EngineReply e = s.command({"HMGET", keys[0], "ended", "lease"});
  const long long ended = to_number(e.elements.at(0).text);
  const long long lease = e.elements.at(1).kind == EngineReply::Kind::string ? to_number(e.elements[1].text)
                                                                            : default_lease_ms;
  const milliseconds timeout = options.timeout.count() > 0 ? options.timeout : milliseconds(lease + 2000);
  for (;;) {
    out.acknowledged.clear();
    out.unacknowledged.clear();
    for (const auto& [host, seen_text] : s.hash(keys[8])) {
      const long long seen = to_number(seen_text);
      if (seen >= ended) out.acknowledged.push_back(host);
      else if (seen >= ended - lease) out.unacknowledged.push_back(host);
    }
    std::sort(out.acknowledged.begin(), out.acknowledged.end());
    std::sort(out.unacknowledged.begin(), out.unacknowledged.end());
    out.took = std::chrono::duration_cast<milliseconds>(Clock::now() - stopped_at);
    if (out.unacknowledged.empty() || out.took >= timeout) return out;
    std::this_thread::sleep_for(std::min(options.poll, timeout - out.took));
  }
}

std::vector<ClusterCleaned> clean_cluster_jobs(const EngineOptions& engine, const ClusterCleanOptions& options) {
  std::vector<ClusterCleaned> out;
  for (const ClusterJobSummary& j : list_cluster_jobs(engine)) {
    ClusterCleaned c{j.name, "", false};
    if (j.state != "running" && j.since_end >= options.older_than)
      c.why = fmt::format("{} {} ago", j.state, human_duration(j.since_end));
    else if (j.abandoned && j.silent >= options.older_than)
      c.why = fmt::format("abandoned: no host seen for {}", human_duration(j.silent));
    else
      continue;
    if (options.remove) {
      Session s(engine, j.name);
      const auto keys = detail::job_keys(j.name);
      const EngineReply epoch = s.command({"HGET", keys[0], "epoch"});
      if (epoch.kind == EngineReply::Kind::string) {
        const EngineReply reply = s.eval(detail::script(detail::scripts::forget), keys, {epoch.text, std::to_string(options.older_than.count())});
        c.removed = !reply.elements.empty() && reply.elements[0].text == "deleted";
        if (!c.removed && reply.elements.size() > 1) c.why += fmt::format(" (left alone: {})", reply.elements[1].text);
      }
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace procshare
