// Segment: a named shared-memory segment holding procshare objects.
//
// Ownership: a Segment is a move-only handle on one mapping of a file in /dev/shm. The
//   handle returned by create() (or by open_or_create() when it created the file) owns
//   the segment: its destructor removes the name, unless keep() was called, and only in
//   the process that created it, so a forked child that returns from main never removes
//   its parent's segment. Every other handle only unmaps.
// Shared: a header (magic, layout version, random uuid, creator pid and start time, size,
//   a `ready` word stored last), a directory of named objects and a bump allocator. Every
//   object is 64-byte aligned, starts on its own cache line, never moves and is never
//   freed on its own; the space comes back when the segment is removed.
// Guarded by: the directory and allocator are guarded by the segment's robust mutex.
//   Objects carry their own locks (see mutex.hpp, value.hpp, array.hpp).
// Visibility: an object is visible by name to every process once its create_* returns.
// Owner death: each step of an allocation is a single aligned store (FREE -> RESERVED ->
//   READY), so if a process dies at any point the next one to take the directory lock
//   discards the half-made entry and the segment stays valid.
// Liveness: every process that maps the segment holds flock(LOCK_SH) on its file, so a
//   cleaner can tell a segment in use from a stale one (LOCK_EX | LOCK_NB succeeds only
//   on a stale one).
// Errors: InvalidName for a bad name; NotFound, AlreadyExists; PermissionDenied when the
//   OS refuses; CorruptSegment when open() finds an empty, short, foreign, unready or
//   inconsistent file (at once, never after a wait); SegmentFull when /dev/shm cannot
//   reserve the bytes or the segment cannot hold another object; TypeMismatch when an
//   object is reopened under another kind, type or length.
//
// Typed objects are created with the creation intent at the call site, as Boost's
// create_only / open_only / open_or_create: create_value<T>(name, init) (AlreadyExists if
// taken), open_value<T>(name) (NotFound if missing), value<T>(name, init) (create or open);
// likewise atomic, array, flag, mutex and recursive_mutex. These member templates are
// defined in the object's own header (value.hpp, array.hpp, flag.hpp, mutex.hpp).
#pragma once

#include <procshare/detail/config.hpp>
#include <procshare/error.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <type_traits>
#include <vector>

namespace procshare {

template <class T> class Value;
template <class T> class Atomic;
template <class T> class Array;
class Flag;
class Mutex;
class RecursiveMutex;
class Semaphore;
class BoundedSemaphore;
class Event;
class Condition;
class Barrier;
template <class T> class Queue;
template <class T> class Vector;
template <class K, class V> class Map;
class String;
class Segment;

// type_name<T>::value: the canonical name under which a T is stored ("int64", "float64",
// "bool", "char", ...). Canonical names let an object be reopened by another program, and
// procshare-ctl print and parse it. Register a user type by specialising it:
//   template <> struct procshare::type_name<Point> {
//     static constexpr std::string_view value = "point";
//   };
// Requirements: at most 47 printable characters, no spaces.
template <class T> struct type_name {};

template <> struct type_name<bool> { static constexpr std::string_view value = "bool"; };
template <> struct type_name<char> { static constexpr std::string_view value = "char"; };
template <> struct type_name<float> { static constexpr std::string_view value = "float32"; };
template <> struct type_name<double> { static constexpr std::string_view value = "float64"; };
template <class T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char> &&
           sizeof(T) <= 8)
struct type_name<T> {
  static constexpr std::string_view value = [] {
    constexpr bool s = std::is_signed_v<T>;
    switch (sizeof(T)) {
      case 1: return s ? std::string_view("int8") : std::string_view("uint8");
      case 2: return s ? std::string_view("int16") : std::string_view("uint16");
      case 4: return s ? std::string_view("int32") : std::string_view("uint32");
      default: return s ? std::string_view("int64") : std::string_view("uint64");
    }
  }();
};

// Shareable<T>: T can live in a segment: trivially copyable (it holds no pointers, as
// another process maps the segment at another address) and has a canonical type_name.
template <class T>
concept Shareable = std::is_trivially_copyable_v<T> && requires {
  { type_name<T>::value } -> std::convertible_to<std::string_view>;
};

// The kinds of object a segment holds.
enum class ObjectKind : std::uint32_t {
  value = 1,
  atomic = 2,
  array = 3,
  flag = 4,
  mutex = 5,
  recursive_mutex = 6,
  semaphore = 7,
  bounded_semaphore = 8,
  event = 9,
  condition = 10,
  barrier = 11,
  queue = 12,
  pool = 13,
  vector = 14,
  map = 15,
  string = 16,
};

// The kind's name as used in messages and by procshare-ctl ("value", "array", ...).
PROCSHARE_API std::string_view to_string(ObjectKind kind) noexcept;

// One row of Segment::objects(): what a segment holds, as procshare-ctl shows it.
struct ObjectInfo {
  std::string name;        // the object's name
  ObjectKind kind;         // what it is
  std::string type;        // canonical element type ("int64"); "" for flag and mutexes
  std::string description; // kind and type together: "value<int64>", "array<int64, 8>"
  std::uint64_t length;    // element count: 1 except for arrays
  std::uint64_t bytes;     // bytes it takes in the segment, header included
  bool poisoned;           // a writer died mid-write: reads work, writes throw OwnerDied
  std::uint32_t owner_deaths;   // how many holders of its lock died holding it
  std::int32_t last_dead_owner; // pid of the last of those, 0 if none
};

// One file in /dev/shm as Segment::list() sees it (read-only: foreign files are never
// opened for writing).
struct SegmentListing {
  std::string name;            // the file's name in /dev/shm
  bool procshare;              // a valid procshare segment
  std::string problem;         // why not ("" if it is one): "foreign", or the CorruptSegment reason
  std::uint64_t size;          // bytes of the file
  std::uint64_t used;          // bytes taken by header, directory and objects
  int creator_pid;
  bool creator_alive;          // the creator (same pid and start time) still runs
  bool in_use;                 // some process maps it (holds its flock)
  std::int64_t age_seconds;    // since creation
  std::uint32_t objects;
  std::uint64_t reserved;      // bytes of /dev/shm the file really holds (see Segment::reserved)
  bool pool;                   // holds a Pool: it is a pool's control segment
};

// Options for Segment::open.
struct OpenOptions {
  // Open a segment another user owns (a controller run by root, say). Off by default:
  // a segment someone else made is PermissionDenied, so a name cannot be hijacked.
  bool allow_other_owner = false;
  // The widest file mode accepted: a segment whose mode has bits outside these (0666,
  // say: anyone could have written it) is PermissionDenied naming its mode, as in
  // open_or_create. Widen it (0660 for a group, 07777 for any mode) to opt in.
  std::uint32_t max_permissions = 0600;
};

// The largest segment procshare creates and maps: 2^46 bytes (64 TiB). Larger sizes are
// InvalidArgument at create(); /dev/shm usually refuses far less (SegmentFull).
inline constexpr std::uint64_t max_segment_bytes = std::uint64_t{1} << 46;

// Options for Segment::create and Segment::open_or_create.
struct SegmentOptions {
  // Mode bits of the file, applied with fchmod so the umask cannot change them.
  std::uint32_t permissions = 0600;
  // Directory slots: how many named objects the segment can hold (1 .. 65536).
  std::uint32_t max_objects = 128;
};

// Options for Segment::remove.
struct RemoveOptions {
  // Remove the file even if it is not a valid procshare segment (a foreign or garbled
  // file in /dev/shm, a POSIX semaphore's sem.* file). Off by default: such a file is
  // CorruptSegment and left in place.
  bool force = false;
};

namespace detail {

// A segment's random identity; a handle names its segment by it.
struct Uuid {
  std::uint64_t high = 0;
  std::uint64_t low = 0;
  friend bool operator==(const Uuid&, const Uuid&) = default;
};

// The shared-memory start of every object: read-only after creation. The object's own
// state starts at the next cache line.
struct alignas(64) ObjectHeader {
  std::uint64_t tag_hash;   // hash of kind, type name, element size and alignment
  std::uint32_t kind;       // ObjectKind
  std::uint32_t elem_size;  // sizeof the element type
  std::uint64_t length;     // element count
};
static_assert(sizeof(ObjectHeader) == 64);

// The type tag of objects of `kind` holding elements of canonical type `type`, size
// `elem_size` and alignment `elem_align` (FNV-1a; never 0). Handles carry it, objects store
// it, and typed handles check theirs against their own type's.
constexpr std::uint64_t tag_hash(ObjectKind kind, std::string_view type, std::uint32_t elem_size,
                                 std::uint32_t elem_align) noexcept {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  auto mix = [&hash](unsigned char byte) {
    hash ^= byte;
    hash *= 0x100000001b3ULL;
  };
  for (const std::uint32_t n : {static_cast<std::uint32_t>(kind), elem_size, elem_align})
    for (int i = 0; i < 4; ++i) mix(static_cast<unsigned char>(n >> (8 * i)));  // little-endian order
  for (const char c : type) mix(static_cast<unsigned char>(c));
  return hash == 0 ? 1 : hash;
}

// What a handle is: trivially copyable, valid in forked children and, once the segment
// is opened by name, in unrelated processes (resolved through the registry below).
struct HandleCore {
  Uuid segment;               // which segment
  std::uint64_t offset = 0;   // where the object's ObjectHeader is
  std::uint64_t tag_hash = 0; // the type the handle was made for
};

// The per-process registry of mapped segments that handles resolve through. Slots are
// written under a process-local mutex and read without it, seqlock-style: `version` is
// odd while a slot changes, so a reader never mixes two segments' fields.
struct RegistrySlot {
  std::atomic<std::uint32_t> version{0};
  std::atomic<std::uint64_t> uuid_high{0};
  std::atomic<std::uint64_t> uuid_low{0};
  std::atomic<std::byte*> base{nullptr};   // nullptr while the slot is free
  std::atomic<std::uint64_t> size{0};
};
inline constexpr std::size_t max_mapped_segments = 256;
PROCSHARE_API extern RegistrySlot registry_slots[max_mapped_segments];
PROCSHARE_API extern std::atomic<std::uint32_t> registry_used;  // slots ever used

// Throws the error explaining why `handle` did not resolve (empty handle, segment not
// mapped here, bad offset, or another type).
[[noreturn]] PROCSHARE_API void throw_unresolved(const HandleCore& handle, ObjectKind kind);

// The object `handle` points at, checked: its segment is mapped in this process, the
// object lies inside it and has the handle's type. Lock-free.
inline ObjectHeader* resolve(const HandleCore& handle, ObjectKind kind, std::size_t bytes) {
  const std::uint32_t used = registry_used.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < used; ++i) {
    RegistrySlot& slot = registry_slots[i];
    for (;;) {
      const std::uint32_t version = slot.version.load(std::memory_order_acquire);
      if (slot.uuid_low.load(std::memory_order_relaxed) != handle.segment.low ||
          slot.uuid_high.load(std::memory_order_relaxed) != handle.segment.high)
        break;
      std::byte* base = slot.base.load(std::memory_order_acquire);
      const std::uint64_t size = slot.size.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (version % 2 != 0 || slot.version.load(std::memory_order_relaxed) != version)
        continue;  // changed under us: read it again
      if (base == nullptr) break;
      if (handle.offset % 64 != 0 || handle.offset > size || size - handle.offset < bytes)
        throw_unresolved(handle, kind);
      auto* header = reinterpret_cast<ObjectHeader*>(base + handle.offset);
      // (the kind too: a handle copied bit for bit into a handle of another kind carries
      // the tag of the object it points at)
      if (header->tag_hash != handle.tag_hash || header->kind != static_cast<std::uint32_t>(kind))
        throw_unresolved(handle, kind);
      return header;
    }
  }
  throw_unresolved(handle, kind);
}

// The segment's name and the object's name for `handle`, for error messages ("" when
// unknown). Slow: scans the directory.
PROCSHARE_API std::string segment_name(const HandleCore& handle);
PROCSHARE_API std::string object_name(const HandleCore& handle);
// "KIND 'NAME'", e.g. "array 'results'".
PROCSHARE_API std::string describe(const HandleCore& handle, ObjectKind kind);

// What a typed factory asks the segment for.
struct ObjectSpec {
  ObjectKind kind;
  std::string_view type;     // canonical element type name, "" for untyped kinds
  std::uint32_t elem_size;   // sizeof the element; 0 on open means "whatever it is"
  std::uint32_t elem_align;  // alignof the element
  std::uint64_t length;      // element count; 0 on open means "whatever it is"
  std::uint64_t bytes;       // total bytes, ObjectHeader included (0 on open)
};

enum class Intent { create, open, create_or_open };

// Constructs a new object in place; runs under the directory lock, on zeroed memory
// whose ObjectHeader is already filled in.
using InitFn = bool (*)(ObjectHeader* object, const void* context);  // false: failed

// Where place() found or made the object.
struct Placement {
  HandleCore handle;
  std::uint64_t length;
  std::uint64_t bytes;  // the object's bytes in the segment, ObjectHeader included
  bool created;
};

// Finds or creates the object `name` as `intent` says. Throws NotFound,
// AlreadyExists, TypeMismatch, SegmentFull, InvalidName, CorruptSegment.
PROCSHARE_API Placement place(Segment& segment, std::string_view name, const ObjectSpec& spec,
                              Intent intent, InitFn init, const void* context);

// Test-only: called with the step's name at each step of Segment::create ("header":
// everything written but the ready word) and of an object allocation ("reserved",
// "bumped", "constructed"), so a test can kill the process there.
PROCSHARE_API void set_fault_hook(void (*hook)(const char* step)) noexcept;

// Test-only (the fuzzer, fault tests): how long directory work waits for the directory
// lock (default 5 s) and how long procshare-ctl's reads (Segment::value_text) wait for an
// object's lock (default 1 s) before they throw Timeout.
PROCSHARE_API void set_lock_wait_limits(std::chrono::milliseconds directory,
                                        std::chrono::milliseconds inspection) noexcept;
// The deadline of an inspection read starting now.
PROCSHARE_API std::chrono::steady_clock::time_point inspection_deadline() noexcept;

struct Mapping;  // lib/: the mapped file, its descriptor and its registry slot

// Internal (the pool's arena): creates a segment as Segment::create does, but reserves
// only its first `reserved` bytes up front. Whoever owns the rest reserves each part with
// reserve() before anything touches it: a page of /dev/shm that was never reserved
// raises SIGBUS when touched while /dev/shm is full.
Segment create_segment(std::string_view name, std::size_t bytes, const SegmentOptions& options,
                       std::uint64_t reserved);
// Reserves bytes [offset, offset + bytes) of `segment`'s file. Throws SegmentFull.
void reserve(const Segment& segment, std::uint64_t offset, std::uint64_t bytes);

}  // namespace detail

class PROCSHARE_API Segment {
public:
  // Creates segment `name` of `bytes` (rounded up to whole pages), mode
  // options.permissions, its memory reserved up front with posix_fallocate.
  // Throws InvalidName, InvalidArgument (bytes too small for the header and directory,
  // or more than max_segment_bytes: the message names the limit), AlreadyExists,
  // PermissionDenied, SegmentFull (/dev/shm cannot reserve `bytes`; nothing is left
  // behind).
  static Segment create(std::string_view name, std::size_t bytes,
                        const SegmentOptions& options = {});
  // Opens the existing segment `name`, validating its header before anything else.
  // Throws InvalidName, NotFound, PermissionDenied (the OS refused, another user owns
  // it and options.allow_other_owner is off, or its mode is wider than
  // options.max_permissions), CorruptSegment (at once, for an empty,
  // short, foreign, unready or inconsistent file), Timeout (another process has held
  // the file's exclusive lock for over a second).
  static Segment open(std::string_view name, const OpenOptions& options = {});
  // Opens `name` if it exists, else creates it as create() does; created() tells which.
  // Throws as create() and open(), and PermissionDenied when the existing segment's mode
  // is wider than options.permissions (it may have been made by someone else on purpose).
  static Segment open_or_create(std::string_view name, std::size_t bytes,
                                const SegmentOptions& options = {});
  // Removes the name `name` from /dev/shm; processes that map it keep their mapping.
  // Only a file whose header validates (as open() checks it) is removed, unless
  // options.force is set. Returns false if there was no such file. Throws InvalidName,
  // PermissionDenied, CorruptSegment (the file is not a valid procshare segment: a
  // foreign, empty, short or garbled file, left in place; its message says why).
  static bool remove(std::string_view name, const RemoveOptions& options = {});
  // Every file in /dev/shm, procshare segments described, others marked foreign or
  // corrupt. Reads headers with pread on read-only descriptors; never throws for a file.
  static std::vector<SegmentListing> list();
  // Removes the procshare segments no process maps any more (taking flock(LOCK_EX |
  // LOCK_NB) succeeds and the name still names the same file), and returns their names;
  // with `dry_run`, only returns them. Live segments are never touched, even if their
  // creator has died while another process still maps them.
  static std::vector<std::string> clean(bool dry_run = false);

  // The current value of object `name` as text: a number, "true"/"false", a character,
  // "[1, 2, 3, ...]" for arrays (at most `max_elements`), "set"/"clear" for flags and
  // events, a count for semaphores, "3 of 16 items" for queues, a lock's state for
  // mutexes, and "(type, N bytes)" for user types. Throws NotFound.
  std::string value_text(std::string_view name, std::size_t max_elements = 16);
  // Parses `text` by the object's canonical type and stores it: values and atomics of
  // built-in types, flags and events ("true"/"false", "set"/"clear", "1"/"0"). Throws
  // InvalidArgument (text that does not parse, or does not fit the type: nothing is
  // written), TypeMismatch (a kind that cannot be set this way), NotFound, OwnerDied.
  void set_value_text(std::string_view name, std::string_view text);

  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  // Unmaps; if this handle created the segment, keep() was not called and this is the
  // creating process, also removes the name (only if it still names this segment).
  // Never throws: a failure is reported on stderr.
  ~Segment();

  // The segment's name (without the leading '/').
  const std::string& name() const noexcept;
  // Total bytes mapped.
  std::size_t size() const noexcept;
  // Bytes taken by the header, the directory and the objects so far.
  std::size_t used() const noexcept;
  // Bytes of /dev/shm memory the segment's file really holds: all of size() for a segment
  // made by create() (reserved up front), less for a pool's control segment, whose pool
  // takes most of the segment as one object but reserves each part only when first used.
  // 0 if the file cannot be examined.
  std::size_t reserved() const noexcept;
  // The pid that created the segment.
  pid_t creator_pid() const noexcept;
  // True if this handle created the segment (and so will remove it, see ~Segment).
  bool created() const noexcept;
  // Keeps (true) or no longer keeps (false) the segment when this handle is destroyed.
  void keep(bool keep = true) noexcept;
  // Every object in the segment, in creation order. Throws CorruptSegment.
  std::vector<ObjectInfo> objects() const;
  // The segment's identity, as handles name it.
  detail::Uuid uuid() const noexcept;

  // Value<T>: one T under a lock (value.hpp).
  template <class T> Value<T> create_value(std::string_view name, const T& initial = T{});
  template <class T> Value<T> open_value(std::string_view name);
  template <class T> Value<T> value(std::string_view name, const T& initial = T{});
  // Atomic<T>: a lock-free std::atomic<T> (value.hpp).
  template <class T> Atomic<T> create_atomic(std::string_view name, const T& initial = T{});
  template <class T> Atomic<T> open_atomic(std::string_view name);
  template <class T> Atomic<T> atomic(std::string_view name, const T& initial = T{});
  // Array<T>: `length` Ts under one lock (array.hpp).
  template <class T>
  Array<T> create_array(std::string_view name, std::size_t length, const T& initial = T{});
  template <class T> Array<T> open_array(std::string_view name);
  template <class T>
  Array<T> array(std::string_view name, std::size_t length, const T& initial = T{});
  // Flag: an atomic boolean (flag.hpp).
  Flag create_flag(std::string_view name, bool initial = false);
  Flag open_flag(std::string_view name);
  Flag flag(std::string_view name, bool initial = false);
  // Mutex and RecursiveMutex: robust process-shared locks (mutex.hpp).
  Mutex create_mutex(std::string_view name);
  Mutex open_mutex(std::string_view name);
  Mutex mutex(std::string_view name);
  RecursiveMutex create_recursive_mutex(std::string_view name);
  RecursiveMutex open_recursive_mutex(std::string_view name);
  RecursiveMutex recursive_mutex(std::string_view name);
  // Semaphore, BoundedSemaphore: counting semaphores starting at `initial` (sync.hpp).
  Semaphore create_semaphore(std::string_view name, std::uint32_t initial);
  Semaphore open_semaphore(std::string_view name);
  Semaphore semaphore(std::string_view name, std::uint32_t initial);
  BoundedSemaphore create_bounded_semaphore(std::string_view name, std::uint32_t initial);
  BoundedSemaphore open_bounded_semaphore(std::string_view name);
  BoundedSemaphore bounded_semaphore(std::string_view name, std::uint32_t initial);
  // Event: a flag processes can wait for (sync.hpp).
  Event create_event(std::string_view name, bool initial = false);
  Event open_event(std::string_view name);
  Event event(std::string_view name, bool initial = false);
  // Condition: a condition variable bound to `mutex`, a Mutex of this segment (sync.hpp).
  Condition create_condition(std::string_view name, const Mutex& mutex);
  Condition open_condition(std::string_view name);
  Condition condition(std::string_view name, const Mutex& mutex);
  // Barrier: `parties` processes or threads meet at it, again and again (sync.hpp).
  Barrier create_barrier(std::string_view name, std::uint32_t parties);
  Barrier open_barrier(std::string_view name);
  Barrier barrier(std::string_view name, std::uint32_t parties);
  // Queue<T>: a bounded FIFO of `capacity` items; for Queue<std::string>, each string
  // holds at most `max_item_bytes` bytes (queue.hpp).
  template <class T>
  Queue<T> create_queue(std::string_view name, std::uint32_t capacity,
                        std::uint32_t max_item_bytes = 256);
  template <class T> Queue<T> open_queue(std::string_view name);
  template <class T>
  Queue<T> queue(std::string_view name, std::uint32_t capacity,
                 std::uint32_t max_item_bytes = 256);
  // Vector<T>, Map<K, V>, String: containers with their own arena of `capacity` bytes
  // (at least 1024) inside this segment (containers.hpp).
  template <class T> Vector<T> create_vector(std::string_view name, std::size_t capacity);
  template <class T> Vector<T> open_vector(std::string_view name);
  template <class T> Vector<T> vector(std::string_view name, std::size_t capacity);
  template <class K, class V> Map<K, V> create_map(std::string_view name, std::size_t capacity);
  template <class K, class V> Map<K, V> open_map(std::string_view name);
  template <class K, class V> Map<K, V> map(std::string_view name, std::size_t capacity);
  String create_string(std::string_view name, std::size_t capacity);
  String open_string(std::string_view name);
  String string(std::string_view name, std::size_t capacity);

private:
  friend detail::Placement detail::place(Segment&, std::string_view, const detail::ObjectSpec&,
                                         detail::Intent, detail::InitFn, const void*);
  friend Segment detail::create_segment(std::string_view, std::size_t, const SegmentOptions&,
                                        std::uint64_t);
  friend void detail::reserve(const Segment&, std::uint64_t, std::uint64_t);
  explicit Segment(std::shared_ptr<detail::Mapping> mapping, bool created);
  // value_text of Map<K, V> `name`, V named by `value_type` ("" if V has no text form);
  // defined and instantiated in lib/text_map_*.cpp (65 map types, compiled apart).
  template <class K>
  std::string map_text(std::string_view name, std::string_view value_type, const std::string& object,
                       std::size_t max_elements, std::chrono::steady_clock::time_point deadline);

  std::shared_ptr<detail::Mapping> mapping_;
  bool created_ = false;  // this handle created the segment
  bool keep_ = false;     // do not remove on destruction
};

}  // namespace procshare
