// Semaphore, BoundedSemaphore, Event, Condition, Barrier: shared state and waiting.
#include <procshare/sync.hpp>

#include "detail/names.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <exception>
#include <span>
#include <string>

namespace procshare {
namespace detail {
namespace {

constexpr std::uint32_t max_count = 0x7fffffff;
constexpr std::uint32_t max_parties = 65536;
// How often barrier waiters wake to check that every registered party is alive.
constexpr auto liveness_period = std::chrono::milliseconds(100);

struct alignas(64) SemaphoreBlock {
  ObjectHeader header;
  std::atomic<std::uint32_t> count;    // the futex word
  std::atomic<std::uint32_t> waiters;  // sleepers (a dead one only costs a wake-up call)
  std::uint32_t bounded;               // 1 for a BoundedSemaphore
  std::uint32_t bound;                 // its limit: the initial value
};

struct alignas(64) EventBlock {
  ObjectHeader header;
  std::atomic<std::uint32_t> word;     // bit 0: set; bits 1..31: how many times set
  std::atomic<std::uint32_t> waiters;
};

struct alignas(64) ConditionBlock {
  ObjectHeader header;
  std::atomic<std::uint32_t> sequence;  // bumped by every notify: the futex word
  std::atomic<std::uint32_t> waiters;   // registered waiters (a dead one stays counted)
  std::uint64_t mutex_offset;           // the bound Mutex, in the same segment
  std::uint64_t mutex_tag_hash;
  std::atomic<std::uint32_t> tickets;   // notifications not yet taken (<= waiters): a
                                        // waiter returns notified by taking one
};

struct alignas(64) BarrierBlock {
  ObjectHeader header;
  RobustLock lock;                    // guards everything below but `epoch`
  std::atomic<std::uint32_t> epoch;   // bumped whenever a round ends: the futex word
  std::uint32_t parties;
  std::uint32_t count;                // arrived in the current round
  std::uint32_t generation;           // the current round's number
  std::uint64_t broken_rounds;        // bit (round % 64): that round ended broken
  std::uint32_t broken;               // broken until reset()
  std::uint32_t break_cause;          // why the last break happened (BreakCause)
  std::int32_t break_pid;             // the process it names (the dead party, the caller)
  // followed by 2 * parties Party slots: the processes whose death breaks the barrier
};
constexpr std::size_t barrier_parties_offset = sizeof(BarrierBlock);
// The break record sits in what was padding: the party table did not move.
static_assert(barrier_parties_offset == 192);

// Why a barrier broke, kept in the block so that every process it reaches says the same.
enum class BreakCause : std::uint32_t {
  unknown = 0,       // a block written before causes were recorded
  party_died = 1,    // break_pid: a watched party that died
  timed_out = 2,     // break_pid: the process whose wait_for() timed out
  aborted = 3,       // break_pid: the process that called abort()
  reset = 4,         // break_pid: the process that called reset() while parties waited
  holder_died = 5,   // a process died while it updated the barrier
};

// A process the barrier watches: a registered member, or one waiting in a round.
struct Party {
  std::int32_t pid;    // 0: free slot
  std::uint32_t mark;  // member, or the round it waits in
};
constexpr std::uint32_t member = 0xffffffff;

template <class Block> Block& block_of(const HandleCore& core, ObjectKind kind) {
  return *reinterpret_cast<Block*>(resolve(core, kind, sizeof(Block)));
}

std::span<Party> barrier_parties(BarrierBlock& b) {
  return {reinterpret_cast<Party*>(reinterpret_cast<std::byte*>(&b) + barrier_parties_offset),
          std::size_t{b.parties} * 2};
}

// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet). Reads
// /proc/PID/stat with plain read(2): a process reaped between open and read fails the
// read with ESRCH, which an std::ifstream would throw as std::ios_base::failure. A
// process whose state cannot be read for another reason is taken to be alive.
bool process_dead(std::int32_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
  const std::string path = fmt::format("/proc/{}/stat", pid);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || errno == ESRCH;
  // "pid (comm) S ...": comm is at most 16 bytes (it may hold ')'), so the state fits.
  char text[256];
  const ssize_t got = ::read(fd, text, sizeof text);
  const int read_error = errno;
  ::close(fd);
  if (got < 0) return read_error == ESRCH;
  const std::string_view stat(text, static_cast<std::size_t>(got));
  const auto paren = stat.rfind(')');
  if (paren == std::string_view::npos || paren + 2 >= stat.size()) return true;
  const char state = stat[paren + 2];
  return state == 'Z' || state == 'X';
}

// Throws BrokenBarrier saying why its last break happened: the same text in every process
// it reaches (read with the barrier's lock held).
[[noreturn]] void throw_broken(const HandleCore& core, const BarrierBlock& b) {
  const auto pid = b.break_pid;
  std::string why;
  switch (static_cast<BreakCause>(b.break_cause)) {
    case BreakCause::party_died: why = fmt::format("process {}, a party it watched, died", pid); break;
    case BreakCause::timed_out: why = fmt::format("a wait in process {} timed out", pid); break;
    case BreakCause::aborted: why = fmt::format("process {} called abort()", pid); break;
    case BreakCause::reset: why = fmt::format("process {} called reset() while parties waited", pid); break;
    case BreakCause::holder_died: why = "a process died while it updated the barrier"; break;
    default: why = "the cause was not recorded"; break;
  }
  throw BrokenBarrier(segment_name(core), describe(core, ObjectKind::barrier),
                      fmt::format("broken: {}; reset() makes it usable again", why));
}

// Holds a barrier's lock; a holder that died mid-update broke the barrier (repaired here).
class BarrierLock {
public:
  BarrierLock(BarrierBlock& b, const HandleCore& core, Deadline deadline = no_deadline) : block_(b) {
    if (const int error = detail::lock_until(b.lock, deadline))
      throw_lock_error(core, ObjectKind::barrier, "lock", error);
    if (b.lock.poisoned.load(std::memory_order_relaxed)) {
      b.lock.poisoned.store(0, std::memory_order_relaxed);
      break_round(BreakCause::holder_died, 0);
    }
  }
  ~BarrierLock() { detail::unlock(block_.lock); }
  BarrierLock(const BarrierLock&) = delete;
  BarrierLock& operator=(const BarrierLock&) = delete;

  // Ends the current round as `broken_round` says and starts the next; its waiters are
  // no longer watched.
  void end_round(bool broken_round) {
    BarrierBlock& b = block_;
    {
      DirtyScope dirty(b.lock);
      const std::uint64_t bit = std::uint64_t{1} << (b.generation % 64);
      b.broken_rounds = broken_round ? (b.broken_rounds | bit) : (b.broken_rounds & ~bit);
      b.count = 0;
      for (Party& party : barrier_parties(b))
        if (party.pid != 0 && party.mark == b.generation) party = Party{0, 0};
      b.generation += 1;
      b.broken_rounds &= ~(std::uint64_t{1} << (b.generation % 64));
    }
    b.epoch.fetch_add(1, std::memory_order_release);
    futex_wake(b.epoch);
  }
  // Breaks the barrier for `cause`, naming process `pid`: the current round's waiters
  // throw, later arrivals too. A barrier broken already keeps its first cause.
  void break_round(BreakCause cause, std::int32_t pid) {
    if (block_.broken) return;
    block_.break_cause = static_cast<std::uint32_t>(cause);
    block_.break_pid = pid;
    block_.broken = 1;
    end_round(true);
  }
  // Watches the calling process: as a member (until unwatch()), or while it waits in the
  // current round. Ignored when every slot is taken.
  void watch_self(bool as_member) {
    const std::int32_t self = cached_pid;
    Party* free_slot = nullptr;
    for (Party& party : barrier_parties(block_)) {
      if (party.pid == self) {
        if (as_member) party.mark = member;
        return;
      }
      if (party.pid == 0 && free_slot == nullptr) free_slot = &party;
    }
    if (free_slot != nullptr) *free_slot = Party{self, as_member ? member : block_.generation};
  }
  // Stops watching the calling process.
  void unwatch_self() {
    for (Party& party : barrier_parties(block_))
      if (party.pid == cached_pid) party = Party{0, 0};
  }
  // Forgets watched processes that have died; returns the pid of one of them, or 0.
  std::int32_t forget_dead() {
    std::int32_t dead = 0;
    for (Party& party : barrier_parties(block_))
      if (party.pid != 0 && party.pid != cached_pid && process_dead(party.pid)) {
        if (dead == 0) dead = party.pid;
        party = Party{0, 0};
      }
    return dead;
  }

private:
  BarrierBlock& block_;
};

void check_count(const Segment& segment, ObjectKind kind, std::string_view name,
                 std::uint32_t initial) {
  if (initial > max_count)
    throw InvalidArgument(segment.name(), describe_object(kind, name),
                          fmt::format("initial count {} is out of range (0 to {})", initial,
                                      max_count));
}

}  // namespace
}  // namespace detail

using detail::BarrierBlock;
using detail::ConditionBlock;
using detail::EventBlock;
using detail::SemaphoreBlock;

// ---------------------------------------------------------------- Semaphore

namespace {

bool try_take(SemaphoreBlock& b) {
  std::uint32_t count = b.count.load(std::memory_order_relaxed);
  while (count > 0)
    if (b.count.compare_exchange_weak(count, count - 1, std::memory_order_acquire)) return true;
  return false;
}

}  // namespace

void Semaphore::acquire() { acquire_until(detail::no_deadline); }

bool Semaphore::try_acquire() {
  return try_take(detail::block_of<SemaphoreBlock>(core_, kind_));
}

bool Semaphore::acquire_until(detail::Deadline deadline) {
  auto& b = detail::block_of<SemaphoreBlock>(core_, kind_);
  for (;;) {
    if (try_take(b)) return true;
    b.waiters.fetch_add(1);
    auto result = detail::WaitResult::woken;
    if (b.count.load() == 0) result = detail::futex_wait(b.count, 0, deadline);
    b.waiters.fetch_sub(1);
    if (result == detail::WaitResult::timed_out) return try_take(b);
  }
}

void Semaphore::release(std::uint32_t units) {
  auto& b = detail::block_of<SemaphoreBlock>(core_, kind_);
  if (units == 0)
    throw InvalidArgument(detail::segment_name(core_), detail::describe(core_, kind_),
                          "release of 0 units");
  const std::uint32_t limit = b.bounded ? b.bound : detail::max_count;
  std::uint32_t count = b.count.load(std::memory_order_relaxed);
  do {
    if (units > limit || count > limit - units)
      throw InvalidArgument(
          detail::segment_name(core_), detail::describe(core_, kind_),
          b.bounded ? fmt::format("release of {} would raise the count from {} above its "
                                     "initial value {}",
                                     units, count, b.bound)
                       : fmt::format("release of {} would raise the count from {} above {}",
                                     units, count, limit));
  } while (!b.count.compare_exchange_weak(count, count + units, std::memory_order_seq_cst));
  if (b.waiters.load() > 0)
    detail::futex_wake(b.count, static_cast<int>(std::min<std::uint32_t>(units, INT_MAX)));
}

Semaphore::Guard Semaphore::guard() {
  acquire();
  return Guard(core_, kind_, detail::cached_pid);
}

Semaphore::Guard Semaphore::guard_until_deadline(detail::Deadline deadline, std::string_view call) {
  if (!acquire_until(deadline))
    throw Timeout(detail::segment_name(core_), detail::describe(core_, kind_),
                  fmt::format("{}: no unit became free before the deadline", call));
  return Guard(core_, kind_, detail::cached_pid);
}

Semaphore::Guard::~Guard() {
  if (!held()) return;
  try {
    release();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "procshare: ~Semaphore::Guard: %s\n", e.what());
  }
}

void Semaphore::Guard::release() {
  if (!held()) return;
  holder_ = 0;
  Semaphore(core_, kind_).release();
}

bool Semaphore::Guard::held() const noexcept {
  return holder_ != 0 && holder_ == detail::cached_pid;
}

std::uint32_t Semaphore::value() const {
  return detail::block_of<SemaphoreBlock>(core_, kind_).count.load(std::memory_order_relaxed);
}

std::string Semaphore::name() const { return detail::object_name(core_); }

std::uint32_t BoundedSemaphore::bound() const {
  return detail::block_of<SemaphoreBlock>(core_, kind_).bound;
}

// ---------------------------------------------------------------- Event

void Event::set() {
  auto& b = detail::block_of<EventBlock>(core_, ObjectKind::event);
  std::uint32_t word = b.word.load(std::memory_order_relaxed);
  do {
    if (word & 1u) return;
  } while (!b.word.compare_exchange_weak(word, (word + 2u) | 1u, std::memory_order_seq_cst));
  if (b.waiters.load() > 0) detail::futex_wake(b.word);
}

void Event::clear() {
  detail::block_of<EventBlock>(core_, ObjectKind::event).word.fetch_and(~1u, std::memory_order_release);
}

bool Event::is_set() const {
  return (detail::block_of<EventBlock>(core_, ObjectKind::event).word.load(std::memory_order_acquire) & 1u) != 0;
}

void Event::wait() { wait_until_deadline(detail::no_deadline); }

bool Event::wait_until_deadline(detail::Deadline deadline) {
  auto& b = detail::block_of<EventBlock>(core_, ObjectKind::event);
  const std::uint32_t first = b.word.load(std::memory_order_acquire);
  if (first & 1u) return true;
  b.waiters.fetch_add(1);
  std::uint32_t word = first;
  for (;;) {
    const auto result = detail::futex_wait(b.word, word, deadline);
    word = b.word.load(std::memory_order_acquire);
    // Set now, or set (and perhaps cleared again) since the wait began.
    if ((word & 1u) || (word >> 1) != (first >> 1)) {
      b.waiters.fetch_sub(1);
      return true;
    }
    if (result == detail::WaitResult::timed_out) {
      b.waiters.fetch_sub(1);
      return false;
    }
  }
}

std::string Event::name() const { return detail::object_name(core_); }

// ---------------------------------------------------------------- Condition

namespace {

// Takes one notification, if one is waiting to be taken.
bool take_ticket(ConditionBlock& b) {
  std::uint32_t tickets = b.tickets.load();
  while (tickets > 0)
    if (b.tickets.compare_exchange_weak(tickets, tickets - 1)) return true;
  return false;
}

// Leaves up to `count` more notifications, never more than there are waiters; returns
// whether anyone waits.
bool give_tickets(ConditionBlock& b, std::uint32_t count) {
  const std::uint32_t waiters = b.waiters.load();
  if (waiters == 0) return false;
  std::uint32_t tickets = b.tickets.load();
  while (tickets < waiters &&
         !b.tickets.compare_exchange_weak(tickets, waiters - tickets > count ? tickets + count : waiters)) {}
  return true;
}

}  // namespace

std::cv_status Condition::wait_until_deadline(std::unique_lock<Mutex>& lock,
                                              detail::Deadline deadline) {
  auto& b = detail::block_of<ConditionBlock>(core_, ObjectKind::condition);
  if (lock.mutex() == nullptr || lock.mutex()->handle().offset != b.mutex_offset ||
      !(lock.mutex()->handle().segment == core_.segment))
    throw InvalidArgument(detail::segment_name(core_), detail::describe(core_, ObjectKind::condition),
                          fmt::format("wait with a lock of another mutex than its own ('{}')",
                                      mutex().name()));
  if (!lock.owns_lock())
    throw NotOwner(detail::segment_name(core_), detail::describe(core_, ObjectKind::condition),
                   "wait without holding its mutex");
  // The sequence is read before the waiter counts itself: a notify that sees it counted
  // moves the sequence after this read, so the sleep below sees that notify.
  const std::uint32_t start = b.sequence.load();
  b.waiters.fetch_add(1);
  lock.unlock();
  // A notify leaves a ticket and moves the sequence, then wakes. A waiter returns when
  // it takes a ticket: the one meant for it, or one whose wake-up went to a waiter that
  // died before taking it (futex_wait sees the sequence moved within one slice). Only a
  // waiter that has seen a notify since it began may take one: a ticket left over from
  // before (a dead waiter's) must not end a wait that no notify reached.
  auto status = std::cv_status::no_timeout;
  std::uint32_t sequence = start;
  for (;;) {
    const auto result = detail::futex_wait(b.sequence, sequence, deadline);
    if (b.sequence.load() != start && take_ticket(b)) break;
    if (result == detail::WaitResult::timed_out) {
      status = std::cv_status::timeout;
      break;
    }
    sequence = b.sequence.load();  // another waiter took that ticket: sleep on
  }
  const std::uint32_t waiters = b.waiters.fetch_sub(1) - 1;
  // Never more tickets than waiters: one left by a notify that raced this timeout would
  // otherwise wake a later waiter for a notify it never saw.
  std::uint32_t tickets = b.tickets.load();
  while (tickets > waiters && !b.tickets.compare_exchange_weak(tickets, waiters)) {}
  lock.lock();
  return status;
}

void Condition::wait(std::unique_lock<Mutex>& lock) {
  wait_until_deadline(lock, detail::no_deadline);
}

void Condition::notify_one() {
  auto& b = detail::block_of<ConditionBlock>(core_, ObjectKind::condition);
  if (give_tickets(b, 1)) {
    b.sequence.fetch_add(1);
    detail::futex_wake(b.sequence, 1);
  }
}

void Condition::notify_all() {
  auto& b = detail::block_of<ConditionBlock>(core_, ObjectKind::condition);
  if (give_tickets(b, UINT32_MAX)) {
    b.sequence.fetch_add(1);
    detail::futex_wake(b.sequence);
  }
}

Mutex Condition::mutex() const {
  auto& b = detail::block_of<ConditionBlock>(core_, ObjectKind::condition);
  return Mutex(detail::HandleCore{core_.segment, b.mutex_offset, b.mutex_tag_hash});
}

std::string Condition::name() const { return detail::object_name(core_); }

// ---------------------------------------------------------------- Barrier

std::uint32_t Barrier::arrive_and_wait() { return arrive_until(detail::no_deadline); }

std::uint32_t Barrier::arrive_until(detail::Deadline deadline) {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  std::uint32_t index = 0, round = 0;
  {
    detail::BarrierLock held(b, core_);
    if (b.broken) detail::throw_broken(core_, b);
    index = b.count;
    round = b.generation;
    if (index + 1 == b.parties) {
      held.end_round(false);
      return index;
    }
    b.count = index + 1;
    held.watch_self(false);
  }
  for (;;) {
    const std::uint32_t epoch = b.epoch.load(std::memory_order_acquire);
    {
      detail::BarrierLock held(b, core_);
      if (b.generation != round) {
        if (b.broken_rounds & (std::uint64_t{1} << (round % 64))) detail::throw_broken(core_, b);
        return index;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        held.break_round(detail::BreakCause::timed_out, detail::cached_pid);
        detail::throw_broken(core_, b);
      }
      if (const std::int32_t dead = held.forget_dead(); dead != 0) {
        held.break_round(detail::BreakCause::party_died, dead);
        detail::throw_broken(core_, b);
      }
    }
    const auto wake_by = std::min(deadline, std::chrono::steady_clock::now() + detail::liveness_period);
    detail::futex_wait(b.epoch, epoch, wake_by);
  }
}

void Barrier::register_party() {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_);
  held.watch_self(true);
}

void Barrier::unregister_party() {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_);
  held.unwatch_self();
}

void Barrier::abort() {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_);
  held.break_round(detail::BreakCause::aborted, detail::cached_pid);
}

void Barrier::reset() {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_);
  held.forget_dead();
  if (b.count > 0) {  // those waiting now throw BrokenBarrier
    b.break_cause = static_cast<std::uint32_t>(detail::BreakCause::reset);
    b.break_pid = detail::cached_pid;
    held.end_round(true);
  }
  b.broken = 0;
}

bool Barrier::broken() const {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_);
  return b.broken != 0;
}

std::uint32_t Barrier::parties() const {
  return detail::block_of<BarrierBlock>(core_, ObjectKind::barrier).parties;
}

std::uint32_t Barrier::waiting() const {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_);
  return b.count;
}

std::string Barrier::state_text(detail::Deadline deadline) const {
  auto& b = detail::block_of<BarrierBlock>(core_, ObjectKind::barrier);
  detail::BarrierLock held(b, core_, deadline);
  return b.broken ? std::string("broken") : fmt::format("{} of {} waiting", b.count, b.parties);
}

std::string Barrier::name() const { return detail::object_name(core_); }

// ---------------------------------------------------------------- factories

namespace {

template <class Block>
detail::ObjectSpec spec_for(ObjectKind kind, detail::Intent intent, std::size_t bytes = sizeof(Block)) {
  return detail::ObjectSpec{kind, "", 0, 0, 1, intent == detail::Intent::open ? 0 : bytes};
}

detail::HandleCore place_semaphore(Segment& segment, std::string_view name, ObjectKind kind,
                                   detail::Intent intent, std::uint32_t initial) {
  if (intent != detail::Intent::open) detail::check_count(segment, kind, name, initial);
  struct Init {
    std::uint32_t initial;
    bool bounded;
  } const init{initial, kind == ObjectKind::bounded_semaphore};
  return detail::place(
             segment, name, spec_for<SemaphoreBlock>(kind, intent), intent,
             [](detail::ObjectHeader* object, const void* context) {
               const auto& i = *static_cast<const Init*>(context);
               auto* b = reinterpret_cast<SemaphoreBlock*>(object);
               b->count.store(i.initial);
               b->bounded = i.bounded ? 1 : 0;
               b->bound = i.initial;
               return true;
             },
             &init)
      .handle;
}

}  // namespace

Semaphore Segment::create_semaphore(std::string_view name, std::uint32_t initial) {
  return Semaphore(place_semaphore(*this, name, ObjectKind::semaphore, detail::Intent::create, initial),
                   ObjectKind::semaphore);
}
Semaphore Segment::open_semaphore(std::string_view name) {
  return Semaphore(place_semaphore(*this, name, ObjectKind::semaphore, detail::Intent::open, 0),
                   ObjectKind::semaphore);
}
Semaphore Segment::semaphore(std::string_view name, std::uint32_t initial) {
  return Semaphore(
      place_semaphore(*this, name, ObjectKind::semaphore, detail::Intent::create_or_open, initial),
      ObjectKind::semaphore);
}
BoundedSemaphore Segment::create_bounded_semaphore(std::string_view name, std::uint32_t initial) {
  return BoundedSemaphore(place_semaphore(*this, name, ObjectKind::bounded_semaphore,
                                          detail::Intent::create, initial));
}
BoundedSemaphore Segment::open_bounded_semaphore(std::string_view name) {
  return BoundedSemaphore(
      place_semaphore(*this, name, ObjectKind::bounded_semaphore, detail::Intent::open, 0));
}
BoundedSemaphore Segment::bounded_semaphore(std::string_view name, std::uint32_t initial) {
  return BoundedSemaphore(place_semaphore(*this, name, ObjectKind::bounded_semaphore,
                                          detail::Intent::create_or_open, initial));
}

namespace {

detail::HandleCore place_event(Segment& segment, std::string_view name, detail::Intent intent,
                               bool initial) {
  return detail::place(
             segment, name, spec_for<EventBlock>(ObjectKind::event, intent), intent,
             [](detail::ObjectHeader* object, const void* context) {
               reinterpret_cast<EventBlock*>(object)->word.store(*static_cast<const bool*>(context) ? 1u : 0u);
               return true;
             },
             &initial)
      .handle;
}

detail::HandleCore place_condition(Segment& segment, std::string_view name,
                                   detail::Intent intent, const Mutex* mutex) {
  if (mutex != nullptr) {
    const auto& m = mutex->handle();
    if (!(m.segment == segment.uuid()))
      throw InvalidArgument(segment.name(), detail::describe_object(ObjectKind::condition, name),
                            "its mutex must be an object of the same segment");
    detail::resolve(m, ObjectKind::mutex, sizeof(detail::LockBlock));  // it exists here
  }
  return detail::place(
             segment, name, spec_for<ConditionBlock>(ObjectKind::condition, intent), intent,
             [](detail::ObjectHeader* object, const void* context) {
               const auto& m = *static_cast<const detail::HandleCore*>(context);
               auto* b = reinterpret_cast<ConditionBlock*>(object);
               b->mutex_offset = m.offset;
               b->mutex_tag_hash = m.tag_hash;
               return true;
             },
             mutex != nullptr ? &mutex->handle() : nullptr)
      .handle;
}

detail::HandleCore place_barrier(Segment& segment, std::string_view name, detail::Intent intent,
                                 std::uint32_t parties) {
  if (intent != detail::Intent::open && (parties == 0 || parties > detail::max_parties))
    throw InvalidArgument(segment.name(), detail::describe_object(ObjectKind::barrier, name),
                          fmt::format("{} parties is out of range (1 to {})", parties,
                                      detail::max_parties));
  const std::size_t bytes =
      detail::barrier_parties_offset + std::size_t{parties} * 2 * sizeof(detail::Party);
  detail::ObjectSpec spec = spec_for<BarrierBlock>(ObjectKind::barrier, intent, bytes);
  spec.length = intent == detail::Intent::open ? 0 : parties;
  const detail::Placement placed = detail::place(
             segment, name, spec, intent,
             [](detail::ObjectHeader* object, const void* context) {
               auto* b = reinterpret_cast<BarrierBlock*>(object);
               if (detail::init_lock(b->lock, false) != 0) return false;
               b->parties = *static_cast<const std::uint32_t*>(context);
               return true;
             },
             &parties);
  // Its party table is as long as the object says: a block claiming more parties (a
  // forged file) would send every round's bookkeeping past the object's end.
  const auto& b = detail::block_of<BarrierBlock>(placed.handle, ObjectKind::barrier);
  if (b.parties != placed.length || b.parties == 0 || b.parties > detail::max_parties)
    throw CorruptSegment(segment.name(), detail::describe_object(ObjectKind::barrier, name),
                         fmt::format("it claims {} parties but has room for {}", b.parties,
                                     placed.length));
  return placed.handle;
}

}  // namespace

Event Segment::create_event(std::string_view name, bool initial) {
  return Event(place_event(*this, name, detail::Intent::create, initial));
}
Event Segment::open_event(std::string_view name) {
  return Event(place_event(*this, name, detail::Intent::open, false));
}
Event Segment::event(std::string_view name, bool initial) {
  return Event(place_event(*this, name, detail::Intent::create_or_open, initial));
}
Condition Segment::create_condition(std::string_view name, const Mutex& mutex) {
  return Condition(place_condition(*this, name, detail::Intent::create, &mutex));
}
Condition Segment::open_condition(std::string_view name) {
  return Condition(place_condition(*this, name, detail::Intent::open, nullptr));
}
Condition Segment::condition(std::string_view name, const Mutex& mutex) {
  return Condition(place_condition(*this, name, detail::Intent::create_or_open, &mutex));
}
Barrier Segment::create_barrier(std::string_view name, std::uint32_t parties) {
  return Barrier(place_barrier(*this, name, detail::Intent::create, parties));
}
Barrier Segment::open_barrier(std::string_view name) {
  return Barrier(place_barrier(*this, name, detail::Intent::open, 1));
}
Barrier Segment::barrier(std::string_view name, std::uint32_t parties) {
  return Barrier(place_barrier(*this, name, detail::Intent::create_or_open, parties));
}

}  // namespace procshare
