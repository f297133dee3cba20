// Cluster: one job on many hosts, on a Redis server. A program on each host makes a
// Cluster with the engine's URL and a job name, and runs the same map / map_async /
// find_first call with its own local Pool; every host that does joins the same job (a
// host may join late, or leave). The job's items are cut into chunks; a host claims a
// chunk, runs it on its Pool, and completes it; progress, the early stop and find_first's
// best match are shared through the engine.
//
//   procshare::Pool pool({.workers = 8});
//   procshare::Cluster cluster({.url = "redis://psr@10.0.0.5:6379", .job = "sweep-7",
//                               .insecure_transport = true});   // (a private network)
//   auto scores = cluster.map(pool, procshare::Range{0, 10'000'000}, score, seed);
//
// Exactly-once accounting, at-least-once execution: a chunk whose host died, froze or was
//   cut off is handed out again once its lease runs out, and only the completion of its
//   current lease holder counts (a fencing token checked by the engine), so totals are
//   exact; but the chunk's items may have run twice. Tasks must be idempotent for their
//   outside effects (files, databases), as with Celery's acks_late or Ray's retries.
// Results: every host gets every result of a map. A chunk's results go through the
//   engine when computing them again would take longer than moving them; otherwise each
//   host that needs them computes them again (uncounted): f must give the same result
//   for the same item, and such cheap items run once on every host that gets the results
//   (their outside effects too). ClusterOptions::results = ResultTransfer::engine sends
//   every result: each item then runs once (more only after a failure).
// Items: a Range, or values that are the same on every host (their hash is checked when
//   a host joins: JobMismatch names the field that differs); so are the arguments, the
//   kind of call, the chunk size and the task's type.
// Where the work runs: in the calling process's get() / wait_for() / progress() (and the
//   blocking map / find_first): the host claims chunks, keeps its pool busy, renews its
//   leases and completes chunks only while one of those runs. A host that does not call
//   them for longer than the lease loses its chunks to the other hosts (they are rerun).
// Failure is an error, never a hang: every engine call has a connect and a command
//   timeout, and a server that cannot be reached for `unavailable_after` is
//   EngineUnavailable; a server that lost the job (a restart without persistence) is
//   JobLost; AuthFailed, PermissionDenied (with the server's ACL text). Each message
//   names the URL (never the password), the job and the host.
// Engine keys: psj:{JOB}:meta, :leases, :owner, :partial, :done, :doneby, :fail, :res,
//   :hosts, :chunks, :claims (one hash tag: one Redis Cluster slot), changed only by the scripts in
//   lib/detail/cluster_scripts.hpp; channel psj:{JOB}:ctl. An ACL user restricted to
//   them: ACL SETUSER psr on >PASSWORD resetkeys ~psj:* resetchannels &psj:* -@all
//   +@read +@write +@pubsub +eval +evalsha +script|load +ping +time -@dangerous +info
//   (+info after -@dangerous, which takes INFO away: JobLost names the server run_id).
//   A job's keys expire `keep` after it ended (done; stopped: after the stop's second
//   call, see lib/detail/cluster_scripts.hpp).
//
// Built only when hiredis is found (meson option `cluster`, auto); link procshare_cluster.
// hiredis 0.14 has no TLS: a URL whose host is not a loopback address is refused unless
// the options' insecure_transport says the network is private (or an stunnel runs).
#pragma once

#include <procshare/error.hpp>
#include <procshare/pool.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

namespace procshare {

// The engine could not be reached, or stopped answering (the message says for how long
// and the last error).
class PROCSHARE_API EngineUnavailable : public Error {
public:
  using Error::Error;
};
// The engine refused the password (WRONGPASS), or wants one (NOAUTH).
class PROCSHARE_API AuthFailed : public Error {
public:
  using Error::Error;
};
// The job's state vanished from the engine while a host worked on it (a server restarted
// without persistence, keys evicted or deleted): never a silent restart from zero.
class PROCSHARE_API JobLost : public Error {
public:
  using Error::Error;
};
// A host joined a job with other items, arguments, kind, chunk size or task than the
// job was made with: the message names the field and both values.
class PROCSHARE_API JobMismatch : public Error {
public:
  using Error::Error;
};

// How to reach the engine.
struct EngineOptions {
  // redis://[user@]host[:port]: the user is a Redis ACL user ("" is the default user);
  // the port is 6379 unless given. A password in the URL is refused.
  std::string url{};
  // The password: from this environment variable if it is set, else from
  // `password_file` (its first line) if given, else none.
  std::string password_env = "PROCSHARE_REDIS_PASSWORD";
  std::string password_file{};
  // The longest a connection may take to open (a server that is down refuses at once; a
  // frozen one still accepts, so only the command timeout guards against it).
  std::chrono::milliseconds connect_timeout{1000};
  // The longest a call may wait for its reply (then EngineUnavailable).
  std::chrono::milliseconds command_timeout{2000};
  // Allow a host that is not a loopback address without TLS (hiredis 0.14 has none).
  bool insecure_transport = false;
};

namespace detail {

// A URL taken apart; `text` is what messages name (never a password).
struct EngineUrl {
  std::string user;
  std::string host;
  int port = 6379;
  std::string text;
};
// Throws InvalidArgument naming the URL and what is wrong with it.
PROCSHARE_API EngineUrl parse_engine_url(std::string_view url);
// Whether `host` is a loopback address (localhost, 127.0.0.0/8, ::1).
PROCSHARE_API bool is_loopback(std::string_view host);

// One reply of the engine.
struct EngineReply {
  enum class Kind { string, array, integer, nil, status, error };
  Kind kind = Kind::nil;
  std::string text;    // string, status, error (only inside Engine: an error reply throws)
  long long integer = 0;
  std::vector<EngineReply> elements;  // array
};

// A connection to the engine (one socket; not shared between processes: a fork makes
// its own). Connects and authenticates (or PINGs) at construction, or takes the healthy
// connection an earlier Engine of this process to the same server, user and password
// left (it goes back when the Engine is destroyed). A call whose reply did
// not come is EngineUnavailable and is not sent again (it may have run); the next call
// reconnects.
class PROCSHARE_API Engine {
public:
  // Throws InvalidArgument (bad options), EngineUnavailable, AuthFailed,
  // PermissionDenied.
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs one command. An error reply throws: AuthFailed (WRONGPASS, NOAUTH),
  // PermissionDenied (NOPERM, with the server's text), Error (any other, with its text);
  // no reply within the command timeout, or a broken connection, is EngineUnavailable.
  EngineReply command(const std::vector<std::string>& args);
  // Runs the Lua `script` (EVALSHA; loaded on first use, and again after a server
  // restart made it forget). `meanwhile` (if given) runs once the call is sent, before
  // its reply is read: local work that overlaps the round trip (should it throw, the
  // connection is closed). Throws as command().
  EngineReply eval(const std::string& script, const std::vector<std::string>& keys,
                   const std::vector<std::string>& args, const std::function<void()>& meanwhile = nullptr);
  // Makes sure this process knows `script`'s SHA (SCRIPT LOAD, unless an earlier call of
  // this process loaded it), and returns it: a child forked afterwards runs it with one
  // EVALSHA. Throws as command().
  std::string load(const std::string& script);
  // A connection that ran SUBSCRIBE (command()): its next message, {"message", channel,
  // payload}, or nothing if none came by `deadline` (the connection stays usable).
  // Throws EngineUnavailable if the connection broke.
  std::optional<EngineReply> receive(std::chrono::steady_clock::time_point deadline);
  // The URL as messages name it.
  const std::string& url() const noexcept;

private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace detail

// How a cluster map's results reach the hosts that did not compute them.
enum class ResultTransfer {
  // A chunk's results go through the engine when computing them again would take longer
  // than moving them; otherwise every host that needs them computes them again on its
  // own pool (not counted again), so f must give the same result for the same item and
  // arguments, and such cheap items run on every host that gets the results (their
  // outside effects too). Cheap items' results (x -> 2x + 1) never load the engine.
  automatic,
  // Always through the engine: every item's result comes from one run of f (a result
  // missing from the engine is JobLost, never computed again).
  engine,
};

// Options of a Cluster: the engine, the job, and the timings of its leases.
struct ClusterOptions {
  // redis://[user@]host[:port] (see EngineOptions::url). The password: from the
  // environment variable `password_env`, else the first line of `password_file`.
  std::string url{};
  // The job's name: every host that passes the same name joins the same job. 1 to 200
  // printable characters, no space, '{' or '}'.
  std::string job{};
  // This host's name in the job and in messages; "" means "hostname:pid".
  std::string host{};
  // A claimed chunk whose host has not renewed it for this long goes to another host.
  std::chrono::milliseconds lease{10000};
  // How often a working host renews its leases and sends its partial progress (and looks
  // for chunks freed by an expired lease once none is left to claim); at most lease / 3.
  std::chrono::milliseconds flush{100};
  // Items per chunk, fixed when the job is made (0: adaptive: each host asks for ~50 ms
  // of its work, less towards the end so that every host gets some, and never more than
  // half its pool's arena holds; a host's first chunk is 1/256 of the items, and the
  // join also hands it the next one, which it cuts to what the first chunk's time says
  // and starts without waiting a round trip; not for find_first).
  std::uint64_t chunk = 0;
  // How a map's results reach the other hosts (see ResultTransfer); part of the job: a
  // host that asks for the other is JobMismatch.
  ResultTransfer results = ResultTransfer::automatic;
  // Chunks a host claims ahead of the one its pool runs, so it never waits a round trip.
  unsigned prefetch = 1;
  // How long a finished (done or stopped) job's keys stay in the engine.
  std::chrono::milliseconds keep{3600 * 1000};
  // The longest a connection may take to open, and a call to answer (see EngineOptions).
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::milliseconds command_timeout{2000};
  // An engine that cannot be reached for this long is EngineUnavailable on this host
  // (once connected, calls are retried until then, with a backoff from 100 ms to 1 s;
  // Cluster() itself connects once).
  std::chrono::milliseconds unavailable_after{30000};
  // Where the password comes from (see EngineOptions): this environment variable if it
  // is set, else the first line of password_file if one is given, else none.
  std::string password_env = "PROCSHARE_REDIS_PASSWORD";
  std::string password_file{};
  // Allow a host that is not a loopback address without TLS (see EngineOptions).
  bool insecure_transport = false;
};

namespace detail {

// What makes two hosts' calls the same job (compared at join).
struct ClusterSpec {
  JobKind kind;
  std::uint64_t total;
  std::string items;  // hash of the items as they travel (or the Range's bounds)
  std::string args;   // hash of the serialized arguments
  std::string task;   // type names of the task, items, result and arguments
};

// A 64-bit hash of bytes, as 16 hex digits (the same on every host of one platform).
PROCSHARE_API std::string bytes_hash(std::span<const std::byte> bytes);

// The templated part of a cluster job: how this host runs a chunk on its pool and moves
// its results (ClusterCore does the rest).
struct PROCSHARE_API ClusterTask {
  virtual ~ClusterTask();
  // Makes room for the results of every item (map; before any chunk starts, while the
  // join's round trip is under way; again does nothing).
  virtual void prepare() {}
  // Starts a local job over items [first, first + count) of the job (a map's results go
  // straight to their place among the job's).
  virtual std::shared_ptr<JobState> start(std::uint64_t first, std::uint64_t count) = 0;
  // A local job this host gave up (cancelled): its results, should it still end, go
  // nowhere (the items' results come from elsewhere).
  virtual void detach(JobState&) {}
  // The bytes an item takes in the pool's arena while its chunk runs (fixed-size items
  // of a vector, and fixed-size results; 0 if none).
  virtual std::uint64_t arena_bytes_per_item() const { return 0; }
  // map: whether the task returns results (which every host gathers).
  virtual bool keeps_results() const { return false; }
  // map: the results of items [first, first + count), which all ran, serialized for the
  // other hosts into `out`; false (and `out` empty) if they take more than `budget`
  // bytes.
  virtual bool write(std::uint64_t, std::uint64_t, std::size_t, std::vector<std::byte>&) { return false; }
  // map: the results of items [first, first + count) from their serialized form.
  virtual void read(std::uint64_t, std::uint64_t, std::span<const std::byte>) {}
};

// One host's side of a cluster job: join, the host loop (claim, run, renew, complete),
// progress, cancel and the job's end, over the engine (lib/cluster.cpp).
class PROCSHARE_API ClusterCore {
public:
  // Joins (or makes) the job. Throws JobMismatch, Stopped (a job that was stopped),
  // the engine's errors.
  ClusterCore(std::shared_ptr<Engine> engine, const ClusterOptions& options, std::string host,
              std::shared_ptr<PoolCore> pool, ClusterSpec spec, std::unique_ptr<ClusterTask> task);
  // Cancels the chunks this host still runs (their leases run out; others rerun them).
  ~ClusterCore();
  ClusterCore(const ClusterCore&) = delete;
  ClusterCore& operator=(const ClusterCore&) = delete;

  // Runs the host loop until the job ended (returns true) or `deadline` (false). Throws
  // EngineUnavailable, JobLost, PoolClosed (the local pool), again on every later call.
  bool drive(Deadline deadline);
  // Forks this host's agent now (else the host loop forks it 50 ms into the job): the
  // program may go elsewhere, and the agent renews the leases of the chunks its pool
  // computes meanwhile, and brings a stop to them (lib/detail/cluster_agent.hpp).
  void start_agent();
  // Over all hosts: items done (and in chunks being run, as last flushed), failed,
  // skipped, and the total. Runs the host loop once without waiting.
  Progress progress();
  // Stops the job on every host ("stopped by cancel() on HOST").
  void cancel();
  // After the job ended: throws the lowest-index failure below `limit` (TaskError or
  // WorkerDied, as the local pool), or Stopped naming who stopped it. map: then reads
  // the results this host did not make itself (ClusterTask::read), and computes again
  // those that were not sent (their lowest failure is thrown as the job's would be).
  void finish(std::uint64_t limit);
  // Throws InvalidArgument: get() again, after it moved the results out.
  [[noreturn]] void throw_taken() const;
  // find_first, after the job ended: the match (its position), if any.
  std::optional<std::uint64_t> best() const;
  // This host's name in the job.
  const std::string& host() const noexcept;

private:
  struct State;
  std::unique_ptr<State> state_;
};

// A cluster map's results by position, written by the local jobs of the chunks as they
// end (fixed-size results in one block, as Pool::map's; others one by one, as they come).
template <class R> struct ClusterStore {
  static constexpr bool fixed = Transport<R>::fixed;
  std::mutex mutex;   // (a local job's results may arrive in another thread's pool call)
  bool open = true;   // until get() moves the values out
  std::conditional_t<fixed, std::vector<R>, std::vector<std::optional<R>>> values;
  // The results in input order (moved out). ClusterCore calls it once the chunks whose
  // results it holds cover every item (a chunk with a failure is not among them).
  std::vector<R> take() {
    std::lock_guard guard(mutex);
    open = false;
    if constexpr (fixed) {
      return std::move(values);
    } else {
      std::vector<R> out;
      out.reserve(values.size());
      for (auto& value : values) out.push_back(std::move(*value));
      values.clear();
      return out;
    }
  }
};
template <> struct ClusterStore<void> {};

// The local job of one chunk of a cluster map: its results go to their place in the
// store, unless the chunk was detached (given up) first.
template <class R> struct ClusterChunkState final : JobState {
  std::shared_ptr<ClusterStore<R>> store;
  std::uint64_t first, count;
  bool attached = true;  // (under store->mutex)
  ClusterChunkState(std::shared_ptr<ClusterStore<R>> s, std::uint64_t f, std::uint64_t n)
      : store(std::move(s)), first(f), count(n) {}
  void accept(std::uint64_t index, Reader& r) override {
    if constexpr (!ClusterStore<R>::fixed) {
      if (index >= count) return;
      R value = Transport<R>::read(r);
      std::lock_guard guard(store->mutex);
      if (attached && store->open) store->values[first + index] = std::move(value);
    }
  }
  void copy_fixed(const std::byte* slots) override {
    std::lock_guard guard(store->mutex);
    if (!attached || !store->open) return;
    if constexpr (std::is_same_v<R, bool>) {  // (one byte per slot; std::vector<bool> packs bits)
      for (std::uint64_t i = 0; i < count; ++i) store->values[first + i] = slots[i] != std::byte{0};
    } else if constexpr (ClusterStore<R>::fixed) {
      if (count) std::memcpy(static_cast<void*>(store->values.data() + first), slots, count * sizeof(R));
    }
  }
};

// A cluster job's chunks, run as local jobs of Kind (map or find_first) on this host's
// pool; a map keeps the results of every item in `store`.
template <JobKind Kind, class R, class I, class F, class... Args>
struct ClusterTaskOf final : ClusterTask {
  using T = typename ItemsOf<I>::job_type;
  static constexpr bool results = Kind == JobKind::map && !std::is_void_v<R>;
  using Local = std::conditional_t<results, ClusterChunkState<R>, ResultState<void>>;
  std::shared_ptr<PoolCore> pool;                                      // this host's pool
  std::conditional_t<ItemsOf<I>::is_range, Range, std::vector<T>> items;  // a copy (chunks start later)
  F f;                                                                 // the task
  std::tuple<Args...> args;                                            // its arguments
  std::shared_ptr<ClusterStore<std::conditional_t<results, R, void>>> store;  // map: the results

  ClusterTaskOf(std::shared_ptr<PoolCore> p, const I& in, F fn, const Args&... a)
      : pool(std::move(p)), items(copy_of(in)), f(fn), args(a...),
        store(std::make_shared<ClusterStore<std::conditional_t<results, R, void>>>()) {}
  void prepare() override {
    if constexpr (results) {
      std::lock_guard guard(store->mutex);
      if (store->values.size() != items.size()) store->values.resize(items.size());
    }
  }
  static auto copy_of(const I& in) {
    if constexpr (ItemsOf<I>::is_range) return in;
    else return std::vector<T>(std::ranges::begin(in), std::ranges::end(in));
  }
  bool keeps_results() const override { return results; }
  std::uint64_t arena_bytes_per_item() const override {
    std::uint64_t bytes = fixed_size<std::conditional_t<results, R, void>>();
    if constexpr (!ItemsOf<I>::is_range) {
      if constexpr (Transport<T>::fixed) {
        bytes += sizeof(T);
      } else if (!items.empty()) {
        // Serialized items and their offsets: twice the largest of a sample of 64.
        std::uint64_t largest = 0;
        const std::size_t step = std::max<std::size_t>(1, items.size() / 64);
        std::vector<std::byte> one;
        for (std::size_t i = 0; i < items.size(); i += step) {
          one.clear();
          Writer w{one};
          Transport<T>::write(w, items[i]);
          largest = std::max<std::uint64_t>(largest, one.size());
        }
        bytes += sizeof(std::uint64_t) + 2 * largest;
      }
    }
    return bytes;
  }
  std::shared_ptr<JobState> start(std::uint64_t first, std::uint64_t count) override {
    std::shared_ptr<Local> state;
    if constexpr (results) state = std::make_shared<Local>(store, first, count);
    else state = std::make_shared<Local>(count);
    std::apply(
        [&](const Args&... a) {
          if constexpr (ItemsOf<I>::is_range)
            start_items<Kind, R>(*pool, 0, Range{items.first + first, items.first + first + count}, f,
                                 state, true, a...);
          else
            start_items<Kind, R>(*pool, 0, std::span<const T>(items.data() + first, count), f, state,
                                 true, a...);
        },
        args);
    return state;
  }
  void detach(JobState& local) override {
    if constexpr (results) {
      auto& state = static_cast<Local&>(local);
      std::lock_guard guard(store->mutex);
      state.attached = false;
    }
  }
  // A chunk's results travel as a 1 then the fixed-size values one after another, or as
  // a 0 then, per item, a 1 and its result.
  static constexpr bool raw = Transport<R>::fixed && !std::is_same_v<R, bool>;  // (vector<bool>)
  bool write(std::uint64_t first, std::uint64_t count, std::size_t budget, std::vector<std::byte>& out) override {
    if constexpr (results) {
      std::lock_guard guard(store->mutex);
      Writer w{out};
      if constexpr (raw) {
        if (1 + count * sizeof(R) > budget) return false;
        w.write(std::uint8_t{1});
        w.bytes(store->values.data() + first, count * sizeof(R));
        return true;
      } else {
        w.write(std::uint8_t{0});
        for (std::uint64_t i = first; i < first + count; ++i) {
          w.write(std::uint8_t{1});
          if constexpr (ClusterStore<R>::fixed) Transport<R>::write(w, static_cast<R>(store->values[i]));
          else Transport<R>::write(w, *store->values[i]);
          if (out.size() > budget) {
            out.clear();
            return false;
          }
        }
        return true;
      }
    }
    return false;
  }
  void read(std::uint64_t first, std::uint64_t count, std::span<const std::byte> bytes) override {
    if constexpr (results) {
      Reader r{bytes};
      const bool whole = r.read<std::uint8_t>() != 0;
      std::lock_guard guard(store->mutex);
      for (std::uint64_t i = first; i < first + count; ++i)
        if (whole || r.read<std::uint8_t>() != 0) store->values[i] = Transport<R>::read(r);
    }
  }
};

// A plain function's place in its binary ("object+0xOFFSET": the same in every process
// running that binary), or "" for nullptr.
PROCSHARE_API std::string function_identity(AnyFunction function);

// What tells two hosts' tasks apart: the types of the task, items, result and arguments,
// and for a plain function, which one.
template <class I, class F, class R, class... Args> std::string task_signature(F f) {
  std::string text = function_identity(function_of(f));
  text += typeid(F).name();
  for (const char* name : {typeid(I).name(), typeid(R).name(), typeid(Args).name()...}) {
    text += ' ';
    text += name;
  }
  return text;
}

// What tells two hosts' items apart: a Range's bounds, or a hash of the values' bytes as
// they travel (so floats must be bit-identical).
template <class I> std::string items_hash(const I& items) {
  using T = typename ItemsOf<I>::job_type;
  if constexpr (ItemsOf<I>::is_range) {
    return "range " + std::to_string(items.first) + " " + std::to_string(items.end);
  } else if constexpr (Transport<T>::fixed) {
    return bytes_hash(std::as_bytes(ItemsOf<I>::span(items)));
  } else {
    std::vector<std::byte> bytes;
    Writer w{bytes};
    for (const T& item : ItemsOf<I>::span(items)) Transport<T>::write(w, item);
    return bytes_hash(bytes);
  }
}

}  // namespace detail

// ClusterJob<R>: a cluster map_async on this host. Chunks are claimed and completed while
// this host calls get(), wait_for() or progress() (see the top of this file); meanwhile
// its agent renews the leases of the chunks its pool computes, and brings a stop or a
// better match to them.
template <class R> class ClusterJob {
public:
  // Items done (including those of chunks still running, as last flushed), failed and
  // skipped over all hosts, and the total; at most one flush interval old.
  detail::Progress progress() { return core_->progress(); }
  // Runs this host's share until the job ended or `timeout` passed; returns whether it
  // ended.
  template <class Rep, class Period> bool wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    return core_->drive(detail::deadline_after(timeout));
  }
  // Runs this host's share until the job ended; returns the results of every item in
  // input order (the same on every host; moved out: a second get() throws
  // InvalidArgument). Throws the lowest-index TaskError or WorkerDied once every item
  // ran, Stopped (naming who stopped it), EngineUnavailable, JobLost.
  auto get() {
    core_->drive(detail::no_deadline);
    core_->finish(UINT64_MAX);
    if constexpr (!std::is_void_v<R>) {
      if (taken_) core_->throw_taken();
      taken_ = true;
      return store_->take();
    }
  }
  // Stops the job on every host: unstarted chunks are dropped, and get() throws Stopped
  // ("stopped by cancel() on HOST").
  void cancel() { core_->cancel(); }
  // This host's name in the job (ClusterOptions::host, or "hostname:pid").
  const std::string& host() const noexcept { return core_->host(); }

private:
  friend class Cluster;
  ClusterJob(std::unique_ptr<detail::ClusterCore> core, std::shared_ptr<detail::ClusterStore<R>> store)
      : core_(std::move(core)), store_(std::move(store)) {}
  std::unique_ptr<detail::ClusterCore> core_;
  std::shared_ptr<detail::ClusterStore<R>> store_;  // the results (shared with the task)
  bool taken_ = false;                  // get() moved the results out
};

// Cluster: this host's handle on one named job of the engine (see the top of this file).
// Not shared between processes (a fork makes its own); its jobs use its connection, so
// use it from one thread at a time.
class PROCSHARE_API Cluster {
public:
  // Checks the options and connects. Throws InvalidArgument (bad options, a non-loopback
  // URL without insecure_transport), EngineUnavailable, AuthFailed, PermissionDenied.
  explicit Cluster(ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Pool::map across every host that joins the job: f(item, args...) over the items (a
  // Range, or values that are the same on every host), chunk by chunk on `pool`; the
  // results in input order, on every host. Throws as ClusterJob::get, JobMismatch.
  template <Items I, class F, class... Args>
  auto map(Pool& pool, const I& items, F f, const Args&... args) {
    return start_map(pool, items, f, args...).get();
  }
  // As map(), without waiting: a ClusterJob whose get(), wait_for() and progress() run
  // this host's share. Meanwhile this host's agent renews the leases of the chunks its
  // pool computes, and brings a stop to them.
  template <Items I, class F, class... Args>
  auto map_async(Pool& pool, const I& items, F f, const Args&... args) {
    auto job = start_map(pool, items, f, args...);
    job.core_->start_agent();  // (now: this program may go elsewhere until get())
    return job;
  }
  // Pool::find_first across every host: the lowest position whose item satisfies
  // pred(item, args...), with the item, or nullopt; the same answer on every host, and
  // the same as Pool::find_first on the same items (chunks go out in ascending order,
  // none above the best match, and a chunk below it is always run, rerun if its host
  // died). Throws the TaskError or WorkerDied of an item below the match, Stopped,
  // JobMismatch, EngineUnavailable, JobLost.
  template <Items I, class F, class... Args>
  std::optional<std::pair<std::size_t, typename detail::ItemsOf<I>::value>>
  find_first(Pool& pool, const I& items, F pred, const Args&... args) {
    using R = detail::task_result_t<I, F, Args...>;
    static_assert(std::is_convertible_v<R, bool>, "procshare::Cluster::find_first: pred must return bool");
    static_assert(detail::check_items<I, F, Args...>());
    using Task = detail::ClusterTaskOf<detail::JobKind::find_first, void, I, F, Args...>;
    auto core = join<I, F, R, Args...>(
        detail::JobKind::find_first, pool, items, pred,
        std::make_unique<Task>(detail::PoolAccess::core(pool), items, pred, args...), args...);
    core->drive(detail::no_deadline);
    const std::optional<std::uint64_t> match = core->best();
    core->finish(match.value_or(UINT64_MAX));
    if (!match) return std::nullopt;
    return std::pair(static_cast<std::size_t>(*match), detail::ItemsOf<I>::at(items, *match));
  }

  // The options, as given (host filled in).
  const ClusterOptions& options() const noexcept { return options_; }

private:
  // Joins a map job (map and map_async).
  template <Items I, class F, class... Args>
  auto start_map(Pool& pool, const I& items, F f, const Args&... args) {
    using R = detail::task_result_t<I, F, Args...>;
    static_assert(detail::check_items<I, F, Args...>());
    static_assert(detail::check_result<R>());
    using Task = detail::ClusterTaskOf<detail::JobKind::map, R, I, F, Args...>;
    auto task = std::make_unique<Task>(detail::PoolAccess::core(pool), items, f, args...);
    auto store = task->store;
    auto core = join<I, F, R, Args...>(detail::JobKind::map, pool, items, f, std::move(task), args...);
    return ClusterJob<R>(std::move(core), std::move(store));
  }
  template <class I, class F, class R, class... Args>
  std::unique_ptr<detail::ClusterCore> join(detail::JobKind kind, Pool& pool, const I& items, F f,
                                            std::unique_ptr<detail::ClusterTask> task,
                                            const Args&... args) {
    const auto packed = detail::pack_args(args...);
    detail::ClusterSpec spec{kind, detail::ItemsOf<I>::size(items), detail::items_hash(items),
                             detail::bytes_hash(packed), detail::task_signature<I, F, R, Args...>(f)};
    return std::make_unique<detail::ClusterCore>(engine_, options_, options_.host,
                                                 detail::PoolAccess::core(pool), std::move(spec),
                                                 std::move(task));
  }

  ClusterOptions options_;
  std::shared_ptr<detail::Engine> engine_;
};

}  // namespace procshare
