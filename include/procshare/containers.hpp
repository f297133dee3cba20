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
//
// This header only includes the three (vector.hpp, map.hpp, string.hpp); their shared
// machinery is internal (detail/container.hpp).
#pragma once

#include <procshare/map.hpp>
#include <procshare/string.hpp>
#include <procshare/vector.hpp>
