// procshare-ctl: look at and steer procshare segments from another terminal.
//
//   procshare-ctl ls [--json]              every segment in /dev/shm: size, bytes used by objects and
//                                          reserved in memory, creator, live or stale
//   procshare-ctl show SEG [--json]        its objects and values, poison and owner-death marks,
//                                          and a pool's workers and jobs
//   procshare-ctl get SEG NAME [--json]    one object's value
//   procshare-ctl set SEG NAME VALUE       store a value, parsed by the object's type
//   procshare-ctl stop SEG [JOB]           raise the stop flag of a pool's job (or all jobs)
//   procshare-ctl watch SEG                a live progress bar of a pool's jobs (plain lines
//                                          when stdout is not a terminal): items settled of
//                                          the total, and done/failed/skipped once some
//                                          failed or were skipped
//   (stop and watch take the pool's control segment, or a job's data segment whose
//   creator made exactly one pool)
//   procshare-ctl rm SEG [--force]         remove a segment's name (only a procshare segment's,
//                                          unless --force)
//   procshare-ctl clean [--dry-run]        remove segments no process maps any more
//   --any-owner (before the command)       also open segments other users own
//   --any-mode (before the command)        also open segments whose mode is wider than 0600
//
//
//   procshare-ctl cluster ls URL [--json]          the jobs on a Redis engine: kind, state (running,
//                                                  done, stopped, or abandoned: running but no host
//                                                  seen and no lease alive for a lease), hosts,
//                                                  items settled of the total, find_first's match, age
//   procshare-ctl cluster show URL JOB [--json]    one job: its hosts (last seen, chunks held, items
//                                                  completed, rate), leases, redelivered and fenced
//                                                  chunks, who stopped it, its lowest failures
//   procshare-ctl cluster watch URL JOB            a live progress bar (plain lines when stdout is
//                                                  not a terminal) until the job ends (exit 0), or
//                                                  is abandoned (exit 1)
//   procshare-ctl cluster stop URL JOB [--no-wait] stop it on every host (their get() throws Stopped
//                                                  naming procshare-ctl), then wait (at most its lease
//                                                  + 2 s, or --timeout) until every host seen within a
//                                                  lease before the stop has learned of it; exit 1
//                                                  naming those that did not (presumed dead), or if
//                                                  it had ended already (nothing changed)
//   procshare-ctl cluster clean URL [--yes] [--older-than 1d]
//                                                  the jobs that ended or are abandoned (a dry run
//                                                  unless --yes, which deletes their keys)
//   (URL: redis://[user@]host[:port]; the password from PROCSHARE_REDIS_PASSWORD, or the
//   first line of --password-file FILE; --insecure-transport for a host that is not a
//   loopback address. Built when hiredis is found; otherwise they say so, exit 2.)
//
// Exit status: 0 done, 1 not found or refused (the message says why), 2 usage.
#include <procshare/procshare.hpp>
#ifdef PROCSHARE_CTL_CLUSTER
#include <procshare/cluster_report.hpp>
#endif

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace {

using namespace std::chrono_literals;

procshare::OpenOptions open_options;  // --any-owner

procshare::Segment open_segment(const std::string& name) { return procshare::Segment::open(name, open_options); }

int list(bool json) {
  const auto segments = procshare::Segment::list();
  if (json) {
    std::string out = "[";
    for (std::size_t i = 0; i < segments.size(); ++i) {
      const auto& s = segments[i];
      out += fmt::format(
          "{}{{\"name\":{},\"procshare\":{},\"problem\":{},\"size\":{},\"used\":{},\"reserved\":{},"
          "\"creator_pid\":{},\"creator_alive\":{},\"in_use\":{},\"age_seconds\":{},\"objects\":{},\"pool\":{}}}",
          i ? "," : "", procshare::json_quote(s.name), s.procshare, procshare::json_quote(s.problem), s.size, s.used,
          s.reserved, s.creator_pid, s.creator_alive, s.in_use, s.age_seconds, s.objects, s.pool);
    }
    fmt::print("{}]\n", out);
    return 0;
  }
  // USED: bytes allocated to objects; RESERVED: memory /dev/shm really holds for the file
  // (a pool takes most of its segment as one object, but reserves it only as it is used).
  fmt::print("{:<40} {:>8} {:>8} {:>8} {:>8} {:<7} {:>7} {:>7}\n", "NAME", "SIZE", "USED", "RESERVED",
             "CREATOR", "STATUS", "AGE", "OBJECTS");
  for (const auto& s : segments) {
    if (!s.procshare) {
      fmt::print("{:<40} {:>8} {:>8} {:>8} {:>8} {:<7}\n", s.name, procshare::human_bytes(s.size), "-",
                 procshare::human_bytes(s.reserved), "-",
                 s.problem == "foreign" || s.problem == "empty" ? "foreign" : "corrupt");
      continue;
    }
    fmt::print("{:<40} {:>8} {:>8} {:>8} {:>8} {:<7} {:>6}s {:>7}{}\n", s.name, procshare::human_bytes(s.size),
               procshare::human_bytes(s.used), procshare::human_bytes(s.reserved), s.creator_pid,
               s.in_use ? "live" : "stale", s.age_seconds, s.objects, s.pool ? "  (pool)" : "");
  }
  return 0;
}

// The same report as procshare::segment_report gives any program.
int show(const std::string& name, bool json) {
  auto segment = open_segment(name);
  fmt::print("{}", procshare::segment_report(segment, json ? procshare::ReportFormat::json
                                                          : procshare::ReportFormat::text));
  return 0;
}

int get(const std::string& name, const std::string& object, bool json) {
  auto segment = open_segment(name);
  const std::string value = segment.value_text(object);
  if (json) {
    std::string type;
    for (const auto& o : segment.objects())
      if (o.name == object) type = o.description;
    fmt::print("{{\"name\":{},\"type\":{},\"value\":{}}}\n", procshare::json_quote(object), procshare::json_quote(type),
               procshare::json_quote(value));
  } else {
    fmt::print("{}\n", value);
  }
  return 0;
}

int set(const std::string& name, const std::string& object, const std::string& value) {
  auto segment = open_segment(name);
  segment.set_value_text(object, value);
  fmt::print("{} = {}\n", object, segment.value_text(object));
  return 0;
}

// The segment holding the pool that `name` is about: `name` itself if it is a pool's
// control segment; else, given a job's data segment, the one pool its creator made (said
// on stderr). With none or several, `name` itself: inspect_pool's error then names them.
procshare::Segment open_pool_segment(const std::string& name) {
  auto segment = open_segment(name);
  for (const auto& object : segment.objects())
    if (object.kind == procshare::ObjectKind::pool) return segment;
  const auto pools = procshare::pools_of_creator(segment);
  if (pools.size() != 1) return segment;
  fmt::print(stderr, "procshare-ctl: segment '{}' holds no pool; using the pool its creator (pid {}) made: '{}'\n",
             name, segment.creator_pid(), pools[0]);
  return open_segment(pools[0]);
}

int stop(const std::string& name, std::uint64_t job) {
  auto segment = open_pool_segment(name);
  const std::size_t stopped = procshare::stop_pool_jobs(segment, job);
  if (stopped == 0) {
    fmt::print(stderr, "procshare-ctl: segment '{}': no running job{}\n", name,
               job ? fmt::format(" with id {}", job) : "");
    return 1;
  }
  fmt::print("stop requested for {} job{}\n", stopped, stopped == 1 ? "" : "s");
  return 0;
}

int watch(const std::string& name, std::chrono::milliseconds interval) {
  const bool terminal = ::isatty(STDOUT_FILENO) != 0;
  auto segment = open_pool_segment(name);
  const auto start = std::chrono::steady_clock::now();
  std::uint64_t first_done = 0;
  bool seen_job = false;
  auto last_plain = std::chrono::steady_clock::time_point{};
  for (;;) {
    const procshare::PoolStatus status = procshare::inspect_pool(segment);
    std::uint64_t done = 0, total = 0, failed = 0, skipped = 0;
    for (const auto& j : status.jobs) {
      done += j.done;
      failed += j.failed;
      skipped += j.skipped;
      total += j.total;
    }
    // The pool lives while its supervisor does (this process maps the segment itself, so
    // the segment's own liveness says nothing here).
    const bool alive = status.supervisor_pid > 0 && ::kill(status.supervisor_pid, 0) == 0;
    if (!status.jobs.empty()) {
      if (!seen_job) first_done = done;
      seen_job = true;
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = seconds > 0 ? (done - first_done) / seconds : 0;
      // Settled items: done, failed, or skipped (a stop drops unstarted work). The
      // percentage and the count both say how many are settled (floored, so 100% means
      // all), and the parts show when some failed or were skipped.
      const std::uint64_t settled = std::min(done + failed + skipped, total);
      const std::uint64_t percent = total ? settled * 100 / total : 0;
      const std::string eta = rate > 0 ? fmt::format("{:.0f}s", (total - settled) / rate) : "?";
      const std::string parts = failed || skipped ? fmt::format("{} done, {} failed, {} skipped", done, failed, skipped)
                                                  : std::string();
      if (terminal) {
        constexpr int width = 30;
        const auto filled = static_cast<int>(total ? settled * width / total : 0);
        fmt::print("\r[{}{}] {:3}% {}/{} items  {:.0f} items/s  ETA {}{}\x1b[K", std::string(filled, '#'),
                   std::string(width - filled, '.'), percent, settled, total, rate, eta,
                   parts.empty() ? "" : "  (" + parts + ")");
        std::fflush(stdout);
      } else if (std::chrono::steady_clock::now() - last_plain >= 1s) {
        last_plain = std::chrono::steady_clock::now();
        fmt::print("{}% {}/{} items, {:.0f} items/s, ETA {}{}\n", percent, settled, total, rate, eta,
                   parts.empty() ? "" : " (" + parts + ")");
        std::fflush(stdout);
      }
    } else if (seen_job || !alive || status.state != "running") {
      if (terminal) fmt::print("\n");
      fmt::print("pool {}: {} items done\n", alive ? status.state : "ended", status.items_done);
      return 0;
    }
    if (!alive) {
      if (terminal) fmt::print("\n");
      fmt::print("pool ended: {} items done\n", status.items_done);
      return 0;
    }
    std::this_thread::sleep_for(interval);
  }
}

// ---------------------------------------------------------------- cluster

// What the `cluster` commands were given.
struct ClusterArguments {
  std::string url, job, password_file, older_than;
  bool insecure_transport = false, no_wait = false, yes = false;
  int timeout_ms = 0;
};

#ifdef PROCSHARE_CTL_CLUSTER

procshare::EngineOptions engine_options(const ClusterArguments& a) {
  return procshare::EngineOptions{.url = a.url, .password_file = a.password_file,
                                  .insecure_transport = a.insecure_transport};
}

// "cluster job 'J' on URL", as the library's messages say it.
std::string job_object(const ClusterArguments& a) {
  return fmt::format("cluster job '{}' on {}", a.job, procshare::detail::parse_engine_url(a.url).text);
}

// The progress of a job as a line: "42% 420/1000 items, 150 items/s, ETA 4s (... failed ...)".
std::string progress_line(const procshare::ClusterJobSummary& j, double rate) {
  const std::uint64_t settled = j.settled();
  const std::uint64_t percent = j.total ? settled * 100 / j.total : 100;
  const std::string eta = rate > 0 ? fmt::format("{:.0f}s", static_cast<double>(j.total - settled) / rate) : "?";
  const std::string parts =
      j.failed_items || j.skipped_items
          ? fmt::format(" ({} done, {} failed, {} skipped)", j.done_items, j.failed_items, j.skipped_items)
          : std::string();
  return fmt::format("{}% {}/{} items, {} hosts, {:.0f} items/s, ETA {}{}", percent, settled, j.total, j.hosts, rate,
                     eta, parts);
}

int cluster_watch(const ClusterArguments& a, std::chrono::milliseconds interval) {
  const bool terminal = ::isatty(STDOUT_FILENO) != 0;
  const auto options = engine_options(a);
  const auto start = std::chrono::steady_clock::now();
  std::optional<std::uint64_t> first_settled;
  auto last_plain = std::chrono::steady_clock::time_point{};
  for (;;) {
    const procshare::ClusterJobSummary j = procshare::summarize_cluster_job(options, a.job);
    const auto now = std::chrono::steady_clock::now();
    if (!first_settled) first_settled = j.settled();
    const double seconds = std::chrono::duration<double>(now - start).count();
    const double rate = seconds > 0 ? static_cast<double>(j.settled() - *first_settled) / seconds : 0;
    if (j.state != "running" || j.abandoned) {
      if (terminal) fmt::print("\n");
      if (j.abandoned) {
        fmt::print("{}: abandoned: no host seen for {} and no lease alive (lease {}); {}/{} items settled\n",
                   job_object(a), procshare::human_duration(j.silent), procshare::human_duration(j.lease),
                   j.settled(), j.total);
        return 1;
      }
      fmt::print("{}: {}{}: {}/{} items settled ({} done, {} failed, {} skipped){}\n", job_object(a), j.state,
                 j.state == "stopped" ? " by " + j.stopped_by : "", j.settled(), j.total, j.done_items,
                 j.failed_items, j.skipped_items, j.best ? fmt::format(", best match {}", *j.best) : "");
      return 0;
    }
    if (terminal) {
      constexpr int width = 30;
      const auto filled = static_cast<int>(j.total ? j.settled() * width / j.total : width);
      fmt::print("\r[{}{}] {}\x1b[K", std::string(filled, '#'), std::string(width - filled, '.'),
                 progress_line(j, rate));
      std::fflush(stdout);
    } else if (now - last_plain >= 1s) {
      last_plain = now;
      fmt::print("{}\n", progress_line(j, rate));
      std::fflush(stdout);
    }
    std::this_thread::sleep_for(interval);
  }
}

int cluster_stop(const ClusterArguments& a) {
  const procshare::ClusterStopResult r = procshare::stop_cluster_job(
      engine_options(a), a.job,
      {.origin = "procshare-ctl cluster stop", .wait = !a.no_wait, .timeout = std::chrono::milliseconds(a.timeout_ms)});
  const std::string object = job_object(a);
  if (!r.stopped) {
    fmt::print(stderr, "procshare-ctl: {}: not running: it is {}{}; nothing changed\n", object, r.state,
               r.state == "stopped" ? " (by " + r.stopped_by + ")" : "");
    return 1;
  }
  if (!r.waited) {
    fmt::print("stopped {} (not waiting for its hosts to learn of it)\n", object);
    return 0;
  }
  const std::string acked = r.acknowledged.empty() ? "" : fmt::format(": {}", fmt::join(r.acknowledged, ", "));
  if (!r.unacknowledged.empty()) {
    fmt::print(stderr,
               "procshare-ctl: {}: stopped, but {} host{} seen within a lease before the stop did not "
               "acknowledge it within {} (presumed dead): {}; acknowledged by {}{}\n",
               object, r.unacknowledged.size(), r.unacknowledged.size() == 1 ? "" : "s",
               procshare::human_duration(r.took), fmt::join(r.unacknowledged, ", "), r.acknowledged.size(), acked);
    return 1;
  }
  if (r.acknowledged.empty())
    fmt::print("stopped {}; no host had been seen within a lease before the stop: none to wait for\n", object);
  else
    fmt::print("stopped {}; acknowledged within {} by {} host{}{}\n", object, procshare::human_duration(r.took),
               r.acknowledged.size(), r.acknowledged.size() == 1 ? "" : "s", acked);
  return 0;
}

// "90s", "5m", "1h", "2d", "500ms" -> milliseconds; nullopt if it is not one of those.
std::optional<std::chrono::milliseconds> parse_duration(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0 || digits > 9) return std::nullopt;  // (no overflow in ms)
  const long long n = std::stoll(text.substr(0, digits));
  const std::string unit = text.substr(digits);
  for (const auto& [name, ms] : {std::pair{"ms", 1LL}, {"s", 1000LL}, {"m", 60'000LL}, {"h", 3'600'000LL},
                                 {"d", 86'400'000LL}})
    if (unit == name) return std::chrono::milliseconds(n * ms);
  return std::nullopt;
}

int cluster_clean(const ClusterArguments& a) {
  procshare::ClusterCleanOptions options{.remove = a.yes};
  if (!a.older_than.empty()) {
    const auto older = parse_duration(a.older_than);
    if (!older) {
      fmt::print(stderr, "procshare-ctl: --older-than '{}': give a number and a unit: ms, s, m, h or d (1d)\n",
                 a.older_than);
      return 2;
    }
    options.older_than = *older;
  }
  const auto cleaned = procshare::clean_cluster_jobs(engine_options(a), options);
  for (const auto& c : cleaned)
    fmt::print("{} cluster job '{}' ({})\n", !a.yes ? "would delete" : c.removed ? "deleted" : "kept", c.name, c.why);
  if (!a.yes && !cleaned.empty()) fmt::print("(a dry run: --yes deletes them)\n");
  return 0;
}

#endif  // PROCSHARE_CTL_CLUSTER

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"procshare-ctl: look at and steer procshare segments and pools"};
  app.require_subcommand(1);
  app.add_flag("--any-owner", open_options.allow_other_owner,
               "Open segments other users own too (refused by default)");
  bool any_mode = false;
  app.add_flag("--any-mode", any_mode,
               "Open segments whose mode is wider than 0600 too (refused by default)");
  bool json = false, dry_run = false, force = false;
  std::string segment, object, value;
  std::uint64_t job = 0;
  int interval_ms = 200;

  auto* ls = app.add_subcommand("ls", "List segments in /dev/shm (live or stale)");
  ls->add_flag("--json", json, "Print JSON");
  auto* show_cmd = app.add_subcommand("show", "Show a segment's objects, values and pool");
  show_cmd->add_option("SEG", segment, "Segment name")->required();
  show_cmd->add_flag("--json", json, "Print JSON");
  auto* get_cmd = app.add_subcommand("get", "Print one object's value");
  get_cmd->add_option("SEG", segment, "Segment name")->required();
  get_cmd->add_option("NAME", object, "Object name")->required();
  get_cmd->add_flag("--json", json, "Print JSON");
  auto* set_cmd = app.add_subcommand("set", "Store a value, parsed by the object's type");
  set_cmd->add_option("SEG", segment, "Segment name")->required();
  set_cmd->add_option("NAME", object, "Object name")->required();
  set_cmd->add_option("VALUE", value, "The new value")->required();
  auto* stop_cmd = app.add_subcommand("stop", "Raise the stop flag of a pool's job (all jobs by default)");
  stop_cmd->add_option("SEG", segment, "The pool's control segment (or a job's data segment)")->required();
  stop_cmd->add_option("JOB", job, "Job id (see show)");
  auto* watch_cmd = app.add_subcommand("watch", "Show a live progress bar of a pool's jobs");
  watch_cmd->add_option("SEG", segment, "The pool's control segment (or a job's data segment)")->required();
  watch_cmd->add_option("--interval", interval_ms, "Refresh period in milliseconds")->check(CLI::Range(10, 10000));
  auto* rm_cmd = app.add_subcommand("rm", "Remove a segment's name from /dev/shm");
  rm_cmd->add_option("SEG", segment, "Segment name")->required();
  rm_cmd->add_flag("--force", force,
                   "Remove the file even if it is not a procshare segment (refused by default)");
  auto* clean_cmd = app.add_subcommand("clean", "Remove segments no process maps any more");
  clean_cmd->add_flag("--dry-run", dry_run, "Only list what would be removed");

  ClusterArguments cluster_args;
  auto* cluster_cmd = app.add_subcommand("cluster", "Look at and steer cluster jobs on a Redis engine");
  cluster_cmd->require_subcommand(1);
  cluster_cmd->add_option("--password-file", cluster_args.password_file,
                          "Read the engine's password from this file's first line (when "
                          "PROCSHARE_REDIS_PASSWORD is not set)");
  cluster_cmd->add_flag("--insecure-transport", cluster_args.insecure_transport,
                        "Allow an engine that is not on a loopback address (no TLS: a private network)");
  const auto cluster_sub = [&](const char* name, const char* what, bool job) {
    auto* sub = cluster_cmd->add_subcommand(name, what);
    sub->fallthrough();  // (--password-file and --insecure-transport after the command too)
    sub->add_option("URL", cluster_args.url, "The engine: redis://[user@]host[:port]")->required();
    if (job) sub->add_option("JOB", cluster_args.job, "The job's name")->required();
    return sub;
  };
  auto* cluster_ls = cluster_sub("ls", "List the jobs on the engine", false);
  cluster_ls->add_flag("--json", json, "Print JSON");
  auto* cluster_show = cluster_sub("show", "Show a job: hosts, leases, failures", true);
  cluster_show->add_flag("--json", json, "Print JSON");
  auto* cluster_watch_cmd = cluster_sub("watch", "Show a live progress bar of a job until it ends", true);
  cluster_watch_cmd->add_option("--interval", interval_ms, "Refresh period in milliseconds")
      ->check(CLI::Range(10, 10000));
  auto* cluster_stop_cmd = cluster_sub("stop", "Stop a job on every host and wait for them to learn of it", true);
  cluster_stop_cmd->add_flag("--no-wait", cluster_args.no_wait, "Return once the job is stopped");
  cluster_stop_cmd->add_option("--timeout", cluster_args.timeout_ms,
                               "The longest to wait for the hosts, in milliseconds (default: the job's lease + 2000)")
      ->check(CLI::Range(1, 24 * 3600 * 1000));
  auto* cluster_clean_cmd = cluster_sub("clean", "Delete the keys of jobs that ended or are abandoned", false);
  cluster_clean_cmd->add_flag("--yes", cluster_args.yes, "Delete them (without it: a dry run that lists them)");
  cluster_clean_cmd->add_option("--older-than", cluster_args.older_than,
                                "Only jobs that ended, or whose hosts went silent, this long ago (90s, 5m, 1d)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  if (any_mode) open_options.max_permissions = 07777;
  try {
    if (cluster_cmd->parsed()) {
#ifdef PROCSHARE_CTL_CLUSTER
      if (cluster_ls->parsed()) {
        const auto jobs = procshare::list_cluster_jobs(engine_options(cluster_args));
        fmt::print("{}", procshare::format_cluster_jobs(jobs, json ? procshare::ReportFormat::json
                                                                   : procshare::ReportFormat::text));
        return 0;
      }
      if (cluster_show->parsed()) {
        const auto report = procshare::inspect_cluster_job(engine_options(cluster_args), cluster_args.job);
        fmt::print("{}", procshare::format_cluster_job(report, json ? procshare::ReportFormat::json
                                                                    : procshare::ReportFormat::text));
        return 0;
      }
      if (cluster_watch_cmd->parsed()) return cluster_watch(cluster_args, std::chrono::milliseconds(interval_ms));
      if (cluster_stop_cmd->parsed()) return cluster_stop(cluster_args);
      if (cluster_clean_cmd->parsed()) return cluster_clean(cluster_args);
#else
      (void)cluster_ls, (void)cluster_show, (void)cluster_watch_cmd, (void)cluster_stop_cmd, (void)cluster_clean_cmd;
      fmt::print(stderr,
                 "procshare-ctl: the cluster commands were not built: hiredis was not found when procshare was "
                 "configured (apt-get install libhiredis-dev, then meson setup --reconfigure)\n");
#endif
      return 2;
    }
    if (ls->parsed()) return list(json);
    if (show_cmd->parsed()) return show(segment, json);
    if (get_cmd->parsed()) return get(segment, object, json);
    if (set_cmd->parsed()) return set(segment, object, value);
    if (stop_cmd->parsed()) return stop(segment, job);
    if (watch_cmd->parsed()) return watch(segment, std::chrono::milliseconds(interval_ms));
    if (rm_cmd->parsed()) {
      bool removed = false;
      try {
        removed = procshare::Segment::remove(segment, {.force = force});
      } catch (const procshare::CorruptSegment& e) {
        fmt::print(stderr, "procshare-ctl: {} (rm --force removes any file)\n", e.what());
        return 1;
      }
      if (!removed) {
        fmt::print(stderr, "procshare-ctl: segment '{}': no such segment\n", segment);
        return 1;
      }
      return 0;
    }
    if (clean_cmd->parsed()) {
      for (const auto& name : procshare::Segment::clean(dry_run))
        fmt::print("{} {}\n", dry_run ? "would remove" : "removed", name);
      return 0;
    }
  } catch (const procshare::Error& e) {
    fmt::print(stderr, "procshare-ctl: {}\n", e.what());
    return 1;
  }
  return 2;
}
