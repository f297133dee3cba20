// Pool, the object: starting the pool (its control segment and block, the supervisor's
// fork), closing, joining and terminating it, and what it tells about itself. Its jobs
// are lib/pool_jobs.cpp; the parent's bookkeeping is PoolCore (detail/pool_core.hpp).
//
// Shared memory it writes: the control block's fixed fields, once, at creation.
#include <procshare/pool.hpp>

#include "detail/pool_core.hpp"
#include "detail/streams.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

namespace procshare {
namespace detail {
namespace {

// Other threads in this process (from /proc/self/status).
int thread_count() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return 1;
}

}  // namespace
}  // namespace detail

using detail::JobSlot;
using detail::PoolBlock;
using detail::PoolCore;

// ---------------------------------------------------------------- Pool

Pool::Pool(PoolOptions options) {
  static std::atomic<int> counter{0};
  const unsigned workers = options.workers ? options.workers : std::max(1u, std::thread::hardware_concurrency());
  const std::string name = options.name.empty()
                               ? fmt::format("procshare-pool-{}-{}", ::getpid(), counter++)
                               : options.name;
  if (workers > detail::max_workers)
    throw InvalidArgument(name, "pool", fmt::format("{} workers is more than {}", workers, detail::max_workers));
  if (options.arena_bytes < 4096 || options.arena_bytes > (std::size_t{1} << 40))
    throw InvalidArgument(name, "pool", fmt::format("arena_bytes {} is out of range (4096 to 2^40)", options.arena_bytes));
  if (!options.allow_threads) {
    if (const int threads = detail::thread_count(); threads > 1)
      throw InvalidArgument(name, "pool",
                            fmt::format("this process runs {} threads, and forking a threaded "
                                        "process is unsafe; set PoolOptions::allow_threads if "
                                        "you know it is fine",
                                        threads));
  }
  // Layout of the control block: header, worker table, job table, rings, arena.
  const std::uint64_t workers_offset = detail::align_up(sizeof(PoolBlock), 64);
  const std::uint64_t jobs_offset =
      detail::align_up(workers_offset + workers * sizeof(detail::WorkerSlot), 64);
  const std::uint64_t rings_offset =
      detail::align_up(jobs_offset + detail::job_slot_count * sizeof(JobSlot), 64);
  const std::uint64_t arena_offset =
      detail::align_up(rings_offset + workers * detail::ring_bytes_per_worker, 4096);
  const std::uint64_t arena_bytes = detail::align_up(options.arena_bytes, 4096);
  const std::uint64_t block_bytes = arena_offset + arena_bytes;
  // Reserved at once: the segment's header and directory, the pool's block and worker
  // table (the object sits in the first 64 KiB). The rest is reserved as it is first
  // used: job slots and the arena by the parent (PoolCore::reserve_slot, ArenaSpace::reserve_up_to),
  // each ring by its worker. So a big arena or table costs nothing until it is used.
  auto segment = detail::create_segment(name, block_bytes + (1u << 16),
                                        {.permissions = 0600, .max_objects = 8},
                                        jobs_offset + (1u << 16));
  struct Layout {
    std::uint64_t workers_offset, jobs_offset, rings_offset, arena_offset, arena_bytes;
    unsigned workers;
    std::uint64_t max_tasks;
  } const layout{workers_offset, jobs_offset, rings_offset, arena_offset, arena_bytes, workers,
                 options.max_tasks_per_child};
  const detail::ObjectSpec spec{ObjectKind::pool, "", 0, 0, workers, block_bytes};
  auto placed = detail::place(
      segment, "pool", spec, detail::Intent::create,
      [](detail::ObjectHeader* object, const void* context) {
        const auto& l = *static_cast<const Layout*>(context);
        auto* b = reinterpret_cast<PoolBlock*>(object);
        if (detail::init_lock(b->lock, false) != 0) return false;
        b->lock_deaths_seen = 0;  // (init_lock counts no death yet)
        b->parent_pid = ::getpid();
        b->workers = l.workers;
        b->job_slots = detail::job_slot_count;
        b->max_tasks_per_child = l.max_tasks;
        b->ring_bytes = detail::ring_bytes_per_worker;
        b->workers_offset = l.workers_offset;
        b->jobs_offset = l.jobs_offset;
        b->rings_offset = l.rings_offset;
        b->arena_offset = l.arena_offset;
        b->arena_bytes = l.arena_bytes;
        return true;
      },
      &layout);
  auto* block = reinterpret_cast<PoolBlock*>(
      detail::resolve(placed.handle, ObjectKind::pool, sizeof(PoolBlock)));
  core_ = std::make_shared<PoolCore>(std::move(segment));
  core_->block = block;
  core_->jobs.resize(detail::job_slot_count);
  core_->arena.init(placed.handle.offset + arena_offset, arena_bytes);
  core_->jobs_at = placed.handle.offset + jobs_offset;

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
    throw Error(name, "pool", fmt::format("cannot make a pipe: {}", detail::os_reason(errno)));
  detail::flush_standard_streams();  // nothing buffered may be printed twice
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    throw Error(name, "pool", fmt::format("cannot fork the supervisor: {}", detail::os_reason(errno)));
  }
  if (pid == 0) {
    ::close(pipe_fds[1]);
    detail::run_supervisor(*block, options.initializer, core_->segment, placed.handle.offset,
                           pipe_fds[0]);
  }
  ::close(pipe_fds[0]);
  core_->commands = pipe_fds[1];
  core_->supervisor = pid;
}

Pool::~Pool() {
  if (!core_ || core_->creator != ::getpid()) return;
  try {
    close();
    join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "procshare: ~Pool: %s\n", e.what());
    try {
      terminate();
    } catch (...) {
    }
  }
  if (core_->commands >= 0) ::close(core_->commands);
  core_->commands = -1;
}

void Pool::close() {
  std::lock_guard guard(core_->mutex);
  core_->closed = true;
}

void Pool::join() {
  std::lock_guard guard(core_->mutex);
  if (!core_->closed)
    throw InvalidArgument(core_->segment.name(), "pool", "join() before close()");
  while (core_->active_count != 0 && core_->ended.empty()) {
    const std::uint32_t sequence = core_->progress_sequence();
    core_->pump();
    if (core_->active_count != 0) core_->sleep_until(detail::no_deadline, sequence);
  }
  if (core_->supervisor < 0) return;
  core_->send('C');
  int status = 0;
  while (::waitpid(core_->supervisor, &status, 0) < 0 && errno == EINTR) {
  }
  core_->supervisor = -1;
}

void Pool::terminate() {
  std::lock_guard guard(core_->mutex);
  core_->closed = true;
  if (core_->supervisor >= 0) {
    core_->send('T');
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(800);
    int status = 0;
    pid_t r = 0;
    while ((r = ::waitpid(core_->supervisor, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (r == 0) {  // it did not finish in time: kill it and its workers ourselves
      for (std::uint32_t i = 0; i < core_->block->workers; ++i)
        if (const pid_t worker = core_->block->worker(i).pid.load(); worker > 0) ::kill(worker, SIGKILL);
      ::kill(core_->supervisor, SIGKILL);
      ::waitpid(core_->supervisor, &status, 0);
    }
    core_->supervisor = -1;
  }
  core_->fail_all("the pool was terminated");
}

unsigned Pool::workers() const { return core_->block->workers; }

std::vector<int> Pool::worker_pids() const {
  std::vector<int> pids;
  for (std::uint32_t i = 0; i < core_->block->workers; ++i) {
    const auto& w = core_->block->worker(i);
    const auto state = static_cast<detail::WorkerState>(w.state.load());
    if (state != detail::WorkerState::empty && state != detail::WorkerState::exited && w.pid.load() > 0)
      pids.push_back(w.pid.load());
  }
  return pids;
}

int Pool::supervisor_pid() const { return core_->block->supervisor_pid.load(); }

std::string Pool::control_segment() const { return core_->segment.name(); }

}  // namespace procshare