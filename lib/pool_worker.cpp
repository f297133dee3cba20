// Pool, the worker side: the loop each worker process runs (worker_main), claiming chunks
// of jobs, running their tasks and writing what they produce to its own result ring
// (write_record, append_record); also stop_requested()/request_stop() for a running task.
//
// Shared memory it writes: its own WorkerSlot (state, job, chunk, progress, counts,
// journal, ring write position and ring_waiting) and its own result ring; under the pool
// lock, the claim words of the job table (cursor, requeued ranges, claim_from), a job's
// done, failed, skipped and settled (its chunks' settlements, the items it drops) and the
// pool's items_done, and, taking the lock over from a worker that died holding it, what
// that worker had under way (finish_cut_work: its slot's state and journal too);
// atomically, without the lock, a job's best (find_first) and stop flag (request_stop);
// rescan, the wake-up sequences and, once, broken_reason (an initializer that throws).
// Nothing else.
#include <procshare/pool.hpp>
#include <procshare/value.hpp>

#include "detail/names.hpp"
#include "detail/pool_internal.hpp"
#include "detail/pool_layout.hpp"
#include "detail/streams.hpp"

#include <fmt/format.h>

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

namespace procshare {
namespace detail {
namespace {

// The running worker's state (one per worker process).
struct WorkerContext {
  PoolBlock* block;
  WorkerSlot* slot;
  JobSlot* job;
  std::uint32_t index;
  const Segment* segment;
  std::uint64_t ring_at;        // the ring's offset in the segment
  std::uint64_t ring_reserved;  // bytes of it reserved so far
  // A stream's results held back (see RecordType::batch): items batch_first on, written
  // in place into the batch record opened at `batch` in the ring, up to the running
  // chunk's batch_at (ChunkContext).
  std::byte* batch = nullptr;
  std::uint64_t batch_first = 0;
  std::size_t batch_item = 0;
  std::chrono::steady_clock::time_point batch_started{};
  // Results written inline between two looks at the batch's age (adapts to the tasks'
  // pace, so that a look is rare for trivial tasks and a batch never waits long).
  std::size_t batch_stride = 1;
  std::chrono::steady_clock::time_point batch_looked{};
};
void append_record(WorkerContext& w, RecordType type, std::uint64_t job_id, std::uint64_t index,
                   std::span<const std::byte> first, std::span<const std::byte> second = {});

JobSlot* current_job = nullptr;        // the job whose chunk runs now
WorkerSlot* current_slot = nullptr;   // this worker's slot
PoolBlock* current_block = nullptr;   // the worker's pool

// Opens a record of up to `need` bytes (header included, 8-aligned, <= half the ring) in
// the worker's result ring, waiting for the parent to make room: returns where it starts
// (ring_write, after padding to the ring's end if it would not fit before). Nothing is
// published until publish_record.
std::byte* open_record(WorkerContext& w, std::uint64_t need) {
  PoolBlock& b = *w.block;
  WorkerSlot& s = *w.slot;
  const std::uint64_t ring = b.ring_bytes;
  for (;;) {
    const std::uint64_t write = s.ring_write.load(std::memory_order_relaxed);
    const std::uint64_t read = s.ring_read.load(std::memory_order_acquire);
    const std::uint64_t contiguous = ring - write % ring;
    const std::uint64_t required = need + (contiguous < need ? contiguous : 0);
    if (ring - (write - read) >= required) break;
    // Sleep until half the ring is free, not just enough for this record: a parent that
    // reads a record at a time (a stream's back-pressure) then wakes it once in many.
    s.ring_waiting.store(static_cast<std::uint32_t>(std::max(required, ring / 2)),
                         std::memory_order_seq_cst);
    const std::uint32_t sequence = s.ring_space_sequence.load(std::memory_order_seq_cst);
    if (s.ring_read.load(std::memory_order_seq_cst) == read) {
      wake_parent(b);
      futex_wait(s.ring_space_sequence, sequence, deadline_after(std::chrono::milliseconds(50)));
    }
    s.ring_waiting.store(0, std::memory_order_relaxed);
  }
  std::uint64_t write = s.ring_write.load(std::memory_order_relaxed);
  if (write % ring + need > w.ring_reserved && w.ring_reserved < ring) {
    // Reserve the ring as it is first used. If /dev/shm is full the worker cannot report
    // anything: it says why on stderr and exits, and its item fails with WorkerDied.
    const std::uint64_t end = std::min(ring, align_up(write % ring + need, ring_reserve_step));
    try {
      reserve(*w.segment, w.ring_at + w.ring_reserved, end - w.ring_reserved);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "procshare: pool worker %d: %s\n", ::getpid(), e.what());
      ::_exit(4);
    }
    w.ring_reserved = end;
  }
  std::byte* base = b.ring(w.index);
  if (ring - write % ring < need) {  // no room before the end: pad to it and wrap
    RecordHeader pad{static_cast<std::uint32_t>(ring - write % ring),
                     static_cast<std::uint32_t>(RecordType::padding), 0, 0, 0, 0, 0, 0};
    std::memcpy(base + write % ring, &pad, sizeof(std::uint32_t) * 2);
    write += ring - write % ring;
    s.ring_write.store(write, std::memory_order_release);
  }
  return base + write % ring;
}

// Publishes the record opened at `at` (its payload written after the header).
void publish_record(WorkerContext& w, std::byte* at, RecordType type, std::uint64_t job_id,
                    std::uint64_t index, std::size_t type_length, std::size_t payload) {
  PoolBlock& b = *w.block;
  WorkerSlot& s = *w.slot;
  const std::uint64_t size = align_up(sizeof(RecordHeader) + payload, 8);
  const RecordHeader header{static_cast<std::uint32_t>(size), static_cast<std::uint32_t>(type),
                            job_id, index, cached_pid,
                            static_cast<std::uint32_t>(type_length),
                            static_cast<std::uint32_t>(payload), 0};
  std::memcpy(at, &header, sizeof header);
  s.ring_write.store(s.ring_write.load(std::memory_order_relaxed) + size,
                     std::memory_order_seq_cst);  // publishes the record
  // A stream's consumer waits for any record (see wait_stream); others wait for the job.
  if (b.records_wanted.load(std::memory_order_seq_cst) != 0) wake_parent(b);
}

// Writes one record (header + `first` + `second`, need <= half the ring) to the worker's
// result ring, waiting for the parent to make room.
void write_record(WorkerContext& w, RecordType type, std::uint64_t job_id, std::uint64_t index,
                  std::size_t type_length, std::span<const std::byte> first,
                  std::span<const std::byte> second) {
  std::byte* at = open_record(w, align_up(sizeof(RecordHeader) + first.size() + second.size(), 8));
  if (!first.empty()) std::memcpy(at + sizeof(RecordHeader), first.data(), first.size());
  if (!second.empty())
    std::memcpy(at + sizeof(RecordHeader) + first.size(), second.data(), second.size());
  publish_record(w, at, type, job_id, index, type_length, first.size() + second.size());
}

// The bytes a message keeps when a failure's record would outgrow the pool's arena.
constexpr std::size_t kept_message_bytes = 4096;

// Appends a record about item `index` of job `job_id` to the worker's result ring (for
// `complete`, index is the job id too), waiting for the parent to make room. Its payload
// is `first` then `second` (an error's exception type, then its message). A payload over
// half the ring goes in pieces (see RecordType); one larger than the pool's arena fails
// the item instead, keeping an error's exception type and the start of its message.
void append_record(WorkerContext& w, RecordType type, std::uint64_t job_id, std::uint64_t index,
                   std::span<const std::byte> first, std::span<const std::byte> second) {
  PoolBlock& b = *w.block;
  const std::uint64_t total = first.size() + second.size();
  const std::uint64_t largest_record = (b.ring_bytes / 2 - sizeof(RecordHeader)) & ~std::uint64_t{7};
  if (total <= largest_record) {
    write_record(w, type, job_id, index, first.size(), first, second);
    return;
  }
  if (total > b.arena_bytes) {
    static const char procshare_error[] = "procshare::Error";
    std::string message;
    if (type == RecordType::error) {
      const auto text = std::string_view(reinterpret_cast<const char*>(second.data()), second.size());
      message = fmt::format("{}... (the message was cut: {} bytes, more than the pool's arena of "
                            "{} bytes, PoolOptions::arena_bytes)",
                            text.substr(0, kept_message_bytes), second.size(), b.arena_bytes);
    } else {
      message = fmt::format("the result takes {} bytes, more than the pool's arena of {} bytes "
                            "(PoolOptions::arena_bytes)", total, b.arena_bytes);
      first = std::as_bytes(std::span(procshare_error, sizeof procshare_error - 1));
    }
    append_record(w, RecordType::error, job_id, index, first,
                  std::as_bytes(std::span(message.data(), message.size())));
    return;
  }
  // The payload in pieces of `largest_record` bytes; the last one is the record itself.
  std::vector<std::byte> payload(first.begin(), first.end());
  payload.insert(payload.end(), second.begin(), second.end());
  const std::span<const std::byte> all(payload);
  std::uint64_t offset = 0;
  for (; total - offset > largest_record; offset += largest_record)
    write_record(w, RecordType::piece, job_id, index, 0, all.subspan(offset, largest_record), {});
  write_record(w, type, job_id, index, first.size(), all.subspan(offset), {});
}

void op_emit(ChunkContext& c, std::uint64_t index, const std::byte* data, std::size_t size) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  append_record(w, RecordType::result, w.slot->job_id.load(std::memory_order_relaxed), index,
                std::span(data, size));
}

// Batches of at most stream_batch_bytes of results, sent at least every couple of
// milliseconds.
constexpr std::size_t batch_bytes = stream_batch_bytes;
static_assert(batched_result_bytes <= batch_bytes);
constexpr auto batch_age = std::chrono::milliseconds(2);
// How long results may be written inline between two looks at the batch's age, and the
// most between two looks (a task that turns slow delays its batch by that many results
// at most; each chunk starts looking at every result).
constexpr auto batch_look = std::chrono::microseconds(50);
constexpr std::size_t batch_stride_limit = 256;

// Publishes the held-back results' record, then says so (flushed_to, batch_item = 0).
// A death before the record is published loses nothing either: the results are in the
// ring already, and the supervisor publishes them (see Supervisor::settle_death).
void flush_batch(WorkerContext& w, ChunkContext& c, std::uint64_t covered) {
  WorkerSlot& s = *w.slot;
  if (c.batch_at != nullptr) {
    const auto used = static_cast<std::size_t>(c.batch_at - (w.batch + sizeof(RecordHeader)));
    publish_record(w, w.batch, RecordType::batch, s.job_id.load(std::memory_order_relaxed),
                   w.batch_first, w.batch_item, used);
    covered = std::max(covered, w.batch_first + used / w.batch_item);
  }
  c.batch_at = c.batch_end = nullptr;
  const std::uint64_t flushed = s.flushed_to.load(std::memory_order_relaxed);
  if (flushed != no_item && covered > flushed) s.flushed_to.store(covered, std::memory_order_release);
  s.batch_item.store(0, std::memory_order_release);
}

void op_flush(ChunkContext& c, std::uint64_t covered) {
  flush_batch(*static_cast<WorkerContext*>(c.worker), c, covered);
}

// A result that run_chunk could not write inline: the first of a batch, one that does
// not follow the batch, or the one after `batch_stride` inline ones.
void op_batch(ChunkContext& c, std::uint64_t index, const void* data, std::size_t size) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  WorkerSlot& s = *w.slot;
  const auto now = std::chrono::steady_clock::now();
  if (c.batch_at != nullptr) {
    const auto used = static_cast<std::size_t>(c.batch_at - (w.batch + sizeof(RecordHeader)));
    if (index != w.batch_first + used / w.batch_item || size != w.batch_item ||
        used + size > batch_bytes || now - w.batch_started >= batch_age)
      flush_batch(w, c, 0);
    // Look at the age less often while looks come quickly, more often when they do not.
    if (now - w.batch_looked < batch_look) w.batch_stride = std::min(w.batch_stride * 2, batch_stride_limit);
    else w.batch_stride = std::max<std::size_t>(w.batch_stride / 2, 1);
  }
  w.batch_looked = now;
  if (c.batch_at == nullptr) {
    // Open the batch's record in the ring, and say where (for a supervisor settling a
    // death), before the first result is written into it.
    w.batch = open_record(w, align_up(sizeof(RecordHeader) + batch_bytes, 8));
    w.batch_first = index;
    w.batch_item = size;
    w.batch_started = now;
    s.batch_record.store(s.ring_write.load(std::memory_order_relaxed), std::memory_order_relaxed);
    s.batch_first.store(index, std::memory_order_relaxed);
    s.batch_item.store(size, std::memory_order_release);
    if (s.flushed_to.load(std::memory_order_relaxed) == no_item)
      s.flushed_to.store(index, std::memory_order_release);
    c.batch_at = w.batch + sizeof(RecordHeader);
  }
  std::memcpy(c.batch_at, data, size);
  c.batch_at += size;
  c.batch_next = index + 1;
  const auto used = static_cast<std::size_t>(c.batch_at - (w.batch + sizeof(RecordHeader)));
  c.batch_end = c.batch_at + std::min((batch_bytes - used) / size, w.batch_stride) * size;
}

void op_fail(ChunkContext& c, std::uint64_t index, const char* type, const char* message) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  WorkerSlot& s = *w.slot;
  flush_batch(w, c, 0);  // (the results before it first: flushed_to never passes a held one)
  // The failure is counted once, by the one store to chunk_failed below (readers see it at
  // once, so a controller can react to it; the job counts it when the chunk settles). A
  // death after the error record but before run_chunk marks the item over leaves the item
  // running: the supervisor then counts it failed itself, and takes the failures before it
  // from failed_before, whether or not that store happened (the parent keeps one report).
  const std::uint64_t before = s.chunk_failed.load(std::memory_order_relaxed);
  s.failed_before.store(before, std::memory_order_relaxed);
  s.failing_item.store(index, std::memory_order_release);
  const std::string name = demangle(type);
  append_record(w, RecordType::error, s.job_id.load(std::memory_order_relaxed), index,
                std::as_bytes(std::span(name.data(), name.size())),
                std::as_bytes(std::span(message, std::strlen(message))));
  s.chunk_failed.store(before + 1, std::memory_order_release);
  flush_batch(w, c, index + 1);  // its error record is out
}

void op_found(ChunkContext& c, std::uint64_t index) {
  auto& w = *static_cast<WorkerContext*>(c.worker);
  std::uint64_t best = w.job->best.load(std::memory_order_relaxed);
  while (index < best && !w.job->best.compare_exchange_weak(best, index)) {
  }
}

constexpr ChunkOps chunk_ops{op_emit, op_fail, op_found, op_batch, op_flush};
}  // namespace

namespace {

// The index of `job` in the pool's job table (what a journal records).
std::uint32_t slot_index(PoolBlock& b, const JobSlot& job) {
  return static_cast<std::uint32_t>(&job - &b.job(0));
}

// Fills `journal` with job `job`'s words and the pool's items_done as they are (the
// caller then changes what it changes, and opens the journal).
void read_into(CountsJournal& journal, PoolBlock& b, JobSlot& job) {
  journal.job_slot.store(slot_index(b, job), std::memory_order_relaxed);
  journal.done.store(job.done.load(std::memory_order_relaxed), std::memory_order_relaxed);
  journal.failed.store(job.failed.load(std::memory_order_relaxed), std::memory_order_relaxed);
  journal.skipped.store(job.skipped.load(std::memory_order_relaxed), std::memory_order_relaxed);
  journal.settled.store(job.settled.load(std::memory_order_relaxed), std::memory_order_relaxed);
  journal.cursor.store(job.cursor.load(std::memory_order_relaxed), std::memory_order_relaxed);
  journal.requeued_count.store(job.requeued_count.load(std::memory_order_relaxed),
                               std::memory_order_relaxed);
  journal.items_done.store(b.items_done.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

// Stores the values `journal` records (pool lock held). `settled` last: a reader that sees
// the job settled sees its counts whole (PoolCore::finish reads them without the lock).
void apply_journal(PoolBlock& b, const CountsJournal& journal) {
  JobSlot& job = b.job(journal.job_slot.load(std::memory_order_relaxed));
  job.cursor.store(journal.cursor.load(std::memory_order_relaxed), std::memory_order_relaxed);
  job.requeued_count.store(journal.requeued_count.load(std::memory_order_relaxed),
                           std::memory_order_release);
  job.done.store(journal.done.load(std::memory_order_relaxed), std::memory_order_relaxed);
  job.failed.store(journal.failed.load(std::memory_order_relaxed), std::memory_order_release);
  job.skipped.store(journal.skipped.load(std::memory_order_relaxed), std::memory_order_relaxed);
  b.items_done.store(journal.items_done.load(std::memory_order_relaxed), std::memory_order_relaxed);
  job.settled.store(journal.settled.load(std::memory_order_relaxed), std::memory_order_release);
}

// Makes the change the worker in slot `s` journaled (a chunk's settlement: the chunk's
// failures leave the worker's count, `settling`, before they reach the job's; see
// failures_so_far), then closes the journal. Pool lock held.
void apply_and_close(PoolBlock& b, WorkerSlot& s) {
  const auto kind = static_cast<JournalKind>(s.journal.kind.load(std::memory_order_acquire));
  if (kind == JournalKind::chunk)
    s.state.store(static_cast<std::uint32_t>(WorkerState::settling), std::memory_order_release);
  apply_journal(b, s.journal);
  if (kind == JournalKind::chunk)
    s.state.store(static_cast<std::uint32_t>(WorkerState::idle), std::memory_order_release);
  s.journal.kind.store(static_cast<std::uint32_t>(JournalKind::none), std::memory_order_release);
}

}  // namespace

void finish_cut_work(PoolBlock& b) {
  bool finished = false;
  for (std::uint32_t i = 0; i < b.workers; ++i) {
    WorkerSlot& s = b.worker(i);
    // Only a holder of the lock has a journal open or a claim under way, and we hold it
    // now: any we find is the dead holder's.
    if (s.journal.kind.load(std::memory_order_acquire) != static_cast<std::uint32_t>(JournalKind::none)) {
      apply_and_close(b, s);  // (it may have completed the job)
      finished = true;
    }
    if (static_cast<WorkerState>(s.state.load(std::memory_order_acquire)) == WorkerState::claiming) {
      // Did its claim's one store happen (claim)? Then it holds the chunk: busy, for the
      // supervisor to settle; else it holds nothing.
      JobSlot& job = b.job(s.job_slot.load(std::memory_order_relaxed));
      const bool requeue = s.from_requeue.load(std::memory_order_relaxed) != 0;
      const std::uint32_t last = s.requeue_index.load(std::memory_order_relaxed);
      const bool claimed = requeue ? job.requeued_count.load(std::memory_order_relaxed) == last
                                   : job.cursor.load(std::memory_order_relaxed) ==
                                         s.chunk_end.load(std::memory_order_relaxed);
      if (claimed && requeue)  // the last range into the taken one's place, maybe cut
        job.requeued[s.requeue_taken.load(std::memory_order_relaxed)] = job.requeued[last];
      s.state.store(static_cast<std::uint32_t>(claimed ? WorkerState::busy : WorkerState::idle),
                    std::memory_order_release);
    }
  }
  b.lock_deaths_seen = b.lock.deaths.load(std::memory_order_relaxed);
  if (finished) {  // a job may be complete now, and its worker could not say so
    b.rescan.fetch_add(1);
    wake_parent(b);
  }
}

// A drop's change: the unclaimed items (and, if the job is stopped, its requeued ranges)
// go, counted skipped. Journaled, as settle_chunk's (see CountsJournal).
bool drop_unclaimed(PoolBlock& b, JobSlot& job, CountsJournal& journal) {
  const std::uint64_t cursor = job.cursor.load(std::memory_order_relaxed);
  std::uint64_t dropped = cursor < job.total ? job.total - cursor : 0;
  const bool stopped = job.stop.load(std::memory_order_relaxed) != 0;
  if (stopped) {  // requeued ranges too
    const std::uint32_t requeued = job.requeued_count.load(std::memory_order_relaxed);
    for (std::uint32_t r = 0; r < requeued; ++r) dropped += job.requeued[r].end - job.requeued[r].first;
  }
  if (dropped == 0) return false;
  read_into(journal, b, job);
  if (cursor < job.total) journal.cursor.store(job.total, std::memory_order_relaxed);
  if (stopped) journal.requeued_count.store(0, std::memory_order_relaxed);
  const std::uint64_t skipped = journal.skipped.load(std::memory_order_relaxed) + dropped;
  const std::uint64_t settled = journal.settled.load(std::memory_order_relaxed) + dropped;
  journal.skipped.store(skipped, std::memory_order_relaxed);
  journal.settled.store(settled, std::memory_order_relaxed);
  journal.kind.store(static_cast<std::uint32_t>(JournalKind::drop), std::memory_order_release);
  apply_journal(b, journal);
  journal.kind.store(static_cast<std::uint32_t>(JournalKind::none), std::memory_order_release);
  return settled == job.total;
}
namespace {

// Settles the worker's finished chunk into its job (pool lock held); returns whether that
// completed the job (the caller then says so, once the lock is released).
//
// A death at any point of it is settled exactly once. The worker journals the job's
// counts after the chunk (CountsJournal), then opens the journal: that one store is the
// commit point. Killed before it, the worker is still busy with nothing of the chunk in
// the job: the supervisor settles the chunk from the worker's slot, as any busy worker's
// (its progress says every item is over). Killed after it, the worker dies holding the
// lock, and the next holder -- another worker, the parent, or the supervisor that comes
// to settle the death -- stores the journaled values again before anything else
// (finish_cut_work) and leaves the worker idle, so the supervisor finds nothing to settle.
// The stores are of values, not additions, and nobody else writes these words meanwhile
// (they change only under the lock), so storing them again changes nothing that is
// already stored. No extra lock: it rides on the lock of the worker's next claim.
bool settle_chunk(WorkerContext& w, JobSlot& job) {
  WorkerSlot& s = *w.slot;
  const std::uint64_t count = s.chunk_end.load() - s.chunk_first.load();
  const std::uint64_t skipped = s.chunk_skipped.load(std::memory_order_relaxed);
  const std::uint64_t failed = s.chunk_failed.load(std::memory_order_relaxed);
  const std::uint64_t done = count - skipped - failed;
  CountsJournal& journal = s.journal;
  read_into(journal, *w.block, job);
  journal.done.store(journal.done.load(std::memory_order_relaxed) + done, std::memory_order_relaxed);
  journal.failed.store(journal.failed.load(std::memory_order_relaxed) + failed, std::memory_order_relaxed);
  journal.skipped.store(journal.skipped.load(std::memory_order_relaxed) + skipped, std::memory_order_relaxed);
  const std::uint64_t settled = journal.settled.load(std::memory_order_relaxed) + count;
  journal.settled.store(settled, std::memory_order_relaxed);
  journal.items_done.store(journal.items_done.load(std::memory_order_relaxed) + done,
                           std::memory_order_relaxed);
  journal.kind.store(static_cast<std::uint32_t>(JournalKind::chunk), std::memory_order_release);
  apply_and_close(*w.block, s);
  s.tasks_done.fetch_add(1, std::memory_order_relaxed);
  return settled == job.total;
}

// Claims a chunk (under the pool lock) into the worker's slot; returns the job's slot or
// nullptr if there is no work. First, under the same lock, settles the worker's finished
// chunk of `finished` (if not null). Jobs are read oldest first from `claim_from`, which
// moves past every job with nothing left to claim; stopped jobs' unclaimed items, and
// find_first items above the match, are dropped on the way (the ids of jobs that this
// completes, or the settlement did, go to `completed`).
JobSlot* claim(WorkerContext& w, JobSlot* finished, std::uint64_t preferred,
               std::uint64_t preferred_for, std::vector<std::uint64_t>& completed) {
  PoolBlock& b = *w.block;
  WorkerSlot& s = *w.slot;
  PoolLock held(b);
  if (finished != nullptr && settle_chunk(w, *finished))
    completed.push_back(s.job_id.load(std::memory_order_relaxed));
  JobSlot* chosen = nullptr;
  std::uint32_t chosen_index = 0;
  const std::uint64_t published = b.published.load(std::memory_order_acquire);
  for (std::uint64_t id = b.claim_from.load(std::memory_order_relaxed); id <= published; ++id) {
    JobSlot& job = b.job_of(id);
    if (job.id.load(std::memory_order_acquire) == id) {
      const std::uint64_t cursor = job.cursor.load(std::memory_order_relaxed);
      const bool stopped = job.stop.load(std::memory_order_relaxed) != 0;
      if ((stopped || cursor > job.best.load(std::memory_order_relaxed)) &&
          drop_unclaimed(b, job, s.journal))
        completed.push_back(id);  // reported once the lock is released
      if (job.requeued_count.load(std::memory_order_relaxed) > 0 ||
          job.cursor.load(std::memory_order_relaxed) < job.total) {
        chosen = &job;
        chosen_index = static_cast<std::uint32_t>((id - 1) % b.job_slots);
        break;
      }
    }
    b.claim_from.store(id + 1, std::memory_order_relaxed);  // nothing left to claim in `id`
  }
  if (chosen == nullptr) return nullptr;
  JobSlot& job = *chosen;
  std::uint64_t first, end;
  const std::uint32_t requeued = job.requeued_count.load(std::memory_order_relaxed);
  std::uint32_t lowest = 0;
  if (requeued > 0) {
    // The lowest requeued range first (find_first claims in ascending order).
    for (std::uint32_t r = 1; r < requeued; ++r)
      if (job.requeued[r].first < job.requeued[lowest].first) lowest = r;
    first = job.requeued[lowest].first;
    end = job.requeued[lowest].end;
  } else {
    // A fixed chunk if the caller set one; else the worker's preferred size (see
    // worker_main), but never more than an even share of what is left.
    first = job.cursor.load(std::memory_order_relaxed);
    const std::uint64_t share = std::max<std::uint64_t>(1, (job.total - first) / b.workers);
    const std::uint64_t want = job.id.load(std::memory_order_relaxed) == preferred_for ? preferred : 1;
    end = std::min(job.total, first + (job.chunk ? job.chunk : std::min(want, share)));
  }
  // Record the claim, then make it (one store), then mark the worker busy: whoever takes
  // the lock over from a worker that died meanwhile can tell from `state`, `cursor` and
  // `requeued_count` where it stopped (finish_cut_work).
  s.job_slot.store(chosen_index, std::memory_order_relaxed);
  s.job_id.store(job.id.load(std::memory_order_relaxed), std::memory_order_relaxed);
  s.chunk_first.store(first, std::memory_order_relaxed);
  s.chunk_end.store(end, std::memory_order_relaxed);
  s.progress.store(0, std::memory_order_relaxed);
  s.chunk_failed.store(0, std::memory_order_relaxed);
  s.chunk_skipped.store(0, std::memory_order_relaxed);
  s.failing_item.store(no_item, std::memory_order_relaxed);
  s.flushed_to.store(no_item, std::memory_order_relaxed);  // nothing held back yet
  s.batch_item.store(0, std::memory_order_relaxed);
  s.from_requeue.store(requeued > 0 ? 1 : 0, std::memory_order_relaxed);
  s.requeue_index.store(requeued - 1, std::memory_order_relaxed);
  s.requeue_taken.store(lowest, std::memory_order_relaxed);
  s.state.store(static_cast<std::uint32_t>(WorkerState::claiming), std::memory_order_release);
  if (requeued > 0) {
    job.requeued_count.store(requeued - 1, std::memory_order_release);
    // The last range fills the taken one's place (redone by finish_cut_work if cut: the
    // last range stays where it was until a requeue after this claim overwrites it).
    job.requeued[lowest] = job.requeued[requeued - 1];
  } else {
    job.cursor.store(end, std::memory_order_release);
  }
  s.state.store(static_cast<std::uint32_t>(WorkerState::busy), std::memory_order_release);
  return &job;
}

// Sends what the worker's finished chunk of a map job ran, for per-item outcomes: before
// the chunk is settled, so that a death before this record is settled by the supervisor,
// whose death record then carries the items that ran (a death after it may send them
// twice, which changes nothing).
void report_ran(WorkerContext& w, JobSlot& job) {
  if (job.kind != static_cast<std::uint32_t>(JobKind::map)) return;
  const WorkerSlot& s = *w.slot;
  const std::uint64_t ran_end = s.chunk_end.load() - s.chunk_skipped.load();  // skipping cuts a suffix
  append_record(w, RecordType::ran, s.job_id.load(std::memory_order_relaxed), s.chunk_first.load(),
                std::as_bytes(std::span(&ran_end, 1)));
}

// Sends a `complete` record for each job in `completed` (then empties it) and wakes the
// parent: the worker completed them (outside the pool lock: a record may wait for room).
void report_completed(WorkerContext& w, std::vector<std::uint64_t>& completed) {
  for (const std::uint64_t id : completed) append_record(w, RecordType::complete, id, id, {});
  if (!completed.empty()) wake_parent(*w.block);
  completed.clear();
}
}  // namespace

[[noreturn]] void worker_main(PoolBlock& b, std::uint32_t index, pid_t supervisor,
                              const std::function<void()>& initializer, const Segment& segment,
                              std::uint64_t block_offset) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != supervisor) ::_exit(1);  // the supervisor died before prctl
  WorkerSlot& s = b.worker(index);
  s.pid.store(::getpid());  // before any work (the supervisor's fork() may return later)
  s.state.store(static_cast<std::uint32_t>(WorkerState::starting));
  if (initializer) {
    std::string reason;
    try {
      initializer();
    } catch (const std::exception& e) {
      reason = fmt::format("worker {}: the initializer threw {}: {}", ::getpid(),
                           demangle(typeid(e).name()), e.what());
    } catch (...) {
      reason = fmt::format("worker {}: the initializer threw an exception of unknown type", ::getpid());
    }
    if (!reason.empty()) {
      record_broken_reason(b, reason);
      flush_standard_streams();
      ::_exit(3);
    }
  }
  s.state.store(static_cast<std::uint32_t>(WorkerState::idle));
  WorkerContext w{&b, &s, nullptr, index, &segment, block_offset + b.rings_offset + index * b.ring_bytes, 0};
  std::vector<std::uint64_t> completed;
  JobSlot* finished = nullptr;  // the job whose chunk the worker ran and has not settled
  std::uint64_t tasks = 0;
  // Automatic chunking: start each job with single items and grow the chunk (x4) while
  // chunks take under a quarter of the target time, shrink it when they take over twice
  // as long. Millions of tiny items then cost a claim per ~2 ms of work, and progress
  // and failures show up within milliseconds.
  constexpr auto target = std::chrono::microseconds(2000);  // (not milliseconds: target / 4)
  std::uint64_t preferred = 1, preferred_for = 0;
  for (;;) {
    const auto state = static_cast<PoolState>(b.state.load(std::memory_order_acquire));
    if (state == PoolState::terminating || state == PoolState::broken) break;
    const std::uint32_t sequence = b.work_sequence.load(std::memory_order_seq_cst);
    JobSlot* job = claim(w, finished, preferred, preferred_for, completed);
    finished = nullptr;
    report_completed(w, completed);
    if (job == nullptr) {
      if (state == PoolState::closing) break;
      if (spin_while(b.work_sequence, sequence)) continue;  // new work arrived meanwhile
      b.workers_waiting.fetch_add(1, std::memory_order_seq_cst);
      futex_wait(b.work_sequence, sequence, deadline_after(std::chrono::milliseconds(100)));
      b.workers_waiting.fetch_sub(1, std::memory_order_seq_cst);
      continue;
    }
    w.job = job;
    current_block = &b;
    current_slot = &s;
    current_job = job;
    ChunkContext c{&chunk_ops,
                   &w,
                   job->function,
                   b.arena() + job->items_offset,
                   job->offsets_offset != UINT64_MAX
                       ? reinterpret_cast<const std::uint64_t*>(b.arena() + job->offsets_offset)
                       : nullptr,
                   job->items_size,
                   job->args_offset == in_slot ? job->inline_args : b.arena() + job->args_offset,
                   job->args_size,
                   job->result_slot_bytes == 0       ? nullptr
                   : job->results_offset == in_slot ? job->inline_results
                                                    : b.arena() + job->results_offset,
                   s.chunk_first.load(),
                   s.chunk_end.load(),
                   &s.progress,
                   &s.chunk_skipped,
                   &job->stop,
                   &job->best,
                   job->range_first};
    const auto started = std::chrono::steady_clock::now();
    w.batch_stride = 1;
    job->run(c);
    flush_batch(w, c, c.end);  // a stream's last results, before the chunk is settled
    const auto took = std::chrono::steady_clock::now() - started;
    const std::uint64_t id = s.job_id.load(std::memory_order_relaxed);
    if (preferred_for != id) preferred_for = id, preferred = 1;
    const std::uint64_t ran = c.end - c.first;
    if (took < target / 4 && ran >= preferred) preferred = std::min<std::uint64_t>(preferred * 4, 1u << 24);
    else if (took > target * 2 && preferred > 1) preferred = std::max<std::uint64_t>(1, preferred / 2);
    current_job = nullptr;
    // What the tasks printed is written before the parent can learn the chunk is done, so
    // it is there once get() returns, and survives terminate().
    flush_standard_streams();
    report_ran(w, *job);
    finished = job;  // settled under the lock of the next claim (settle_chunk)
    w.job = nullptr;
    if (b.max_tasks_per_child != 0 && ++tasks >= b.max_tasks_per_child) break;
  }
  if (finished != nullptr) {  // no next claim
    {
      PoolLock held(b);
      if (settle_chunk(w, *finished)) completed.push_back(s.job_id.load(std::memory_order_relaxed));
    }
    report_completed(w, completed);
  }
  s.state.store(static_cast<std::uint32_t>(WorkerState::exited));
  flush_standard_streams();
  ::_exit(0);
}
}  // namespace detail

bool stop_requested() noexcept {
  const detail::JobSlot* job = detail::current_job;
  if (job == nullptr) return false;
  if (job->stop.load(std::memory_order_relaxed) != 0) return true;
  if (job->kind != static_cast<std::uint32_t>(detail::JobKind::find_first)) return false;
  // find_first: an item above the best match so far is no longer needed. The running
  // item is chunk_first + i while progress is 2i+1.
  const detail::WorkerSlot& s = *detail::current_slot;
  const std::uint64_t progress = s.progress.load(std::memory_order_relaxed);
  const std::uint64_t item = s.chunk_first.load(std::memory_order_relaxed) + (progress - 1) / 2;
  return progress % 2 == 1 && item > job->best.load(std::memory_order_relaxed);
}

void request_stop() noexcept {
  if (detail::current_job == nullptr) return;
  detail::current_job->stop.store(1, std::memory_order_release);
  detail::current_block->rescan.fetch_add(1);  // the parent drops the job's unclaimed work
  detail::wake_parent(*detail::current_block);
}
}  // namespace procshare
