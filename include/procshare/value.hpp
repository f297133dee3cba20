// Value<T> and Atomic<T>: one T stored under a name in a Segment, seen by every process
// mapping it (Python's multiprocessing.Value and RawValue).
//
// Value<T>
// Shared: the T and its robust lock. T is Shareable (segment.hpp): trivially copyable,
//   holding no pointers (a process that opens the segment by name maps it elsewhere).
// Guarded by: the lock, held for the whole of load(), store(), exchange(), update(f),
//   fetch_add(), operator+= and friends, and for the life of a Guard from lock(). So
//   `v += 1` is atomic across processes, unlike Python's `v.value += 1`.
// Visibility: once a write returns in one process, every later load() anywhere sees it.
// Owner death (poisoning): the next locker gets the lock and the death is counted
//   (owner_deaths(), last_dead_owner()). If the holder died in the middle of a write
//   (a multi-store write of a non-scalar T, or while it held a Guard), or an exception
//   unwound through a Guard after it gave access to the T, the value is
//   poisoned: load() still works, writes throw OwnerDied and change nothing until
//   clear_poison(). A death anywhere else (say, inside update's f, which works on a
//   copy) leaves the value as it was and does not poison it. A death never leaves a
//   waiter for the lock asleep beside a free lock: the lock is waited for in slices
//   that retry it (mutex.hpp), so a lost wake-up costs at most one slice (10 ms).
// Errors: TypeMismatch on reopen under another T or kind; SegmentFull, AlreadyExists,
//   NotFound, InvalidName on creation or opening; OwnerDied on writes to a poisoned
//   value; NotFound when the handle's segment is not mapped in this process.
//
// Atomic<T>
// Shared: one std::atomic<T> (lock-free, checked at compile time); no lock, no
//   poisoning: every operation is a single atomic instruction, so a death cannot cut it.
// Visibility: as std::atomic with the memory order given (default seq_cst).
// Errors: as Value<T>, less OwnerDied.
//
// Handles are small trivially copyable records: copy them freely, into forked children
// too. A default-constructed handle throws NotFound on use.
#pragma once

#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>

#include <atomic>
#include <concepts>
#include <exception>
#include <functional>
#include <new>
#include <type_traits>
#include <utility>

namespace procshare {
namespace detail {

// Whether a write of a T is a single store, so a death cannot leave it half-written.
template <class T> inline constexpr bool single_store_v = std::is_scalar_v<T> && sizeof(T) <= 8;

// Writes `desired` into `target`, an element guarded by `lock` (held): a write that takes
// more than one store is marked dirty, so a death in the middle of it poisons the object.
template <class T> void write_guarded(RobustLock& lock, T& target, const T& desired) {
  if constexpr (single_store_v<T>) {
    target = desired;
  } else {
    DirtyScope dirty(lock);
    target = desired;
  }
}

template <class T>
consteval void check_shareable() {
  static_assert(std::is_trivially_copyable_v<T>,
                "procshare: T must be trivially copyable (and hold no pointers) to live in "
                "shared memory");
  static_assert(requires { type_name<T>::value; },
                "procshare: T has no canonical name; register it by specialising "
                "procshare::type_name<T> with `static constexpr std::string_view value`");
  static_assert(alignof(T) <= 64, "procshare: T must not need more than 64-byte alignment");
}

// The tag a handle of a T object of kind K must carry (a handle copied bit for bit from
// an object of another T carries that T's and is refused). 0 for a T without a
// type_name: the object's own static_assert then says why.
template <ObjectKind K, class T> consteval std::uint64_t type_tag() {
  if constexpr (requires { type_name<T>::value; })
    return tag_hash(K, type_name<T>::value, sizeof(T), alignof(T));
  else
    return 0;
}

template <class T> struct alignas(64) ValueBlock {
  ObjectHeader header;
  RobustLock lock;
  T value;
};

template <class T> struct alignas(64) AtomicBlock {
  ObjectHeader header;
  std::atomic<T> value;
};

}  // namespace detail

template <class T>
class Value : public detail::DataObject<ObjectKind::value, detail::type_tag<ObjectKind::value, T>()> {
  static_assert((detail::check_shareable<T>(), true));
  using Base = detail::DataObject<ObjectKind::value, detail::type_tag<ObjectKind::value, T>()>;
  using Base::core_;
  using Base::kind;

public:
  // Holds the value's lock and gives access to the T; the value is marked dirty meanwhile,
  // so a holder that dies poisons it, and so does an exception that unwinds through the
  // guard once the guard gave access to the T (a write through it may be half done).
  // Inside it, the value's own calls (load, store, +=, update, a nested lock()) work: the
  // lock is re-entrant for its holder, as Python's Value lock (an RLock) is. Move-only;
  // unlocks on destruction, only in the process that took it. Not to be handed to
  // another thread.
  class Guard {
  public:
    // The locked value.
    T& operator*() const noexcept {
      held_.touch();
      return *value_;
    }
    T* operator->() const noexcept {
      held_.touch();
      return value_;
    }
    // Unlocks now rather than at destruction.
    void unlock() noexcept { held_.release(); }

  private:
    friend class Value;
    Guard(detail::ValueBlock<T>& block, detail::GuardState state) noexcept
        : held_(block.lock, state), value_(&block.value) {}
    detail::HeldGuard held_;
    T* value_;
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Value() = default;

  // Reads the value under the lock (also when poisoned).
  T load() const {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    return b.value;
  }
  // Writes `desired`. Throws OwnerDied if poisoned.
  void store(const T& desired) {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    write(b, desired);
  }
  // Writes `desired` and returns the previous value. Throws OwnerDied if poisoned.
  T exchange(const T& desired) {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    T previous = b.value;
    write(b, desired);
    return previous;
  }
  // Stores f(current) and returns it, all under the lock. f runs on a copy: if it
  // throws, or its process dies, the value is unchanged. Throws OwnerDied if poisoned,
  // and whatever f throws.
  template <class F>
    requires std::is_invocable_r_v<T, F&, const T&>
  T update(F&& f) {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    T next = std::invoke(f, std::as_const(b.value));
    write(b, next);
    return next;
  }
  // Locks the value for a longer read-modify-write (see Guard). Throws OwnerDied if
  // poisoned.
  [[nodiscard]] Guard lock() {
    auto& b = block();
    return Guard(b, detail::begin_guard(b.lock, core_, kind));
  }

  // Adds `delta` and returns the previous value (arithmetic T). Throws OwnerDied.
  T fetch_add(const T& delta)
    requires(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>)
  {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    const T previous = b.value;
    b.value = static_cast<T>(previous + delta);
    return previous;
  }
  // Subtracts `delta` and returns the previous value (arithmetic T). Throws OwnerDied.
  T fetch_sub(const T& delta)
    requires(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>)
  {
    auto& b = block();
    detail::ScopedLock held(b.lock, core_, kind);
    detail::check_writable(b.lock, core_, kind);
    const T previous = b.value;
    b.value = static_cast<T>(previous - delta);
    return previous;
  }
  // Atomic `+=`, `-=`, `++`, `--`: return the new value (postfix: the old one).
  T operator+=(const T& delta) requires requires(Value v) { v.fetch_add(delta); } {
    return static_cast<T>(fetch_add(delta) + delta);
  }
  T operator-=(const T& delta) requires requires(Value v) { v.fetch_sub(delta); } {
    return static_cast<T>(fetch_sub(delta) - delta);
  }
  T operator++() requires requires(Value v) { v.fetch_add(T{1}); } { return *this += T{1}; }
  T operator--() requires requires(Value v) { v.fetch_sub(T{1}); } { return *this -= T{1}; }
  T operator++(int) requires requires(Value v) { v.fetch_add(T{1}); } { return fetch_add(T{1}); }
  T operator--(int) requires requires(Value v) { v.fetch_sub(T{1}); } { return fetch_sub(T{1}); }

  // (poisoned, clear_poison, owner_deaths, last_dead_owner, name, handle: see
  // detail::DataObject and detail::LockedObject in mutex.hpp)

private:
  friend class Segment;
  using Block = detail::ValueBlock<T>;

  explicit Value(detail::HandleCore core) : Base(core) {}

  Block& block() const { return *reinterpret_cast<Block*>(this->resolved(sizeof(Block))); }
  static void write(Block& b, const T& desired) { detail::write_guarded(b.lock, b.value, desired); }
  static Value place(Segment& segment, std::string_view name, detail::Intent intent,
                     const T* initial) {
    const detail::ObjectSpec spec{kind, type_name<T>::value, sizeof(T), alignof(T), 1,
                                  sizeof(Block)};
    auto init = [](detail::ObjectHeader* object, const void* context) {
      auto* b = reinterpret_cast<Block*>(object);
      if (detail::init_lock(b->lock, false) != 0) return false;
      ::new (static_cast<void*>(&b->value)) T(*static_cast<const T*>(context));
      return true;
    };
    return Value(detail::place(segment, name, spec, intent, init, initial).handle);
  }
};

template <class T>
class Atomic {
  static_assert((detail::check_shareable<T>(), true));
  static_assert(std::atomic<T>::is_always_lock_free,
                "procshare::Atomic<T>: std::atomic<T> must be lock-free; use Value<T>");

public:
  // An empty handle: every call throws NotFound until one is assigned.
  Atomic() = default;

  // As std::atomic<T>'s members of the same names.
  T load(std::memory_order order = std::memory_order_seq_cst) const { return cell().load(order); }
  void store(T desired, std::memory_order order = std::memory_order_seq_cst) {
    cell().store(desired, order);
  }
  T exchange(T desired, std::memory_order order = std::memory_order_seq_cst) {
    return cell().exchange(desired, order);
  }
  bool compare_exchange_strong(T& expected, T desired,
                               std::memory_order order = std::memory_order_seq_cst) {
    return cell().compare_exchange_strong(expected, desired, order);
  }
  bool compare_exchange_weak(T& expected, T desired,
                             std::memory_order order = std::memory_order_seq_cst) {
    return cell().compare_exchange_weak(expected, desired, order);
  }
  T fetch_add(T delta, std::memory_order order = std::memory_order_seq_cst)
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>) || std::is_floating_point_v<T>
  {
    return cell().fetch_add(delta, order);
  }
  T fetch_sub(T delta, std::memory_order order = std::memory_order_seq_cst)
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>) || std::is_floating_point_v<T>
  {
    return cell().fetch_sub(delta, order);
  }
  T fetch_and(T mask, std::memory_order order = std::memory_order_seq_cst)
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
  {
    return cell().fetch_and(mask, order);
  }
  T fetch_or(T mask, std::memory_order order = std::memory_order_seq_cst)
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
  {
    return cell().fetch_or(mask, order);
  }
  T fetch_xor(T mask, std::memory_order order = std::memory_order_seq_cst)
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
  {
    return cell().fetch_xor(mask, order);
  }
  // `+=`, `-=`, `++`, `--` return the new value (postfix: the old one), seq_cst.
  T operator+=(T delta) requires requires(Atomic a) { a.fetch_add(delta); } {
    return static_cast<T>(fetch_add(delta) + delta);
  }
  T operator-=(T delta) requires requires(Atomic a) { a.fetch_sub(delta); } {
    return static_cast<T>(fetch_sub(delta) - delta);
  }
  T operator++() requires requires(Atomic a) { a.fetch_add(T{1}); } { return *this += T{1}; }
  T operator--() requires requires(Atomic a) { a.fetch_sub(T{1}); } { return *this -= T{1}; }
  T operator++(int) requires requires(Atomic a) { a.fetch_add(T{1}); } { return fetch_add(T{1}); }
  T operator--(int) requires requires(Atomic a) { a.fetch_sub(T{1}); } { return fetch_sub(T{1}); }

  // The name it has in its segment (a directory lookup: not for hot paths).
  std::string name() const { return detail::object_name(core_); }
  // The handle's record (segment uuid, offset, type hash).
  const detail::HandleCore& handle() const noexcept { return core_; }

private:
  friend class Segment;
  using Block = detail::AtomicBlock<T>;
  static constexpr ObjectKind kind = ObjectKind::atomic;
  // The tag a handle of this type must carry (see Value).
  static constexpr std::uint64_t tag =
      detail::tag_hash(kind, type_name<T>::value, sizeof(T), alignof(T));

  explicit Atomic(detail::HandleCore core) : core_(core) {}

  std::atomic<T>& cell() const {
    if (core_.tag_hash != tag) [[unlikely]]
      detail::throw_unresolved(core_, kind);
    return reinterpret_cast<Block*>(detail::resolve(core_, kind, sizeof(Block)))->value;
  }
  static Atomic place(Segment& segment, std::string_view name, detail::Intent intent,
                      const T* initial) {
    const detail::ObjectSpec spec{kind, type_name<T>::value, sizeof(T), alignof(T), 1,
                                  sizeof(Block)};
    auto init = [](detail::ObjectHeader* object, const void* context) {
      auto* b = reinterpret_cast<Block*>(object);
      ::new (static_cast<void*>(&b->value)) std::atomic<T>(*static_cast<const T*>(context));
      return true;
    };
    return Atomic(detail::place(segment, name, spec, intent, init, initial).handle);
  }

  detail::HandleCore core_;
};

template <class T> Value<T> Segment::create_value(std::string_view name, const T& initial) {
  return Value<T>::place(*this, name, detail::Intent::create, &initial);
}
template <class T> Value<T> Segment::open_value(std::string_view name) {
  return Value<T>::place(*this, name, detail::Intent::open, nullptr);
}
template <class T> Value<T> Segment::value(std::string_view name, const T& initial) {
  return Value<T>::place(*this, name, detail::Intent::create_or_open, &initial);
}
template <class T> Atomic<T> Segment::create_atomic(std::string_view name, const T& initial) {
  return Atomic<T>::place(*this, name, detail::Intent::create, &initial);
}
template <class T> Atomic<T> Segment::open_atomic(std::string_view name) {
  return Atomic<T>::place(*this, name, detail::Intent::open, nullptr);
}
template <class T> Atomic<T> Segment::atomic(std::string_view name, const T& initial) {
  return Atomic<T>::place(*this, name, detail::Intent::create_or_open, &initial);
}

}  // namespace procshare
