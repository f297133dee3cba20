// Cluster reports: what `procshare-ctl cluster ls / show / watch / stop / clean` do, as
// library calls any program can make (the controller only prints them).
//
// Reads: every call connects to the engine with EngineOptions (the password from the
//   environment or a file, never the URL) and reads a job's keys (psj:{JOB}:*, see
//   lib/detail/cluster_scripts.hpp) with plain reads: SCAN and HSCAN with a COUNT, never
//   KEYS, so a large engine is walked in bounded steps. Times are the server's (TIME),
//   the clock the leases use, never this machine's.
// Writes: only stop_cluster_job (the job's own stop script, as cancel() runs it) and
//   clean_cluster_jobs with `remove` set (deletes a job's keys in one script that checks
//   again, inside the engine, that the job ended or is abandoned).
// Abandoned: a job still "running" whose every lease deadline has passed and none of
//   whose hosts has been seen within its lease: nobody works on it, and nobody will
//   unless a host joins it again.
// Errors: NotFound (no such job), InvalidArgument (a bad URL or job name),
//   EngineUnavailable, AuthFailed, PermissionDenied (the engine's, as Engine throws them),
//   Error (a job's keys that do not hold together). Messages name the URL (never the
//   password) and the job: "cluster job 'sweep-1' on redis://127.0.0.1:6379: no such job".
//
// Built with the cluster layer (library procshare_cluster, when hiredis is found).
#pragma once

#include <procshare/cluster.hpp>
#include <procshare/report.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace procshare {

// One job as `cluster ls` lists it (and `cluster watch` draws it).
struct ClusterJobSummary {
  std::string name;                 // the job's name (ClusterOptions::job)
  std::string kind;                 // "map" or "find_first"
  std::string state;                // "running", "done" or "stopped"
  bool abandoned = false;           // running, but no lease alive and no host seen within the lease
  std::string stopped_by;           // who stopped it ("" unless stopped)
  std::uint64_t hosts = 0;          // hosts that ever joined
  std::uint64_t total = 0;          // items in the job
  std::uint64_t done_items = 0;     // items of completed chunks that ran and succeeded
  std::uint64_t failed_items = 0;   // ... that failed
  std::uint64_t skipped_items = 0;  // ... that were skipped (stopped, or above find_first's match)
  std::uint64_t partial_items = 0;  // items finished in chunks still running (0 once it ended)
  std::optional<std::uint64_t> best;  // find_first's match so far, if any
  std::chrono::milliseconds lease{0};      // the lease of the host that made the job
  std::chrono::milliseconds age{0};        // since the job was made
  std::chrono::milliseconds since_end{0};  // since it ended (0 while running)
  std::chrono::milliseconds silent{0};     // since any host was last seen
  // done + failed + skipped + partial items, at most the total: how far it got.
  std::uint64_t settled() const {
    const std::uint64_t sum = done_items + failed_items + skipped_items + partial_items;
    return sum < total ? sum : total;
  }
};

// One host of a job, as `cluster show` lists it.
struct ClusterHostReport {
  std::string name;                    // ClusterOptions::host ("hostname:pid" by default)
  std::chrono::milliseconds last_seen{0};  // how long ago its last engine call was
  std::uint64_t chunks_held = 0;       // chunks it holds a lease on now
  std::uint64_t items_completed = 0;   // items of the chunks it completed (counted ones)
  double items_per_second = 0;         // items_completed over the job's life (made to end, or now)
};

// A chunk in the job's leases: claimed by a host (`left` < 0: expired, to be handed out
// again), or free (held by nobody, see `free`).
struct ClusterLease {
  std::uint64_t chunk = 0;
  std::uint64_t first = 0, end = 0;    // its items [first, end)
  std::uint64_t partial = 0;           // items its holder reported finished
  std::string holder;                  // the holding host's name ("" if free)
  std::chrono::milliseconds left{0};   // until the lease runs out (negative: it has; 0 if free)
  bool free = false;                   // held by nobody (the part of an option its host did
                                       // not keep): the next claim takes it
};

// One failed item, decoded from the job's fail zset (lib/cluster.cpp writes it).
struct ClusterFailure {
  std::uint64_t position = 0;  // the item's position in the job
  bool died = false;           // its worker died (WorkerDied) rather than threw (TaskError)
  int pid = 0;                 // the worker's pid on its host
  int signal = 0;              // died: the signal that killed it (0: it exited)
  int exit_status = 0;         // died without a signal: its exit status
  std::string host;            // the host that ran it
  std::string type;            // threw: the exception's type
  std::string message;         // threw: its what()
};

// One job in full, as `cluster show` prints it.
struct ClusterJobReport {
  std::string url;                       // the engine, as messages name it
  ClusterJobSummary summary;
  std::vector<ClusterHostReport> hosts;  // by name
  std::vector<ClusterLease> leases;      // by chunk
  std::uint64_t chunks_made = 0, chunks_done = 0;
  std::uint64_t redelivered = 0;  // chunks handed out again after their lease ran out
  std::uint64_t fenced = 0;       // calls refused for a lease held elsewhere
  std::vector<ClusterFailure> failures;  // the lowest positions first (at most the number asked)
  std::uint64_t failures_total = 0;      // failures recorded in all
};

// Every job on the engine, by name. Throws the engine's errors (see the top).
PROCSHARE_API std::vector<ClusterJobSummary> list_cluster_jobs(const EngineOptions& engine);

// One job's summary (what `cluster watch` polls). Throws NotFound if the job is not in
// the engine (never made, or its keys expired or were cleaned), InvalidArgument for a
// name a job cannot have.
PROCSHARE_API ClusterJobSummary summarize_cluster_job(const EngineOptions& engine, std::string_view job);

// One job in full, with its `failures` lowest failures. Throws as summarize_cluster_job.
PROCSHARE_API ClusterJobReport inspect_cluster_job(const EngineOptions& engine, std::string_view job,
                                                   std::size_t failures = 5);

// The table `cluster ls` prints (a header, then a line a job), or a JSON array.
PROCSHARE_API std::string format_cluster_jobs(const std::vector<ClusterJobSummary>& jobs, ReportFormat format);
// The report `cluster show` prints, or one JSON object. Both end with a newline.
PROCSHARE_API std::string format_cluster_job(const ClusterJobReport& report, ReportFormat format);

// A duration for people: "850ms", "12.3s", "5m10s", "3h05m", "2d04h".
PROCSHARE_API std::string human_duration(std::chrono::milliseconds duration);

// How stop_cluster_job stops a job.
struct ClusterStopOptions {
  // Who stopped it, as every host's Stopped says ("the job was stopped by WHO"); "" means
  // "stop_cluster_job() by USER@HOST pid PID".
  std::string origin{};
  // Wait until every host seen within a lease before the stop has learned of it (each
  // host's next engine call after the stop records it as seen).
  bool wait = true;
  // The longest to wait; 0 means the job's lease plus 2 s (a live host calls the engine
  // at least every lease / 3 while it works on the job).
  std::chrono::milliseconds timeout{0};
  // How often the hosts' last-seen times are read while waiting.
  std::chrono::milliseconds poll{20};
};

// What stop_cluster_job did.
struct ClusterStopResult {
  bool stopped = false;       // this call stopped it (false: it had ended already)
  std::string state;          // the job's state now: "stopped", or how it had ended
  std::string stopped_by;     // who stopped it (this call's origin, or an earlier stop's)
  bool waited = false;        // it waited for the hosts (ClusterStopOptions::wait)
  std::vector<std::string> acknowledged;    // hosts seen since the stop
  std::vector<std::string> unacknowledged;  // hosts seen within a lease before the stop and not
                                            // since, when the wait ran out (presumed dead)
  std::chrono::milliseconds took{0};        // from the stop to the last acknowledgement (or give-up)
};

// Stops a running job with its stop script: every host's get() then throws Stopped
// naming `options.origin`; unstarted chunks are dropped. Then, unless options.wait is
// false, waits (polling the hosts' last-seen times) as ClusterStopOptions says. A job
// that had ended already is left as it is (the result says its state).
// Throws as summarize_cluster_job.
PROCSHARE_API ClusterStopResult stop_cluster_job(const EngineOptions& engine, std::string_view job,
                                                 const ClusterStopOptions& options = {});

// Which jobs clean_cluster_jobs removes.
struct ClusterCleanOptions {
  // Delete their keys (false: a dry run that only lists them).
  bool remove = false;
  // Only jobs that ended at least this long ago, or abandoned jobs whose hosts have been
  // silent at least this long (and at least a lease).
  std::chrono::milliseconds older_than{0};
};

// A job clean_cluster_jobs removed (or would remove).
struct ClusterCleaned {
  std::string name;
  std::string why;  // "done 5m ago", "stopped 12s ago", "abandoned: no host seen for 3m"
  bool removed = false;  // its keys were deleted (false in a dry run, or if it came back to life)
};

// Jobs that ended, or are abandoned, and their keys (deleted only with `remove`, each job
// in one script that checks again that it ended or is abandoned: a running job is never
// touched). Throws the engine's errors.
PROCSHARE_API std::vector<ClusterCleaned> clean_cluster_jobs(const EngineOptions& engine,
                                                             const ClusterCleanOptions& options = {});

}  // namespace procshare
