// Test-only: damage a live segment's objects in place, the way a forged or torn file
// would, for the corpus generator (make_corpus.cpp) and the regression tests
// (tests/forged_test.cpp). Each function names the one thing it breaks.
#pragma once

#include <procshare/procshare.hpp>

#include <boost/intrusive/rbtree_algorithms.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace procshare::forge {

// The bytes of the object a handle names (its ObjectHeader first).
inline std::byte* object_bytes(const detail::HandleCore& handle, ObjectKind kind) {
  return reinterpret_cast<std::byte*>(detail::resolve(handle, kind, sizeof(detail::ObjectHeader)));
}

// The robust lock of a lockable object (right after its ObjectHeader).
inline detail::RobustLock& lock_of(const detail::HandleCore& handle, ObjectKind kind) {
  return reinterpret_cast<detail::LockBlock*>(object_bytes(handle, kind))->lock;
}

// Makes the lock look held for ever: its word names thread 1 (init, which never lets go)
// without the owner-died bit, so only a deadline can end a wait for it.
inline void hold_for_ever(detail::RobustLock& lock) { lock.mutex.__data.__lock = 1; }

// Makes the lock a plain (non-robust, process-private) mutex "owned" by thread 1: glibc
// asserts on it, or waits for ever, if it is ever locked.
inline void make_plain(detail::RobustLock& lock) {
  lock.mutex.__data.__kind = 0;
  lock.mutex.__data.__owner = 1;
}

// The container block of a Vector, Map or String.
inline detail::ContainerBlock& container_block(const detail::HandleCore& handle, ObjectKind kind) {
  return *reinterpret_cast<detail::ContainerBlock*>(object_bytes(handle, kind));
}

// Points the block at a container far outside its arena.
inline void misplace_container(detail::ContainerBlock& block) { block.container_offset = std::uint64_t{1} << 40; }

// Re-aims the offset pointer stored somewhere in `object` (object_size bytes) that points
// at `target`, to point `distance` bytes past it instead. Returns whether one was found.
// (An offset_ptr stores its target's distance from itself; 1 means null.)
inline bool retarget_offset_pointer(void* object, std::size_t object_size, const void* target,
                                    std::int64_t distance) {
  auto* bytes = static_cast<std::byte*>(object);
  for (std::size_t at = 0; at + 8 <= object_size; at += 8) {
    std::int64_t offset;
    std::memcpy(&offset, bytes + at, 8);
    if (reinterpret_cast<std::intptr_t>(bytes + at) + offset == reinterpret_cast<std::intptr_t>(target)) {
      offset += distance;
      std::memcpy(bytes + at, &offset, 8);
      return true;
    }
  }
  return false;
}

// The map's node links, as the map keeps them (see detail/container.hpp, tree_intact).
template <class K, class V> struct MapLinks {
  using C = boost::interprocess::map<typename detail::Stored<K>::type, typename detail::Stored<V>::type,
                                     detail::KeyLess,
                                     detail::ArenaAllocator<std::pair<const typename detail::Stored<K>::type,
                                                                      typename detail::Stored<V>::type>>>;
  using VoidPointer = typename boost::container::allocator_traits<typename C::allocator_type>::void_pointer;
  using Traits = boost::intrusive::rbtree_node_traits<VoidPointer, true>;
  static C& container(Map<K, V>& map) {
    auto& block = container_block(map.handle(), ObjectKind::map);
    return *reinterpret_cast<C*>(reinterpret_cast<std::byte*>(&block) + block.container_offset);
  }
  // The tree's root node (the map must not be empty).
  static typename Traits::node_ptr root(Map<K, V>& map) {
    return Traits::get_parent(container(map).end().get().pointed_node());
  }
};

// Makes the map's root node its own left child: walking the tree would loop for ever.
template <class K, class V> void loop_tree(Map<K, V>& map) {
  using Links = MapLinks<K, V>;
  const auto root = Links::root(map);
  Links::Traits::set_left(root, root);
}

// Points the map's root node's right link 1 MiB past the node: outside the arena.
template <class K, class V> void send_tree_outside(Map<K, V>& map) {
  using Links = MapLinks<K, V>;
  const auto root = Links::root(map);
  auto* raw = reinterpret_cast<std::byte*>(boost::movelib::to_raw_pointer(root));
  Links::Traits::set_right(root, typename Links::Traits::node_ptr(
                                     reinterpret_cast<typename Links::Traits::node*>(raw + (1 << 20))));
}

// Points a Vector's element pointer 1 MiB past where its elements are.
template <class T> bool send_vector_outside(Vector<T>& vector) {
  auto& block = container_block(vector.handle(), ObjectKind::vector);
  std::byte* container = reinterpret_cast<std::byte*>(&block) + block.container_offset;
  // the element storage: first element's address as the vector sees it
  auto guard = vector.lock();
  const void* data = nullptr;
  {
    using C = boost::interprocess::vector<typename detail::Stored<T>::type,
                                          detail::ArenaAllocator<typename detail::Stored<T>::type>>;
    data = reinterpret_cast<C*>(container)->data();
  }
  return retarget_offset_pointer(container, 64, data, 1 << 20);
}

// Finds the first 32-bit word equal to `value` in the object's bytes after its header,
// and sets it to `replacement`. Returns whether one was found. (For fields of blocks
// private to lib/, such as a barrier's party count.)
inline bool replace_word(const detail::HandleCore& handle, ObjectKind kind, std::size_t bytes,
                         std::uint32_t value, std::uint32_t replacement) {
  std::byte* object = object_bytes(handle, kind);
  for (std::size_t at = sizeof(detail::ObjectHeader); at + 4 <= bytes; at += 4) {
    std::uint32_t word;
    std::memcpy(&word, object + at, 4);
    if (word == value) {
      std::memcpy(object + at, &replacement, 4);
      return true;
    }
  }
  return false;
}

}  // namespace procshare::forge
