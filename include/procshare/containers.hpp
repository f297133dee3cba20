// Vector<T>, Map<K, V> and String: containers kept in the shared segment itself, each
// guarded by its own robust lock (Python's Manager().list() / .dict(), without a manager
// process: an access costs a lock, not a round trip to another process).
//
// Shared: the container and its own arena: a region of `capacity` bytes reserved at
//   creation inside the segment and managed by Boost.Interprocess (rbtree_best_fit over
//   offset pointers, so every process can map it at its own address). A container
//   allocates only from its arena, so whatever happens to it cannot touch the segment's
//   other objects. Elements are T for trivially copyable T with a type_name, or
//   std::string (stored as a shared string and copied out as std::string).
// Guarded by: the container's lock, held for the whole of every call, and for the life
//   of a Guard from lock(), which exposes the container for iteration and
//   read-modify-write sequences (Python's `with lock: if len(l) < 5: l.append(x)`).
// Visibility: once a call returns in one process, every later call anywhere sees it.
// Owner death: every write is marked dirty; a process that dies in the middle of one
//   poisons the container (only it). Unlike a Value's, a container's structure may then
//   be torn (a half-linked tree node), so a poisoned container refuses reads as well as
//   writes (OwnerDied) until reset(), which empties it and makes it whole again. An
//   exception that unwinds through a Guard poisons it too. Waiters for a container's
//   lock wait in slices that retry it (mutex.hpp): a death never strands one.
// Out of room: SegmentFull naming the container and its arena's sizes, and the
//   container exactly as it was before the call (strong guarantee).
// Errors: IndexOutOfRange (Vector), InvalidArgument (capacity too small), TypeMismatch,
//   AlreadyExists, NotFound, SegmentFull, InvalidName from the Segment factories.
#pragma once

#include <procshare/mutex.hpp>
#include <procshare/segment.hpp>
#include <procshare/value.hpp>

#include <boost/container/throw_exception.hpp>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/containers/map.hpp>
#include <boost/interprocess/containers/string.hpp>
#include <boost/interprocess/containers/vector.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/sync/mutex_family.hpp>

#include <boost/intrusive/rbtree_algorithms.hpp>
#include <boost/move/utility_core.hpp>

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace procshare {

template <class T> class Vector;
template <class K, class V> class Map;
class String;

namespace detail {

namespace bip = boost::interprocess;
// The arena's own locking is off (null_mutex_family): the container's robust lock
// serialises everything, so a death can never leave a Boost mutex locked for ever.
using ContainerArena =
    bip::basic_managed_external_buffer<char, bip::rbtree_best_fit<bip::null_mutex_family>,
                                       bip::iset_index>;
using ArenaManager = ContainerArena::segment_manager;
template <class T> using ArenaAllocator = bip::allocator<T, ArenaManager>;
using SharedString = bip::basic_string<char, std::char_traits<char>, ArenaAllocator<char>>;

// How a T is kept in a container: as itself, or a std::string as a SharedString.
template <class T> struct Stored {
  using type = T;
  static std::string_view name() { return type_name<T>::value; }
  static const T& in(const T& v, const ArenaAllocator<char>&) { return v; }
  static T out(const T& s) { return s; }
};
template <> struct Stored<std::string> {
  using type = SharedString;
  static std::string_view name() { return "string"; }
  static SharedString in(const std::string& v, const ArenaAllocator<char>& a) {
    return SharedString(v.data(), v.size(), a);
  }
  static std::string out(const SharedString& s) { return std::string(s.data(), s.size()); }
};

template <class T>
concept ContainerElement = Shareable<T> || std::is_same_v<T, std::string>;

// Compares stored keys with each other and with the caller's keys without converting.
struct KeyLess {
  using is_transparent = void;
  template <class A, class B> bool operator()(const A& a, const B& b) const { return view(a) < view(b); }
  template <class T> static const T& view(const T& v) requires std::is_arithmetic_v<T> { return v; }
  static std::string_view view(const SharedString& s) { return {s.data(), s.size()}; }
  static std::string_view view(const std::string& s) { return s; }
};

struct alignas(64) ContainerBlock {
  ObjectHeader header;
  RobustLock lock;
  alignas(64) std::uint64_t container_offset;  // from the block's start
  std::uint64_t arena_offset;
  std::uint64_t arena_bytes;
};
inline constexpr std::size_t container_arena_offset = 256;

[[noreturn]] PROCSHARE_API void throw_container_full(const HandleCore& handle, ObjectKind kind,
                                                     std::size_t free, std::size_t capacity);
[[noreturn]] PROCSHARE_API void throw_container_index(const HandleCore& handle, ObjectKind kind,
                                                      std::size_t index, std::size_t size);
[[noreturn]] PROCSHARE_API void throw_container_corrupt(const HandleCore& handle, ObjectKind kind,
                                                        std::string_view why);
[[noreturn]] PROCSHARE_API void throw_small_capacity(const Segment& segment, ObjectKind kind,
                                                     std::string_view name, std::size_t capacity);

// The bytes of one container's arena, for checking that what a (possibly forged or torn)
// container points at lies inside it before anything is read there.
class ArenaBounds {
public:
  ArenaBounds(const void* begin, std::uint64_t bytes)
      : begin_(reinterpret_cast<std::uintptr_t>(begin)), bytes_(bytes) {}
  // Whether [p, p + bytes) lies inside the arena and p is aligned to `alignment`.
  bool holds(const void* p, std::uint64_t bytes, std::size_t alignment) const {
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    return at >= begin_ && at - begin_ <= bytes_ && bytes <= bytes_ - (at - begin_) &&
           at % alignment == 0;
  }
  // Whether `count` objects of `size` bytes from p lie inside it (no overflow).
  bool holds_array(const void* p, std::uint64_t count, std::size_t size, std::size_t alignment) const {
    return count <= bytes_ / size && holds(p, count * size, alignment);
  }
  std::uint64_t bytes() const { return bytes_; }

private:
  std::uintptr_t begin_;
  std::uint64_t bytes_;
};

// Whether a stored element's own storage lies inside the arena (only a SharedString has
// storage of its own; the element itself was checked by its container).
template <class S> bool element_intact(const S&, const ArenaBounds&) { return true; }
inline bool element_intact(const SharedString& s, const ArenaBounds& arena) {
  const char* data = s.data();  // the inline buffer, or the offset pointer's target
  return s.size() == 0 || arena.holds(data, s.size(), 1);
}
template <class A, class B> bool element_intact(const std::pair<A, B>& p, const ArenaBounds& arena) {
  return element_intact(p.first, arena) && element_intact(p.second, arena);
}

template <class C> bool structure_intact(const C& c, const ArenaBounds& arena);

// A String: its characters lie in the arena.
template <> inline bool structure_intact(const SharedString& c, const ArenaBounds& arena) {
  return element_intact(c, arena);
}

// A Vector: its elements, and whatever they own, lie in the arena.
template <class C>
  requires requires(const C& c) { c.data(); c.capacity(); }
bool vector_intact(const C& c, const ArenaBounds& arena) {
  using S = typename C::value_type;
  if (c.size() == 0) return true;
  if (c.size() > c.capacity() || !arena.holds_array(c.data(), c.size(), sizeof(S), alignof(S)))
    return false;
  for (const S& s : c)
    if (!element_intact(s, arena)) return false;
  return true;
}

// A Map: its red-black tree is a tree (every node inside the arena, reached once, its
// parent link pointing back, at most as many nodes as the arena can hold), the header's
// leftmost and rightmost links are right, and every key and value lies in the arena. Only
// then does iterating it follow nothing but checked links.
template <class C>
  requires requires { typename C::key_compare; }
bool tree_intact(const C& c, const ArenaBounds& arena) {
  using VoidPointer = typename boost::container::allocator_traits<
      typename C::allocator_type>::void_pointer;
  using Traits = boost::intrusive::rbtree_node_traits<VoidPointer, true>;
  using NodePtr = typename Traits::node_ptr;
  using Node = typename C::stored_allocator_type::value_type;  // links and value
  static_assert(std::is_same_v<std::remove_cvref_t<decltype(c.end().get().pointed_node())>, NodePtr>,
                "the map's node links are not the ones checked here");
  const NodePtr header = c.end().get().pointed_node();  // inside the container object
  const NodePtr root = Traits::get_parent(header);
  if (!root) return Traits::get_left(header) == header && Traits::get_right(header) == header;
  auto node_inside = [&](const NodePtr& n) {
    return arena.holds(boost::movelib::to_raw_pointer(n), sizeof(Node), alignof(Node));
  };
  if (!node_inside(root) || Traits::get_parent(root) != header) return false;
  const std::uint64_t most = arena.bytes() / sizeof(Node);
  std::uint64_t seen = 0;
  std::vector<NodePtr> pending{root};
  while (!pending.empty()) {
    const NodePtr n = pending.back();
    pending.pop_back();
    if (++seen > most) return false;
    for (const NodePtr& child : {Traits::get_left(n), Traits::get_right(n)}) {
      if (!child) continue;
      if (!node_inside(child) || Traits::get_parent(child) != n) return false;
      pending.push_back(child);
    }
  }
  NodePtr leftmost = root, rightmost = root;
  while (Traits::get_left(leftmost)) leftmost = Traits::get_left(leftmost);
  while (Traits::get_right(rightmost)) rightmost = Traits::get_right(rightmost);
  if (Traits::get_left(header) != leftmost || Traits::get_right(header) != rightmost) return false;
  for (const auto& entry : c)
    if (!element_intact(entry, arena)) return false;
  return true;
}

template <class C> bool structure_intact(const C& c, const ArenaBounds& arena) {
  if constexpr (requires { typename C::key_compare; }) return tree_intact(c, arena);
  else return vector_intact(c, arena);
}

// The common part of Vector, Map and String: a handle on a ContainerBlock holding a C.
template <class C, ObjectKind Kind> class ContainerHandle {
public:
  ContainerHandle() = default;
  explicit ContainerHandle(HandleCore core) : core_(core) {}

  ContainerBlock& block() const {
    return *reinterpret_cast<ContainerBlock*>(resolve(core_, Kind, container_arena_offset));
  }
  // (the container's offset is validated when the block is made, and rewritten only under
  // the lock)
  static C& container(ContainerBlock& b) {
    const std::uint64_t offset = std::atomic_ref(b.container_offset).load(std::memory_order_relaxed);
    return *reinterpret_cast<C*>(reinterpret_cast<std::byte*>(&b) + offset);
  }
  // Whether the block's container offset puts the container inside its arena, aligned
  // (checked before the container is touched: a forged offset may point anywhere).
  static bool container_fits(const ContainerBlock& b) {
    const std::uint64_t offset =
        std::atomic_ref(const_cast<std::uint64_t&>(b.container_offset)).load(std::memory_order_relaxed);
    const std::uint64_t arena_end = b.arena_offset + b.arena_bytes;  // checked at open
    return offset >= b.arena_offset && offset <= arena_end && sizeof(C) <= arena_end - offset &&
           (reinterpret_cast<std::uintptr_t>(&b) + offset) % alignof(C) == 0;
  }
  static void set_container(ContainerBlock& b, const C* c) {
    std::atomic_ref(b.container_offset)
        .store(static_cast<std::uint64_t>(reinterpret_cast<const std::byte*>(c) -
                                          reinterpret_cast<std::byte*>(&b)),
               std::memory_order_relaxed);
  }
  // Runs f(container) under the lock, for reading. Throws OwnerDied if poisoned.
  template <class F> decltype(auto) read(F&& f) const {
    auto& b = block();
    ScopedLock held(b.lock, core_, Kind);
    check_writable(b.lock, core_, Kind);
    return f(std::as_const(container(b)));
  }
  // For procshare-ctl (Segment::value_text): runs f(container) under the lock, waiting
  // for it at most until `deadline`, once the container is found to hold together inside
  // its arena (so a forged or torn one is reported, never walked). Throws Timeout,
  // OwnerDied if poisoned, CorruptSegment.
  template <class F> decltype(auto) inspect(F&& f, Deadline deadline) const {
    auto& b = block();
    DeadlineLock held(b.lock, core_, Kind, deadline);
    check_writable(b.lock, core_, Kind);
    if (!container_fits(b))
      throw_container_corrupt(core_, Kind, "the container lies outside its arena");
    const ArenaBounds arena(reinterpret_cast<std::byte*>(&b) + b.arena_offset, b.arena_bytes);
    const C& c = container(b);
    if (!structure_intact(c, arena))
      throw_container_corrupt(core_, Kind, "its contents do not hold together inside its arena");
    return f(c);
  }
  // Runs f(container) under the lock, marked dirty; arena exhaustion is SegmentFull and
  // (the Boost containers giving the strong guarantee) leaves the container unchanged.
  template <class F> decltype(auto) write(F&& f) {
    auto& b = block();
    ScopedLock held(b.lock, core_, Kind);
    check_writable(b.lock, core_, Kind);
    try {
      DirtyScope dirty(b.lock);
      return f(container(b));
    } catch (const bip::bad_alloc&) {
      throw_full(container(b));
    } catch (const boost::container::length_error&) {  // more than the arena could ever hold
      throw_full(container(b));
    }
  }
  [[noreturn]] void throw_full(C& c) const {
    auto* manager = c.get_allocator().get_segment_manager();
    throw_container_full(core_, Kind, manager->get_free_memory(), manager->get_size());
  }
  ArenaAllocator<char> allocator(C& c) const { return ArenaAllocator<char>(c.get_allocator().get_segment_manager()); }

  bool poisoned() const {
    observe_deaths(block().lock);
    return block().lock.poisoned.load(std::memory_order_relaxed) != 0;
  }
  // Rebuilds an empty container over the whole arena (never reading the old one) and
  // clears the poison.
  void reset() {
    auto& b = block();
    ScopedLock held(b.lock, core_, Kind);
    {
      DirtyScope dirty(b.lock);
      const std::uint64_t capacity = b.arena_bytes;
      ContainerArena arena(bip::create_only, reinterpret_cast<std::byte*>(&b) + b.arena_offset, capacity);
      C* c = arena.construct<C>(bip::anonymous_instance)(arena.get_segment_manager());
      set_container(b, c);
    }
    b.lock.poisoned.store(0, std::memory_order_relaxed);
  }
  std::uint32_t owner_deaths() const {
    observe_deaths(block().lock);
    return block().lock.deaths.load(std::memory_order_relaxed);
  }
  // Bytes of the arena still free.
  std::size_t free_bytes() const {
    return read([](const C& c) { return c.get_allocator().get_segment_manager()->get_free_memory(); });
  }

  // Builds the arena and an empty C in a new block.
  static bool init(ObjectHeader* object, const void* context) {
    auto* b = reinterpret_cast<ContainerBlock*>(object);
    if (init_lock(b->lock, false) != 0) return false;
    b->arena_offset = container_arena_offset;
    b->arena_bytes = *static_cast<const std::uint64_t*>(context);
    try {
      ContainerArena arena(bip::create_only, reinterpret_cast<std::byte*>(b) + b->arena_offset,
                           b->arena_bytes);
      C* c = arena.construct<C>(bip::anonymous_instance)(arena.get_segment_manager());
      set_container(*b, c);
    } catch (...) {
      return false;
    }
    return true;
  }
  static HandleCore place(Segment& segment, std::string_view name, Intent intent,
                          std::string_view type, std::uint64_t capacity) {
    if (intent != Intent::open && capacity < 1024) throw_small_capacity(segment, Kind, name, capacity);
    // Saturates (and so fails as SegmentFull) where the block's size would overflow.
    const std::uint64_t bytes = capacity > UINT64_MAX - container_arena_offset
                                    ? UINT64_MAX
                                    : container_arena_offset + capacity;
    const ObjectSpec spec{Kind, type, 0, 1, 1, intent == Intent::open ? 0 : bytes};
    const Placement placed = detail::place(segment, name, spec, intent, &init, &capacity);
    if (!placed.created) {
      // The arena's place never changes after creation: check it once, here, so that no
      // forged block can send reset() or a read outside the object.
      const auto& b = *reinterpret_cast<const ContainerBlock*>(
          resolve(placed.handle, Kind, container_arena_offset));
      if (b.arena_offset != container_arena_offset || b.arena_bytes < 1024 ||
          b.arena_bytes > placed.bytes - container_arena_offset)
        throw_container_corrupt(placed.handle, Kind, "its arena lies outside the object");
      if (!container_fits(b))
        throw_container_corrupt(placed.handle, Kind, "the container lies outside its arena");
    }
    return placed.handle;
  }

  HandleCore core_;
};

}  // namespace detail

// Vector<T>: a growable array in the segment (Python's Manager().list()).
template <class T> class Vector {
  static_assert(detail::ContainerElement<T>,
                "procshare::Vector<T>: T must be std::string, or trivially copyable with a "
                "procshare::type_name<T>");
  using S = typename detail::Stored<T>::type;
  using C = boost::interprocess::vector<S, detail::ArenaAllocator<S>>;
  using Handle = detail::ContainerHandle<C, ObjectKind::vector>;

public:
  // Holds the vector's lock (marked dirty) for a read-modify-write sequence or iteration.
  // Move-only; unlocks on destruction, only in the process that took it. An exception
  // that unwinds through it poisons the vector only if a write was made through it (a
  // failed index check or a read leaves it as it was).
  class Guard {
  public:
    Guard(Guard&& other) noexcept
        : handle_(other.handle_), block_(std::exchange(other.block_, nullptr)), state_(other.state_),
          written_(other.written_), exceptions_(other.exceptions_) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (block_)
        detail::end_guard(std::exchange(block_, nullptr)->lock, state_,
                          written_ && std::uncaught_exceptions() > exceptions_);
    }
    std::size_t size() const { return c().size(); }
    bool empty() const { return c().empty(); }
    // Element `index` (copied out). Throws IndexOutOfRange.
    T operator[](std::size_t index) const { return detail::Stored<T>::out(c().at(checked(index))); }
    void set(std::size_t index, const T& v) {
      checked(index);
      write([&] { c()[index] = detail::Stored<T>::in(v, handle_.allocator(c())); });
    }
    void push_back(const T& v) {
      write([&] { c().push_back(detail::Stored<T>::in(v, handle_.allocator(c()))); });
    }
    // Removes and returns the last element, or nullopt if empty.
    std::optional<T> pop_back() {
      if (c().empty()) return std::nullopt;
      T last = detail::Stored<T>::out(c().back());
      written_ = true;
      c().pop_back();
      return last;
    }
    void clear() {
      written_ = true;
      c().clear();
    }

  private:
    friend class Vector;
    Guard(Handle handle, detail::ContainerBlock* block, detail::GuardState state)
        : handle_(handle), block_(block), state_(state) {}
    C& c() const { return Handle::container(*block_); }
    std::size_t checked(std::size_t index) const {
      if (index >= c().size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c().size());
      return index;
    }
    // Runs the write f; out of arena memory is SegmentFull, and then (the Boost
    // containers giving the strong guarantee) nothing was written.
    template <class F> void write(F f) {
      const bool before = std::exchange(written_, true);
      try {
        f();
      } catch (const boost::interprocess::bad_alloc&) {
        written_ = before;
        handle_.throw_full(c());
      } catch (const boost::container::length_error&) {
        written_ = before;
        handle_.throw_full(c());
      }
    }
    Handle handle_;
    detail::ContainerBlock* block_;
    detail::GuardState state_;
    bool written_ = false;  // a write was made through this guard
    int exceptions_ = std::uncaught_exceptions();
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Vector() = default;

  // Appends `v`. Throws SegmentFull (nothing changed), OwnerDied.
  void push_back(const T& v) {
    handle_.write([&](C& c) { c.push_back(detail::Stored<T>::in(v, handle_.allocator(c))); });
  }
  // Removes and returns the last element, or nullopt if empty. Throws OwnerDied.
  std::optional<T> pop_back() {
    return handle_.write([](C& c) -> std::optional<T> {
      if (c.empty()) return std::nullopt;
      T last = detail::Stored<T>::out(c.back());
      c.pop_back();
      return last;
    });
  }
  // Element `index`. Throws IndexOutOfRange.
  T at(std::size_t index) const {
    return handle_.read([&](const C& c) {
      if (index >= c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      return detail::Stored<T>::out(c[index]);
    });
  }
  // Replaces element `index`. Throws IndexOutOfRange, SegmentFull, OwnerDied.
  void set(std::size_t index, const T& v) {
    handle_.write([&](C& c) {
      if (index >= c.size()) detail::throw_container_index(handle_.core_, ObjectKind::vector, index, c.size());
      c[index] = detail::Stored<T>::in(v, handle_.allocator(c));
    });
  }
  std::size_t size() const { return handle_.read([](const C& c) { return c.size(); }); }
  void clear() { handle_.write([](C& c) { c.clear(); }); }
  // A copy of every element, taken under the lock.
  std::vector<T> snapshot() const {
    return handle_.read([](const C& c) {
      std::vector<T> out;
      out.reserve(c.size());
      for (const S& s : c) out.push_back(detail::Stored<T>::out(s));
      return out;
    });
  }
  // Locks the vector for a longer sequence (see Guard). Throws OwnerDied if poisoned.
  [[nodiscard]] Guard lock() {
    auto& b = handle_.block();
    const detail::GuardState state = detail::begin_guard(b.lock, handle_.core_, ObjectKind::vector);
    return Guard(handle_, &b, state);
  }
  // Whether a writer died mid-write (see top of file); reset() empties and repairs it.
  bool poisoned() const { return handle_.poisoned(); }
  void reset() { handle_.reset(); }
  std::uint32_t owner_deaths() const { return handle_.owner_deaths(); }
  // Bytes of its arena still free.
  std::size_t free_bytes() const { return handle_.free_bytes(); }
  std::string name() const { return detail::object_name(handle_.core_); }
  const detail::HandleCore& handle() const noexcept { return handle_.core_; }

private:
  friend class Segment;
  explicit Vector(detail::HandleCore core) : handle_(core) {}
  static std::string type() { return std::string(detail::Stored<T>::name()); }
  Handle handle_;
};

// Map<K, V>: an ordered map in the segment (Python's Manager().dict()). K is an integral
// type or std::string; V any container element.
template <class K, class V> class Map {
  static_assert((std::is_integral_v<K> && Shareable<K>) || std::is_same_v<K, std::string>,
                "procshare::Map<K, V>: K must be an integral type or std::string");
  static_assert(detail::ContainerElement<V>,
                "procshare::Map<K, V>: V must be std::string, or trivially copyable with a "
                "procshare::type_name<V>");
  using SK = typename detail::Stored<K>::type;
  using SV = typename detail::Stored<V>::type;
  using Pair = std::pair<const SK, SV>;
  using C = boost::interprocess::map<SK, SV, detail::KeyLess, detail::ArenaAllocator<Pair>>;
  using Handle = detail::ContainerHandle<C, ObjectKind::map>;

  static void assign(C& c, const K& k, const V& v, const detail::ArenaAllocator<char>& a, bool& inserted) {
    auto it = c.find(k);
    if (it != c.end()) {
      it->second = detail::Stored<V>::in(v, a);
      inserted = false;
    } else {
      c.emplace(detail::Stored<K>::in(k, a), detail::Stored<V>::in(v, a));
      inserted = true;
    }
  }

public:
  // Holds the map's lock (marked dirty) for a read-modify-write sequence or iteration.
  // Move-only; unlocks on destruction, only in the process that took it. An exception
  // that unwinds through it poisons the map only if a write was made through it.
  class Guard {
  public:
    Guard(Guard&& other) noexcept
        : handle_(other.handle_), block_(std::exchange(other.block_, nullptr)), state_(other.state_),
          written_(other.written_), exceptions_(other.exceptions_) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (block_)
        detail::end_guard(std::exchange(block_, nullptr)->lock, state_,
                          written_ && std::uncaught_exceptions() > exceptions_);
    }
    std::optional<V> get(const K& k) const {
      auto it = c().find(k);
      if (it == c().end()) return std::nullopt;
      return detail::Stored<V>::out(it->second);
    }
    bool contains(const K& k) const { return c().find(k) != c().end(); }
    // Inserts or replaces; returns whether it inserted. Throws SegmentFull (unchanged).
    bool insert_or_assign(const K& k, const V& v) {
      bool inserted = false;
      const bool before = std::exchange(written_, true);
      try {
        assign(c(), k, v, handle_.allocator(c()), inserted);
      } catch (const boost::interprocess::bad_alloc&) {
        written_ = before;  // the strong guarantee: nothing was written
        handle_.throw_full(c());
      } catch (const boost::container::length_error&) {
        written_ = before;
        handle_.throw_full(c());
      }
      return inserted;
    }
    bool erase(const K& k) {
      auto it = c().find(k);
      if (it == c().end()) return false;
      written_ = true;
      c().erase(it);
      return true;
    }
    std::size_t size() const { return c().size(); }
    // Calls f(key, value) for every entry in key order (copies).
    template <class F> void for_each(F&& f) const {
      for (const auto& [k, v] : c()) f(detail::Stored<K>::out(k), detail::Stored<V>::out(v));
    }

  private:
    friend class Map;
    Guard(Handle handle, detail::ContainerBlock* block, detail::GuardState state)
        : handle_(handle), block_(block), state_(state) {}
    C& c() const { return Handle::container(*block_); }
    Handle handle_;
    detail::ContainerBlock* block_;
    detail::GuardState state_;
    bool written_ = false;  // a write was made through this guard
    int exceptions_ = std::uncaught_exceptions();
  };

  // An empty handle: every call throws NotFound until one is assigned.
  Map() = default;

  // Inserts or replaces k's value; returns whether it inserted. Throws SegmentFull
  // (nothing changed), OwnerDied.
  bool insert_or_assign(const K& k, const V& v) {
    return handle_.write([&](C& c) {
      bool inserted = false;
      assign(c, k, v, handle_.allocator(c), inserted);
      return inserted;
    });
  }
  // Removes k; returns whether it was there. Throws OwnerDied.
  bool erase(const K& k) {
    return handle_.write([&](C& c) {
      auto it = c.find(k);
      if (it == c.end()) return false;
      c.erase(it);
      return true;
    });
  }
  // A copy of k's value, or nullopt.
  std::optional<V> get(const K& k) const {
    return handle_.read([&](const C& c) -> std::optional<V> {
      auto it = c.find(k);
      if (it == c.end()) return std::nullopt;
      return detail::Stored<V>::out(it->second);
    });
  }
  bool contains(const K& k) const { return handle_.read([&](const C& c) { return c.find(k) != c.end(); }); }
  std::size_t size() const { return handle_.read([](const C& c) { return c.size(); }); }
  void clear() { handle_.write([](C& c) { c.clear(); }); }
  // A copy of every entry, taken under the lock.
  std::map<K, V> snapshot() const {
    return handle_.read([](const C& c) {
      std::map<K, V> out;
      for (const auto& [k, v] : c) out.emplace(detail::Stored<K>::out(k), detail::Stored<V>::out(v));
      return out;
    });
  }
  // Locks the map for a longer sequence (see Guard). Throws OwnerDied if poisoned.
  [[nodiscard]] Guard lock() {
    auto& b = handle_.block();
    const detail::GuardState state = detail::begin_guard(b.lock, handle_.core_, ObjectKind::map);
    return Guard(handle_, &b, state);
  }
  // Whether a writer died mid-write (see top of file); reset() empties and repairs it.
  bool poisoned() const { return handle_.poisoned(); }
  void reset() { handle_.reset(); }
  std::uint32_t owner_deaths() const { return handle_.owner_deaths(); }
  std::size_t free_bytes() const { return handle_.free_bytes(); }
  std::string name() const { return detail::object_name(handle_.core_); }
  const detail::HandleCore& handle() const noexcept { return handle_.core_; }

private:
  friend class Segment;
  explicit Map(detail::HandleCore core) : handle_(core) {}
  static std::string type() {
    return std::string(detail::Stored<K>::name()) + "," + std::string(detail::Stored<V>::name());
  }
  Handle handle_;
};

// String: one shared string (a Manager().Value(c_char_p) that can grow).
class String {
  using C = detail::SharedString;
  using Handle = detail::ContainerHandle<C, ObjectKind::string>;

public:
  // An empty handle: every call throws NotFound until one is assigned.
  String() = default;
  // A copy of the text.
  std::string load() const { return handle_.read([](const C& c) { return std::string(c.data(), c.size()); }); }
  // Replaces the text. Throws SegmentFull (unchanged), OwnerDied.
  void store(std::string_view text) { handle_.write([&](C& c) { c.assign(text.data(), text.size()); }); }
  // Appends to it. Throws SegmentFull (unchanged), OwnerDied.
  void append(std::string_view text) { handle_.write([&](C& c) { c.append(text.data(), text.size()); }); }
  std::size_t size() const { return handle_.read([](const C& c) { return c.size(); }); }
  // Whether a writer died mid-write (see top of file); reset() empties and repairs it.
  bool poisoned() const { return handle_.poisoned(); }
  void reset() { handle_.reset(); }
  std::size_t free_bytes() const { return handle_.free_bytes(); }
  std::string name() const { return detail::object_name(handle_.core_); }
  const detail::HandleCore& handle() const noexcept { return handle_.core_; }

private:
  friend class Segment;
  explicit String(detail::HandleCore core) : handle_(core) {}
  Handle handle_;
};

template <class T> Vector<T> Segment::create_vector(std::string_view name, std::size_t capacity) {
  return Vector<T>(Vector<T>::Handle::place(*this, name, detail::Intent::create, Vector<T>::type(), capacity));
}
template <class T> Vector<T> Segment::open_vector(std::string_view name) {
  return Vector<T>(Vector<T>::Handle::place(*this, name, detail::Intent::open, Vector<T>::type(), 0));
}
template <class T> Vector<T> Segment::vector(std::string_view name, std::size_t capacity) {
  return Vector<T>(Vector<T>::Handle::place(*this, name, detail::Intent::create_or_open, Vector<T>::type(), capacity));
}
template <class K, class V> Map<K, V> Segment::create_map(std::string_view name, std::size_t capacity) {
  return Map<K, V>(Map<K, V>::Handle::place(*this, name, detail::Intent::create, Map<K, V>::type(), capacity));
}
template <class K, class V> Map<K, V> Segment::open_map(std::string_view name) {
  return Map<K, V>(Map<K, V>::Handle::place(*this, name, detail::Intent::open, Map<K, V>::type(), 0));
}
template <class K, class V> Map<K, V> Segment::map(std::string_view name, std::size_t capacity) {
  return Map<K, V>(Map<K, V>::Handle::place(*this, name, detail::Intent::create_or_open, Map<K, V>::type(), capacity));
}
inline String Segment::create_string(std::string_view name, std::size_t capacity) {
  return String(detail::ContainerHandle<detail::SharedString, ObjectKind::string>::place(*this, name, detail::Intent::create, "", capacity));
}
inline String Segment::open_string(std::string_view name) {
  return String(detail::ContainerHandle<detail::SharedString, ObjectKind::string>::place(*this, name, detail::Intent::open, "", 0));
}
inline String Segment::string(std::string_view name, std::size_t capacity) {
  return String(detail::ContainerHandle<detail::SharedString, ObjectKind::string>::place(*this, name, detail::Intent::create_or_open, "", capacity));
}

}  // namespace procshare
