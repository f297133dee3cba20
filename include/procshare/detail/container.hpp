// Internal: the machinery Vector, Map and String share (containers.hpp has their common
// contract): the arena each container allocates from, how elements are stored, the
// container's block in the segment, the checks procshare-ctl makes before walking a
// container, ContainerHandle (locked reads and writes, reset, placement) and
// ContainerGuard (the plumbing of Vector::Guard and Map::Guard).
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
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
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


// What every container offers besides its own operations: its poison state and repair,
// its owner deaths, its arena's free bytes, its name and its handle. Vector, Map and
// String derive from it.
template <class C, ObjectKind Kind> class ContainerObject {
public:
  // Whether a writer died mid-write (or an exception escaped a guard after a write):
  // reads and writes throw OwnerDied until reset().
  bool poisoned() const { return handle_.poisoned(); }
  // Empties the container and repairs it (clears the poison). Throws OwnerDied only if
  // the lock itself cannot be taken.
  void reset() { handle_.reset(); }
  // How many holders of its lock have died so far.
  std::uint32_t owner_deaths() const { return handle_.owner_deaths(); }
  // Bytes of its arena still free.
  std::size_t free_bytes() const { return handle_.free_bytes(); }
  // Its name in the segment's directory ("" when its segment is not open here).
  std::string name() const { return object_name(handle_.core_); }
  // Where it lives (segment uuid, offset): transportable to pool tasks.
  const HandleCore& handle() const noexcept { return handle_.core_; }

protected:
  using Handle = ContainerHandle<C, Kind>;
  ContainerObject() = default;
  explicit ContainerObject(HandleCore core) : handle_(core) {}
  Handle handle_;
};

// The Boost containers behind Vector<T> and Map<K, V>.
template <class T>
using VectorContainer = bip::vector<typename Stored<T>::type, ArenaAllocator<typename Stored<T>::type>>;
template <class K, class V>
using MapContainer =
    bip::map<typename Stored<K>::type, typename Stored<V>::type, KeyLess,
             ArenaAllocator<std::pair<const typename Stored<K>::type, typename Stored<V>::type>>>;

// The plumbing of Vector::Guard and Map::Guard: holds the container's lock (marked dirty)
// from construction to destruction, only in the process that took it, and poisons the
// container on an exception that unwinds through it only if a write was made through it
// (see HeldGuard). A guard taken by a holder that already has the lock (re-entrant, see
// GuardState) unlocks nothing. Move-only.
template <class C, ObjectKind Kind> class ContainerGuard {
protected:
  using Handle = ContainerHandle<C, Kind>;
  // Takes the lock (begin_guard). Throws OwnerDied if poisoned.
  explicit ContainerGuard(Handle handle)
      : handle_(handle), block_(&handle.block()), held_(block_->lock, begin_guard(block_->lock, handle.core_, Kind)) {}
  C& c() const { return Handle::container(*block_); }
  // Records a write that cannot fail for want of room (a pop, an erase, a clear).
  void mark_written() noexcept { held_.touch(); }
  // Runs the write f; out of arena memory is SegmentFull, and then (the Boost containers
  // giving the strong guarantee) nothing was written, so the guard's touch is as it was.
  template <class F> void write(F f) {
    const bool before = held_.touched();
    held_.touch();
    try {
      f();
    } catch (const bip::bad_alloc&) {
      held_.set_touched(before);
      handle_.throw_full(c());
    } catch (const boost::container::length_error&) {
      held_.set_touched(before);
      handle_.throw_full(c());
    }
  }

  Handle handle_;

private:
  ContainerBlock* block_;
  HeldGuard held_;  // touched: a write was made through this guard
};

}  // namespace detail

}  // namespace procshare
