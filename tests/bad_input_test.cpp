// Bad input for every public entry point, as tables. Each row makes one bad call and says
// the exact error it must throw (the most specific procshare::Error subclass, checked by
// dynamic type too), the segment and object its message must name, and a fragment of what
// was wrong. After every row, everything already stored is checked to be exactly as it was:
// every object's contents, the directory and allocator, no stray files in /dev/shm, and the
// segment still opens by name and validates.
//
// Calls that could block if the library were wrong run on a watchdog thread (bounded()),
// so a regression fails its row instead of hanging the suite.
#include "support.hpp"

#include <doctest/doctest.h>

#include <dirent.h>
#include <sys/stat.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

using namespace procshare;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using procshare::test::wait_single_threaded;
using namespace std::chrono_literals;

namespace {

using I64 = std::int64_t;

// What a row's error must say: its segment() and object() exactly, and a fragment of the
// rest. The message must read "segment 'S': OBJECT: ..." (parts left out when empty).
struct Says {
  std::string segment;
  std::string object;
  std::string detail;
};

// One bad call and the check of what it throws.
struct Row {
  std::string what;            // the bad input, as a sentence
  std::function<void()> check; // makes the call and checks the error
};

std::string prefix(const Says& says) {
  std::string text;
  if (!says.segment.empty()) text += "segment '" + says.segment + "': ";
  if (!says.object.empty()) text += says.object + ": ";
  return text;
}

// A row whose call must throw exactly E, saying `says`.
template <class E> Row throws(std::string what, std::function<void()> call, Says says) {
  return {std::move(what), [call = std::move(call), says] {
            std::string type, message, segment, object;
            bool procshare_error = false;
            auto recorded = [&] {
              try {
                call();
              } catch (const Error& e) {
                type = typeid(e).name();
                message = e.what();
                segment = e.segment();
                object = e.object();
                procshare_error = true;
                throw;
              } catch (const std::exception& e) {
                type = typeid(e).name();
                message = e.what();
                throw;
              }
            };
            CHECK_THROWS_AS(recorded(), E);
            INFO("thrown: ", type, ": ", message);
            CHECK(procshare_error);
            CHECK(type == typeid(E).name());  // exactly E, not a subclass
            CHECK(segment == says.segment);
            CHECK(object == says.object);
            CHECK(message.rfind(prefix(says), 0) == 0);
            CHECK(message.find(says.detail) != std::string::npos);
          }};
}

// A row whose call must not throw and must return true (a documented non-error result).
Row returns_true(std::string what, std::function<bool()> call) {
  return {std::move(what), [call = std::move(call)] {
            bool result = false;
            CHECK_NOTHROW(result = call());
            CHECK(result);
          }};
}

// Runs `call` on a thread and waits for it at most 20 s: a call that should return or throw
// at once but blocks fails its row instead of hanging the suite (the thread is abandoned).
template <class F> auto bounded(F call) -> std::function<std::invoke_result_t<F&>()> {
  using R = std::invoke_result_t<F&>;
  return [call] {
    auto task = std::make_shared<std::packaged_task<R()>>(call);
    auto done = task->get_future();
    std::thread thread([task] { (*task)(); });
    if (done.wait_for(20s) != std::future_status::ready) {
      thread.detach();
      throw std::runtime_error("watchdog: the call still blocked after 20 s");
    }
    thread.join();
    return done.get();  // or rethrows what the call threw
  };
}

// Runs every row, then `verify` after it, with the row named in any failure.
void run(const std::vector<Row>& rows, const std::function<void()>& verify) {
  for (const Row& row : rows) {
    INFO("row: ", row.what);
    row.check();
    verify();
  }
}

// The files in /dev/shm whose names start with `prefix`.
std::set<std::string> shm_files(const std::string& prefix) {
  std::set<std::string> names;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d))
      if (std::string_view(e->d_name).rfind(prefix, 0) == 0) names.insert(e->d_name);
    ::closedir(d);
  }
  return names;
}
std::string my_shm_prefix() { return "ps-test-" + std::to_string(::getpid()) + "-"; }

std::vector<std::string> names_of(const std::vector<ObjectInfo>& objects) {
  std::vector<std::string> names;
  for (const auto& o : objects) names.push_back(o.name + (o.poisoned ? " (poisoned)" : ""));
  return names;
}

// Poisons an object as a writer killed mid-write would: a child takes its lock, marks a
// write under way and dies holding it.
void poison_by_death(const detail::HandleCore& handle, ObjectKind kind) {
  auto* block = reinterpret_cast<detail::LockBlock*>(detail::resolve(handle, kind, sizeof(detail::LockBlock)));
  const pid_t pid = run_child([block] {
    if (detail::lock(block->lock) != 0) ::_exit(2);
    detail::mark_dirty(block->lock);
    ::_exit(0);
  });
  REQUIRE(wait_child(pid, 10s).ok());
}

// Drains `q` and pushes the items back: its contents, unchanged.
template <class T> std::vector<T> contents(Queue<T>& q) {
  std::vector<T> items;
  while (auto item = q.try_pop()) items.push_back(*item);
  for (const T& item : items) q.push(item);
  return items;
}

const std::string long_object_name(64, 'o');     // one past the limit of 63
const std::string long_segment_name(201, 's');   // one past the limit of 200
const std::string nul_name("a\0b", 3);

// A segment holding one object of every kind with known contents, plus poisoned, closed
// and broken ones; verify() checks that none of it changed.
struct Fixture {
  SegmentName name{"bad"};
  Segment segment = Segment::create(name, 4 << 20);
  Value<I64> value = segment.create_value<I64>("value", 42);
  Atomic<I64> atomic = segment.create_atomic<I64>("atomic", 7);
  Array<I64> array = segment.create_array<I64>("array", 8, 0);
  Flag flag = segment.create_flag("flag", true);
  Mutex mutex = segment.create_mutex("mutex");
  RecursiveMutex recursive = segment.create_recursive_mutex("recursive");
  Semaphore semaphore = segment.create_semaphore("semaphore", 3);
  BoundedSemaphore bounded_semaphore = segment.create_bounded_semaphore("bounded", 2);
  Event event = segment.create_event("event", true);
  Event clear_event = segment.create_event("clear_event", false);
  Semaphore empty_semaphore = segment.create_semaphore("empty_semaphore", 0);
  Condition condition = segment.create_condition("condition", mutex);
  Mutex other_mutex = segment.create_mutex("other_mutex");
  Barrier barrier = segment.create_barrier("barrier", 2);
  Queue<I64> queue = segment.create_queue<I64>("queue", 4);
  Queue<std::string> text_queue = segment.create_queue<std::string>("text_queue", 4, 256);
  Queue<I64> empty_queue = segment.create_queue<I64>("empty_queue", 4);
  Queue<I64> full_queue = segment.create_queue<I64>("full_queue", 1);
  Vector<I64> vector = segment.create_vector<I64>("vector", 4096);
  Map<I64, std::string> map = segment.create_map<I64, std::string>("map", 4096);
  String string = segment.create_string("string", 4096);
  // Poisoned, closed, broken.
  Value<I64> poisoned_value = segment.create_value<I64>("poisoned_value", 5);
  Array<I64> poisoned_array = segment.create_array<I64>("poisoned_array", 4, 6);
  Vector<I64> poisoned_vector = segment.create_vector<I64>("poisoned_vector", 4096);
  Map<I64, I64> poisoned_map = segment.create_map<I64, I64>("poisoned_map", 4096);
  String poisoned_string = segment.create_string("poisoned_string", 4096);
  Queue<I64> closed_queue = segment.create_queue<I64>("closed_queue", 4);
  Barrier broken_barrier = segment.create_barrier("broken_barrier", 2);

  std::vector<std::string> names;  // objects() as set up, poison marks included
  std::size_t used = 0;
  std::set<std::string> files;     // this process's files in /dev/shm

  Fixture() {
    for (I64 i = 0; i < 8; ++i) array.store(static_cast<std::size_t>(i), i * 10);
    for (I64 i = 1; i <= 3; ++i) queue.push(i);
    text_queue.push("first");
    text_queue.push("second");
    full_queue.push(99);
    for (I64 i = 1; i <= 3; ++i) vector.push_back(i * 10);
    map.insert_or_assign(1, "one");
    map.insert_or_assign(2, "two");
    string.store("text");
    poisoned_vector.push_back(1);
    poisoned_map.insert_or_assign(1, 1);
    poisoned_string.store("torn");
    poison_by_death(poisoned_value.handle(), ObjectKind::value);
    poison_by_death(poisoned_array.handle(), ObjectKind::array);
    poison_by_death(poisoned_vector.handle(), ObjectKind::vector);
    poison_by_death(poisoned_map.handle(), ObjectKind::map);
    poison_by_death(poisoned_string.handle(), ObjectKind::string);
    closed_queue.close();
    broken_barrier.abort();
    names = names_of(segment.objects());
    used = segment.used();
    files = shm_files(my_shm_prefix());
    verify();
  }

  // Everything as set up.
  void verify() {
    CHECK(value.load() == 42);
    CHECK(atomic.load() == 7);
    CHECK(array.snapshot() == std::vector<I64>{0, 10, 20, 30, 40, 50, 60, 70});
    CHECK(flag.is_set());
    CHECK(mutex.try_lock());  // nobody holds it (this thread neither)
    mutex.unlock();
    CHECK(other_mutex.try_lock());
    other_mutex.unlock();
    CHECK(recursive.try_lock());
    recursive.unlock();
    CHECK(semaphore.value() == 3);
    CHECK(bounded_semaphore.value() == 2);
    CHECK(bounded_semaphore.bound() == 2);
    CHECK(event.is_set());
    CHECK_FALSE(clear_event.is_set());
    CHECK(empty_semaphore.value() == 0);
    CHECK(condition.mutex().name() == "mutex");
    CHECK_FALSE(barrier.broken());
    CHECK(barrier.waiting() == 0);
    CHECK(barrier.parties() == 2);
    CHECK(contents(queue) == std::vector<I64>{1, 2, 3});
    CHECK(contents(text_queue) == std::vector<std::string>{"first", "second"});
    CHECK(empty_queue.size() == 0);
    CHECK(contents(full_queue) == std::vector<I64>{99});
    CHECK(vector.snapshot() == std::vector<I64>{10, 20, 30});
    CHECK(map.snapshot() == std::map<I64, std::string>{{1, "one"}, {2, "two"}});
    CHECK(string.load() == "text");
    CHECK(poisoned_value.poisoned());
    CHECK(poisoned_value.load() == 5);  // reads still work
    CHECK(poisoned_array.poisoned());
    CHECK(poisoned_array.snapshot() == std::vector<I64>{6, 6, 6, 6});
    CHECK(poisoned_vector.poisoned());
    CHECK(poisoned_map.poisoned());
    CHECK(poisoned_string.poisoned());
    CHECK(closed_queue.closed());
    CHECK(closed_queue.size() == 0);
    CHECK(broken_barrier.broken());
    // The directory and allocator, and the segment as another opener sees it.
    CHECK(segment.used() == used);
    CHECK(names_of(segment.objects()) == names);
    auto again = Segment::open(name);
    CHECK(again.uuid() == segment.uuid());
    CHECK(names_of(again.objects()) == names);
    CHECK(again.open_value<I64>("value").load() == 42);
    CHECK(shm_files(my_shm_prefix()) == files);
  }
};

// One kind of object: its factories, and the fixture's object of that kind.
struct Kind {
  std::string kind;         // as messages name it
  std::string existing;     // the fixture's object of this kind
  std::string description;  // how that object was created, as TypeMismatch names it
  std::function<void(Segment&, std::string_view)> create, open, create_or_open;
};

std::vector<Kind> kinds(const Fixture& f) {
  const Mutex m = f.mutex;
  using S = Segment&;
  using N = std::string_view;
  return {
      {"value", "value", "value<int64>", [](S s, N n) { s.create_value<I64>(n, 1); },
       [](S s, N n) { s.open_value<I64>(n); }, [](S s, N n) { s.value<I64>(n, 1); }},
      {"atomic", "atomic", "atomic<int64>", [](S s, N n) { s.create_atomic<I64>(n, 1); },
       [](S s, N n) { s.open_atomic<I64>(n); }, [](S s, N n) { s.atomic<I64>(n, 1); }},
      {"array", "array", "array<int64, 8>", [](S s, N n) { s.create_array<I64>(n, 8); },
       [](S s, N n) { s.open_array<I64>(n); }, [](S s, N n) { s.array<I64>(n, 8); }},
      {"flag", "flag", "flag", [](S s, N n) { s.create_flag(n); }, [](S s, N n) { s.open_flag(n); },
       [](S s, N n) { s.flag(n); }},
      {"mutex", "mutex", "mutex", [](S s, N n) { s.create_mutex(n); },
       [](S s, N n) { s.open_mutex(n); }, [](S s, N n) { s.mutex(n); }},
      {"recursive_mutex", "recursive", "recursive_mutex", [](S s, N n) { s.create_recursive_mutex(n); },
       [](S s, N n) { s.open_recursive_mutex(n); }, [](S s, N n) { s.recursive_mutex(n); }},
      {"semaphore", "semaphore", "semaphore", [](S s, N n) { s.create_semaphore(n, 1); },
       [](S s, N n) { s.open_semaphore(n); }, [](S s, N n) { s.semaphore(n, 1); }},
      {"bounded_semaphore", "bounded", "bounded_semaphore",
       [](S s, N n) { s.create_bounded_semaphore(n, 1); },
       [](S s, N n) { s.open_bounded_semaphore(n); }, [](S s, N n) { s.bounded_semaphore(n, 1); }},
      {"event", "event", "event", [](S s, N n) { s.create_event(n); },
       [](S s, N n) { s.open_event(n); }, [](S s, N n) { s.event(n); }},
      {"condition", "condition", "condition", [m](S s, N n) { s.create_condition(n, m); },
       [](S s, N n) { s.open_condition(n); }, [m](S s, N n) { s.condition(n, m); }},
      {"barrier", "barrier", "barrier<2 parties>", [](S s, N n) { s.create_barrier(n, 2); },
       [](S s, N n) { s.open_barrier(n); }, [](S s, N n) { s.barrier(n, 2); }},
      {"queue", "queue", "queue<int64, 4>", [](S s, N n) { s.create_queue<I64>(n, 4); },
       [](S s, N n) { s.open_queue<I64>(n); }, [](S s, N n) { s.queue<I64>(n, 4); }},
      {"vector", "vector", "vector<int64>", [](S s, N n) { s.create_vector<I64>(n, 4096); },
       [](S s, N n) { s.open_vector<I64>(n); }, [](S s, N n) { s.vector<I64>(n, 4096); }},
      {"map", "map", "map<int64,string>", [](S s, N n) { s.create_map<I64, std::string>(n, 4096); },
       [](S s, N n) { s.open_map<I64, std::string>(n); },
       [](S s, N n) { s.map<I64, std::string>(n, 4096); }},
      {"string", "string", "string", [](S s, N n) { s.create_string(n, 4096); },
       [](S s, N n) { s.open_string(n); }, [](S s, N n) { s.string(n, 4096); }},
  };
}

// `text` as messages print names: non-printable bytes as \xNN.
std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", byte);
      out += buffer;
    } else {
      out += c;
    }
  }
  return out;
}

// Leaves the current scope's lock held by this thread released, whatever happens.
struct Unlocker {
  Mutex& mutex;
  ~Unlocker() { mutex.unlock(); }
};

}  // namespace

TEST_SUITE("bad input") {

TEST_CASE("bad segment names, sizes, options and files are refused with the exact error, changing nothing") {
  Fixture f;
  const std::string s = f.name.str();
  SegmentName fresh("fresh");  // never created: every row below must leave it absent
  const std::string n = fresh.str();
  // Files in /dev/shm that are not segments (made before the fixture's file list is taken).
  SegmentName empty_file("empty"), short_file("short"), garbage_file("garbage");
  std::ofstream("/dev/shm/" + empty_file.str()).flush();
  std::ofstream("/dev/shm/" + short_file.str()) << "0123456789";
  std::ofstream("/dev/shm/" + garbage_file.str()) << std::string(8192, 'g');
  for (const auto* file : {&empty_file, &short_file, &garbage_file})
    REQUIRE(::chmod(("/dev/shm/" + file->str()).c_str(), 0600) == 0);
  SegmentName wide_file("wide");  // a segment whose mode someone widened
  Segment::create(wide_file, 65536).keep();
  REQUIRE(::chmod(("/dev/shm/" + wide_file.str()).c_str(), 0666) == 0);
  f.files = shm_files(my_shm_prefix());

  const std::string minimum_fragment = "bytes is too small: the header and a directory of 128 objects need at least";
  std::vector<Row> rows = {
      throws<InvalidName>("create with an empty name", [] { Segment::create("", 65536); },
                          {"", "", "invalid segment name: it is empty"}),
      throws<InvalidName>("create with a 201-character name",
                          [] { Segment::create(long_segment_name, 65536); },
                          {long_segment_name, "", "invalid segment name: it is 201 characters long (at most 200)"}),
      throws<InvalidName>("create with a '/' in the name", [] { Segment::create("a/b", 65536); },
                          {"a/b", "", "invalid segment name: it contains '/'"}),
      throws<InvalidName>("create named '..'", [] { Segment::create("..", 65536); },
                          {"..", "", "'.' and '..' are not segment names"}),
      throws<InvalidName>("create named '.'", [] { Segment::create(".", 65536); },
                          {".", "", "'.' and '..' are not segment names"}),
      throws<InvalidName>("create with a NUL in the name", [] { Segment::create(nul_name, 65536); },
                          {"a\\x00b", "", "invalid segment name: it contains a space or non-printable character"}),
      throws<InvalidName>("create with a space in the name", [] { Segment::create("a b", 65536); },
                          {"a b", "", "it contains a space or non-printable character"}),
      throws<InvalidName>("open with an empty name", [] { Segment::open(""); },
                          {"", "", "invalid segment name: it is empty"}),
      throws<InvalidName>("open with a '/' in the name", [] { Segment::open(std::string("/x")); },
                          {"/x", "", "invalid segment name: it contains '/'"}),
      throws<InvalidName>("open named '..'", [] { Segment::open(".."); },
                          {"..", "", "'.' and '..' are not segment names"}),
      throws<InvalidName>("open with a NUL in the name", [] { Segment::open(nul_name); },
                          {"a\\x00b", "", "non-printable character"}),
      throws<InvalidName>("open with a 201-character name", [] { Segment::open(long_segment_name); },
                          {long_segment_name, "", "201 characters long"}),
      throws<InvalidName>("open_or_create with an empty name", [] { Segment::open_or_create("", 65536); },
                          {"", "", "invalid segment name: it is empty"}),
      throws<InvalidName>("open_or_create with a '/' in the name",
                          [] { Segment::open_or_create("../etc", 65536); },
                          {"../etc", "", "invalid segment name: it contains '/'"}),
      throws<InvalidName>("remove with an empty name", [] { Segment::remove(""); },
                          {"", "", "invalid segment name: it is empty"}),
      throws<InvalidName>("remove with a '/' in the name", [] { Segment::remove("a/b"); },
                          {"a/b", "", "invalid segment name: it contains '/'"}),
      throws<InvalidName>("remove named '..'", [] { Segment::remove(".."); },
                          {"..", "", "'.' and '..' are not segment names"}),
      throws<NotFound>("open of a segment that does not exist", [n] { Segment::open(n); },
                       {n, "", "cannot open segment: no such segment"}),
      returns_true("remove of a segment that does not exist returns false",
                   [n] { return !Segment::remove(n); }),
      throws<AlreadyExists>("create of a name that exists", [s] { Segment::create(s, 65536); },
                            {s, "", "cannot create segment: it already exists"}),
      throws<InvalidArgument>("create of 0 bytes", [n] { Segment::create(n, 0); },
                              {n, "", "0 " + minimum_fragment}),
      throws<InvalidArgument>("create of 100 bytes", [n] { Segment::create(n, 100); },
                              {n, "", "100 " + minimum_fragment}),
      throws<InvalidArgument>("create of a size just under the header and directory",
                              [n] { Segment::create(n, 20000); }, {n, "", "20000 " + minimum_fragment}),
      throws<InvalidArgument>("create of 64 KiB with a directory of 65536 objects",
                              [n] { Segment::create(n, 65536, {.permissions = 0600, .max_objects = 65536}); },
                              {n, "", "65536 bytes is too small: the header and a directory of 65536 objects"}),
      throws<InvalidArgument>("create of SIZE_MAX bytes", [n] { Segment::create(n, SIZE_MAX); },
                              {n, "", "bytes is more than the largest segment procshare maps (70368744177664 bytes, 64 TiB)"}),
      throws<InvalidArgument>("create of 2^46 + 1 bytes", [n] { Segment::create(n, (std::size_t{1} << 46) + 1); },
                              {n, "", "70368744177665 bytes is more than the largest segment procshare maps"}),
      throws<SegmentFull>("create of 16 TiB, more than /dev/shm can reserve",
                          [n] { Segment::create(n, std::size_t{1} << 44); },
                          {n, "", "cannot reserve 17592186044416 bytes in /dev/shm"}),
      throws<InvalidArgument>("create with permissions beyond the mode bits",
                              [n] { Segment::create(n, 65536, {.permissions = 010000, .max_objects = 8}); },
                              {n, "", "permissions 10000 are not mode bits"}),
      throws<InvalidArgument>("create with permissions 0xffffffff",
                              [n] { Segment::create(n, 65536, {.permissions = 0xffffffffu, .max_objects = 8}); },
                              {n, "", "are not mode bits"}),
      throws<InvalidArgument>("create with max_objects 0",
                              [n] { Segment::create(n, 65536, {.permissions = 0600, .max_objects = 0}); },
                              {n, "", "max_objects 0 is out of range (1 to 65536)"}),
      throws<InvalidArgument>("create with max_objects 65537",
                              [n] { Segment::create(n, 1 << 24, {.permissions = 0600, .max_objects = 65537}); },
                              {n, "", "max_objects 65537 is out of range (1 to 65536)"}),
      throws<InvalidArgument>("open_or_create of a new name with 0 bytes",
                              [n] { Segment::open_or_create(n, 0); }, {n, "", "0 " + minimum_fragment}),
      throws<PermissionDenied>("open_or_create of an existing 0600 segment asking for at most 0400",
                               [s] { Segment::open_or_create(s, 65536, {.permissions = 0400, .max_objects = 128}); },
                               {s, "", "its mode 0600 is wider than the 0400 requested"}),
      throws<CorruptSegment>("open of an empty file", [&] { Segment::open(empty_file); },
                             {empty_file.str(), "", "the file is empty"}),
      throws<CorruptSegment>("open of a 10-byte file", [&] { Segment::open(short_file); },
                             {short_file.str(), "", "the file is 10 bytes, smaller than a segment header"}),
      throws<CorruptSegment>("open of a file of garbage", [&] { Segment::open(garbage_file); },
                             {garbage_file.str(), "", "not a procshare segment (bad magic number)"}),
      throws<CorruptSegment>("open_or_create of an empty file",
                             [&] { Segment::open_or_create(empty_file, 65536); },
                             {empty_file.str(), "", "the file is empty"}),
      throws<PermissionDenied>("open of a segment whose mode was widened to 0666",
                               [&] { Segment::open(wide_file); },
                               {wide_file.str(), "", "its mode 0666 is wider than the 0600 accepted (OpenOptions::max_permissions)"}),
      throws<InvalidArgument>("open with max_permissions beyond the mode bits",
                              [s] { Segment::open(s, {.allow_other_owner = false, .max_permissions = 010000}); },
                              {s, "", "max_permissions 10000 are not mode bits"}),
      throws<CorruptSegment>("remove of a file of garbage", [&] { Segment::remove(garbage_file); },
                             {garbage_file.str(), "", "not removed: not a procshare segment (bad magic number)"}),
      throws<CorruptSegment>("remove of an empty file", [&] { Segment::remove(empty_file); },
                             {empty_file.str(), "", "not removed: not a valid procshare segment: the file is empty"}),
      throws<CorruptSegment>("remove of a 10-byte file", [&] { Segment::remove(short_file); },
                             {short_file.str(), "", "not a valid procshare segment: the file is 10 bytes, smaller than a segment header"}),
  };
  run(rows, [&] {
    f.verify();
    CHECK_FALSE(procshare::test::shm_exists(n));
  });
}

TEST_CASE("a segment another user owns is PermissionDenied at open, and nothing changes") {
  if (::geteuid() != 0) {
    MESSAGE("not root: cannot make a segment another user owns; skipped");
    return;
  }
  Fixture f;
  SegmentName other("owned");
  auto theirs = Segment::create(other, 65536);
  theirs.create_value<I64>("v", 3);
  REQUIRE(::chown(("/dev/shm/" + other.str()).c_str(), 65534, 65534) == 0);
  f.files = shm_files(my_shm_prefix());
  const std::string o = other.str();
  run({throws<PermissionDenied>("open of a segment uid 65534 owns",
                                [o] { Segment::open(o); },
                                {o, "", "it is owned by uid 65534, not by this process's uid 0"}),
       throws<PermissionDenied>("open_or_create of a segment uid 65534 owns",
                                [o] { Segment::open_or_create(o, 65536); },
                                {o, "", "it is owned by uid 65534"}),
       returns_true("open with allow_other_owner", [o] {
         return Segment::open(o, {.allow_other_owner = true}).open_value<I64>("v").load() == 3;
       })},
      [&] { f.verify(); });
}

TEST_CASE("bad object names, taken names, missing names and other kinds are refused by every factory") {
  Fixture f;
  const std::string s = f.name.str();
  std::vector<Row> rows;
  const std::vector<std::pair<std::string, std::string>> bad_names = {
      {"", "invalid object name: it is empty"},
      {long_object_name, "invalid object name: it is 64 characters long (at most 63)"},
      {nul_name, "invalid object name: it contains a non-printable character"},
      {"tab\there", "invalid object name: it contains a non-printable character"},
      {"del\x7f", "invalid object name: it contains a non-printable character"},
  };
  const auto all = kinds(f);
  for (const Kind& k : all) {
    using Factory = std::function<void(Segment&, std::string_view)>;
    const std::pair<std::string, Factory> intents[] = {
        {"create_", k.create}, {"open_", k.open}, {"", k.create_or_open}};
    for (const auto& [intent, factory] : intents) {
      const std::string call = intent + k.kind;
      for (const auto& [bad, why] : bad_names)
        rows.push_back(throws<InvalidName>(
            call + " named '" + printable(bad) + "'", [&f, factory, bad] { factory(f.segment, bad); },
            {s, k.kind + " '" + printable(bad) + "'", why}));
    }
    rows.push_back(throws<AlreadyExists>(
        "create_" + k.kind + " of a name its kind already has",
        [&f, k] { k.create(f.segment, k.existing); },
        {s, k.kind + " '" + k.existing + "'", "an object of that name already exists"}));
    rows.push_back(throws<NotFound>("open_" + k.kind + " of a missing name",
                                    [&f, k] { k.open(f.segment, "missing"); },
                                    {s, k.kind + " 'missing'", "no object of that name"}));
    for (const Kind& other : all) {
      if (other.kind == k.kind) continue;
      rows.push_back(throws<AlreadyExists>(
          "create_" + k.kind + " of the name of a " + other.kind,
          [&f, k, other] { k.create(f.segment, other.existing); },
          {s, k.kind + " '" + other.existing + "'", "an object of that name already exists"}));
      rows.push_back(throws<TypeMismatch>(
          "open_" + k.kind + " of a " + other.kind, [&f, k, other] { k.open(f.segment, other.existing); },
          {s, k.kind + " '" + other.existing + "'",
           "type mismatch: it was created as " + other.description + ", not " + k.kind}));
      rows.push_back(throws<TypeMismatch>(
          k.kind + "() (create or open) of a " + other.kind,
          [&f, k, other] { k.create_or_open(f.segment, other.existing); },
          {s, k.kind + " '" + other.existing + "'", "type mismatch: it was created as " + other.description}));
    }
  }
  // The same kind under another element type, length, capacity or item size.
  Segment& g = f.segment;
  const auto mismatch = [&](std::string what, std::function<void()> call, std::string object,
                            std::string created, std::string asked) {
    rows.push_back(throws<TypeMismatch>(std::move(what), std::move(call),
                                        {s, std::move(object), "type mismatch: it was created as " + created + ", not " + asked}));
  };
  mismatch("open_value<double> of a value<int64>", [&] { g.open_value<double>("value"); }, "value 'value'",
           "value<int64>", "value<float64>");
  mismatch("open_value<int32> of a value<int64>", [&] { g.open_value<std::int32_t>("value"); },
           "value 'value'", "value<int64>", "value<int32>");
  mismatch("value<uint64> of a value<int64>", [&] { g.value<std::uint64_t>("value", 1); }, "value 'value'",
           "value<int64>", "value<uint64>");
  mismatch("open_atomic<int32> of an atomic<int64>", [&] { g.open_atomic<std::int32_t>("atomic"); },
           "atomic 'atomic'", "atomic<int64>", "atomic<int32>");
  mismatch("open_array<int32> of an array<int64, 8>", [&] { g.open_array<std::int32_t>("array"); },
           "array 'array'", "array<int64, 8>", "array<int32, 8>");
  mismatch("array<int64> of another length", [&] { g.array<I64>("array", 9); }, "array 'array'",
           "array<int64, 8>", "array<int64, 9>");
  mismatch("barrier() of another party count", [&] { g.barrier("barrier", 3); }, "barrier 'barrier'",
           "barrier<2 parties>", "barrier<3 parties>");
  mismatch("queue<int64>() of another capacity", [&] { g.queue<I64>("queue", 5); }, "queue 'queue'",
           "queue<int64, 4>", "queue<int64, 5>");
  mismatch("open_queue<double> of a queue<int64>", [&] { g.open_queue<double>("queue"); }, "queue 'queue'",
           "queue<int64, 4>", "queue<float64, 4>");
  mismatch("open_queue<std::string> of a queue<int64>", [&] { g.open_queue<std::string>("queue"); },
           "queue 'queue'", "queue<int64, 4>", "queue<string, 4>");
  mismatch("queue<std::string>() of another item size", [&] { g.queue<std::string>("text_queue", 4, 100); },
           "queue 'text_queue'", "queue<string, 4>", "queue<string, 4> (elements of 260 bytes, not 104)");
  mismatch("open_vector<int32> of a vector<int64>", [&] { g.open_vector<std::int32_t>("vector"); },
           "vector 'vector'", "vector<int64>", "vector<int32>");
  mismatch("open_vector<std::string> of a vector<int64>", [&] { g.open_vector<std::string>("vector"); },
           "vector 'vector'", "vector<int64>", "vector<string>");
  mismatch("open_map<int64, int64> of a map<int64, string>", [&] { g.open_map<I64, I64>("map"); },
           "map 'map'", "map<int64,string>", "map<int64,int64>");
  mismatch("open_map<string, string> of a map<int64, string>",
           [&] { g.open_map<std::string, std::string>("map"); }, "map 'map'", "map<int64,string>",
           "map<string,string>");
  mismatch("open_semaphore of a bounded_semaphore", [&] { g.open_semaphore("bounded"); },
           "semaphore 'bounded'", "bounded_semaphore", "semaphore");
  // A segment whose directory is full.
  SegmentName tiny_name("tiny");
  auto tiny = Segment::create(tiny_name, 65536, {.permissions = 0600, .max_objects = 1});
  tiny.create_value<I64>("only", 1);
  f.files = shm_files(my_shm_prefix());
  const std::string t = tiny_name.str();
  rows.push_back(throws<SegmentFull>("create_value in a segment whose directory is full",
                                     [&] { tiny.create_value<I64>("second", 2); },
                                     {t, "value 'second'", "the directory is full (1 objects)"}));
  rows.push_back(throws<SegmentFull>("create_flag in a segment whose directory is full",
                                     [&] { tiny.create_flag("second"); },
                                     {t, "flag 'second'", "the directory is full (1 objects)"}));
  // A moved-from Segment handle.
  SegmentName moved_name("moved");
  auto moved_from = Segment::create(moved_name, 65536);
  auto moved_to = std::move(moved_from);
  f.files = shm_files(my_shm_prefix());
  rows.push_back(throws<NotFound>("create_value through a moved-from Segment",
                                  [&] { moved_from.create_value<I64>("x", 1); },
                                  {"", "value 'x'", "the Segment handle was moved from"}));
  rows.push_back(throws<NotFound>("open_queue through a moved-from Segment",
                                  [&] { moved_from.open_queue<I64>("x"); },
                                  {"", "queue 'x'", "the Segment handle was moved from"}));
  run(rows, [&] {
    f.verify();
    CHECK(tiny.objects().size() == 1);
    CHECK(tiny.open_value<I64>("only").load() == 1);
    CHECK(moved_to.objects().empty());
  });
}

TEST_CASE("bad lengths, counts, capacities and item sizes are refused at creation, changing nothing") {
  Fixture f;
  const std::string s = f.name.str();
  Segment& g = f.segment;
  constexpr std::size_t huge_length = SIZE_MAX / sizeof(I64) + 1;  // length * 8 overflows
  std::vector<Row> rows = {
      throws<InvalidArgument>("create_array of length 0", [&] { g.create_array<I64>("n", 0); },
                              {s, "array 'n'", "length 0: an array needs at least one element"}),
      throws<InvalidArgument>("array() of length 0", [&] { g.array<I64>("n", 0); },
                              {s, "array 'n'", "length 0: an array needs at least one element"}),
      throws<SegmentFull>("create_array of SIZE_MAX / 8 + 1 elements (the byte count overflows)",
                          [&] { g.create_array<I64>("n", huge_length); }, {s, "array 'n'", "needs "}),
      throws<SegmentFull>("create_array of SIZE_MAX elements", [&] { g.create_array<char>("n", SIZE_MAX); },
                          {s, "array 'n'", "needs "}),
      throws<SegmentFull>("create_array larger than the segment", [&] { g.create_array<char>("n", 5 << 20); },
                          {s, "array 'n'", "bytes, but only"}),
      throws<InvalidArgument>("create_queue of capacity 0", [&] { g.create_queue<I64>("n", 0); },
                              {s, "queue 'n'", "capacity must be 1 to 2^31"}),
      throws<InvalidArgument>("queue() of capacity 0", [&] { g.queue<I64>("n", 0); },
                              {s, "queue 'n'", "capacity must be 1 to 2^31"}),
      throws<InvalidArgument>("create_queue of capacity 2^31 + 1", [&] { g.create_queue<I64>("n", 0x80000001u); },
                              {s, "queue 'n'", "capacity must be 1 to 2^31"}),
      throws<InvalidArgument>("create_queue of capacity UINT32_MAX", [&] { g.create_queue<I64>("n", UINT32_MAX); },
                              {s, "queue 'n'", "capacity must be 1 to 2^31"}),
      throws<SegmentFull>("create_queue of capacity 2^31 (16 GiB of slots)",
                          [&] { g.create_queue<I64>("n", 0x80000000u); }, {s, "queue 'n'", "needs "}),
      throws<InvalidArgument>("create_queue<string> with max_item_bytes 0",
                              [&] { g.create_queue<std::string>("n", 4, 0); },
                              {s, "queue 'n'", "max_item_bytes must be 1 to 2^24"}),
      throws<InvalidArgument>("create_queue<string> with max_item_bytes 2^24 + 1",
                              [&] { g.create_queue<std::string>("n", 4, (1u << 24) + 1); },
                              {s, "queue 'n'", "max_item_bytes must be 1 to 2^24"}),
      throws<InvalidArgument>("create_queue<string> with max_item_bytes UINT32_MAX",
                              [&] { g.create_queue<std::string>("n", 4, UINT32_MAX); },
                              {s, "queue 'n'", "max_item_bytes must be 1 to 2^24"}),
      throws<SegmentFull>("create_queue<string> of 2^31 items of 2^24 bytes",
                          [&] { g.create_queue<std::string>("n", 0x80000000u, 1u << 24); },
                          {s, "queue 'n'", "needs "}),
      throws<InvalidArgument>("create_semaphore with count 2^31", [&] { g.create_semaphore("n", 0x80000000u); },
                              {s, "semaphore 'n'", "initial count 2147483648 is out of range (0 to 2147483647)"}),
      throws<InvalidArgument>("semaphore() with count UINT32_MAX", [&] { g.semaphore("n", UINT32_MAX); },
                              {s, "semaphore 'n'", "initial count 4294967295 is out of range"}),
      throws<InvalidArgument>("create_bounded_semaphore with count 2^31",
                              [&] { g.create_bounded_semaphore("n", 0x80000000u); },
                              {s, "bounded_semaphore 'n'", "initial count 2147483648 is out of range"}),
      throws<InvalidArgument>("create_barrier of 0 parties", [&] { g.create_barrier("n", 0); },
                              {s, "barrier 'n'", "0 parties is out of range (1 to 65536)"}),
      throws<InvalidArgument>("barrier() of 0 parties", [&] { g.barrier("n", 0); },
                              {s, "barrier 'n'", "0 parties is out of range (1 to 65536)"}),
      throws<InvalidArgument>("create_barrier of 65537 parties", [&] { g.create_barrier("n", 65537); },
                              {s, "barrier 'n'", "65537 parties is out of range (1 to 65536)"}),
      throws<InvalidArgument>("create_barrier of UINT32_MAX parties", [&] { g.create_barrier("n", UINT32_MAX); },
                              {s, "barrier 'n'", "4294967295 parties is out of range"}),
  };
  // Every container with capacities too small, huge and overflowing.
  const std::pair<std::string, std::function<void(std::string_view, std::size_t)>> containers[] = {
      {"vector", [&](std::string_view n, std::size_t c) { g.create_vector<I64>(n, c); }},
      {"map", [&](std::string_view n, std::size_t c) { g.create_map<I64, std::string>(n, c); }},
      {"string", [&](std::string_view n, std::size_t c) { g.create_string(n, c); }},
  };
  for (const auto& [kind, create] : containers) {
    for (const std::size_t small : {std::size_t{0}, std::size_t{1}, std::size_t{1023}})
      rows.push_back(throws<InvalidArgument>(
          "create_" + kind + " of capacity " + std::to_string(small), [create, small] { create("n", small); },
          {s, kind + " 'n'", "capacity " + std::to_string(small) + " bytes is too small (at least 1024)"}));
    for (const std::size_t huge : {std::size_t{5} << 20, std::size_t{1} << 40, SIZE_MAX - 255, SIZE_MAX - 100, SIZE_MAX})
      rows.push_back(throws<SegmentFull>("create_" + kind + " of capacity " + std::to_string(huge),
                                         [create, huge] { create("n", huge); }, {s, kind + " 'n'", "needs "}));
  }
  rows.push_back(throws<SegmentFull>("vector() of capacity SIZE_MAX", [&] { g.vector<I64>("n", SIZE_MAX); },
                                     {s, "vector 'n'", "needs "}));
  rows.push_back(throws<SegmentFull>("map() of capacity SIZE_MAX", [&] { g.map<I64, I64>("n", SIZE_MAX); },
                                     {s, "map 'n'", "needs "}));
  rows.push_back(throws<SegmentFull>("string() of capacity SIZE_MAX", [&] { g.string("n", SIZE_MAX); },
                                     {s, "string 'n'", "needs "}));
  run(rows, [&] { f.verify(); });
}

TEST_CASE("indices out of range and oversized items are refused, changing nothing") {
  Fixture f;
  const std::string s = f.name.str();
  auto& a = f.array;
  auto& v = f.vector;
  auto plus_one = [](const I64& x) { return x + 1; };
  const Says array_8{s, "array 'array'", "index 8 out of range (size 8)"};
  const Says vector_3{s, "vector 'vector'", "index 3 out of range (size 3)"};
  std::vector<Row> rows = {
      throws<IndexOutOfRange>("Array::load at its size", [&] { a.load(8); }, array_8),
      throws<IndexOutOfRange>("Array::load at SIZE_MAX", [&] { a.load(SIZE_MAX); },
                              {s, "array 'array'", "index 18446744073709551615 out of range (size 8)"}),
      throws<IndexOutOfRange>("Array::store at its size", [&] { a.store(8, 1); }, array_8),
      throws<IndexOutOfRange>("Array::store at SIZE_MAX", [&] { a.store(SIZE_MAX, 1); },
                              {s, "array 'array'", "out of range (size 8)"}),
      throws<IndexOutOfRange>("Array::update at its size", [&] { a.update(8, plus_one); }, array_8),
      throws<IndexOutOfRange>("Array::store at its size on a poisoned array (the index is checked first)",
                              [&] { f.poisoned_array.store(4, 1); },
                              {s, "array 'poisoned_array'", "index 4 out of range (size 4)"}),
      throws<IndexOutOfRange>("Vector::at at its size", [&] { v.at(3); }, vector_3),
      throws<IndexOutOfRange>("Vector::at at SIZE_MAX", [&] { v.at(SIZE_MAX); },
                              {s, "vector 'vector'", "out of range (size 3)"}),
      throws<IndexOutOfRange>("Vector::set at its size", [&] { v.set(3, 1); }, vector_3),
      throws<IndexOutOfRange>("Vector::Guard::operator[] at its size (caught inside the guard)",
                              [&] {
                                std::exception_ptr error;
                                {
                                  auto guard = v.lock();
                                  try {
                                    (void)guard[3];
                                  } catch (...) {
                                    error = std::current_exception();
                                  }
                                }
                                std::rethrow_exception(error);
                              },
                              vector_3),
      throws<IndexOutOfRange>("Vector::Guard::set at its size (caught inside the guard)",
                              [&] {
                                std::exception_ptr error;
                                {
                                  auto guard = v.lock();
                                  try {
                                    guard.set(3, 1);
                                  } catch (...) {
                                    error = std::current_exception();
                                  }
                                }
                                std::rethrow_exception(error);
                              },
                              vector_3),
      throws<InvalidArgument>("Queue<string>::push of a string one byte too long",
                              [&] { f.text_queue.push(std::string(257, 'x')); },
                              {s, "queue 'text_queue'", "push of a 257-byte string: items hold at most 256 bytes"}),
      throws<InvalidArgument>("Queue<string>::try_push of a string far too long",
                              [&] { f.text_queue.try_push(std::string(1 << 20, 'x')); },
                              {s, "queue 'text_queue'", "push of a 1048576-byte string: items hold at most 256 bytes"}),
      throws<InvalidArgument>("Queue<string>::push_for of a string too long",
                              bounded([&] { f.text_queue.push_for(std::string(300, 'x'), 1s); }),
                              {s, "queue 'text_queue'", "push of a 300-byte string"}),
  };
  run(rows, [&] { f.verify(); });
}

TEST_CASE("writes to poisoned objects, and reads of poisoned containers, are OwnerDied and change nothing") {
  Fixture f;
  const std::string s = f.name.str();
  auto& pv = f.poisoned_value;
  auto& pa = f.poisoned_array;
  auto& vec = f.poisoned_vector;
  auto& map = f.poisoned_map;
  auto& str = f.poisoned_string;
  // What happened and the call that clears it.
  const std::string poisoned = " died while writing it (owner deaths so far: 1); ";
  const std::string value_remedy = poisoned + "reads still work; writes throw OwnerDied until clear_poison()";
  const std::string container_remedy = poisoned + "reads and writes throw OwnerDied until reset() empties and repairs it";
  const Says value{s, "value 'poisoned_value'", value_remedy};
  const Says array{s, "array 'poisoned_array'", value_remedy};
  const Says vector{s, "vector 'poisoned_vector'", container_remedy};
  const Says map_says{s, "map 'poisoned_map'", container_remedy};
  const Says string{s, "string 'poisoned_string'", container_remedy};
  std::vector<Row> rows = {
      throws<OwnerDied>("Value::store", [&] { pv.store(1); }, value),
      throws<OwnerDied>("Value::exchange", [&] { pv.exchange(1); }, value),
      throws<OwnerDied>("Value::update", [&] { pv.update([](const I64& x) { return x + 1; }); }, value),
      throws<OwnerDied>("Value::fetch_add", [&] { pv.fetch_add(1); }, value),
      throws<OwnerDied>("Value::fetch_sub", [&] { pv.fetch_sub(1); }, value),
      throws<OwnerDied>("Value::operator+=", [&] { pv += 1; }, value),
      throws<OwnerDied>("Value::operator++", [&] { ++pv; }, value),
      throws<OwnerDied>("Value::operator--(int)", [&] { pv--; }, value),
      throws<OwnerDied>("Value::lock", [&] { (void)pv.lock(); }, value),
      throws<OwnerDied>("Segment::set_value_text of a poisoned value",
                        [&] { f.segment.set_value_text("poisoned_value", "1"); }, value),
      throws<OwnerDied>("Array::store", [&] { pa.store(0, 1); }, array),
      throws<OwnerDied>("Array::update", [&] { pa.update(0, [](const I64& x) { return x + 1; }); }, array),
      throws<OwnerDied>("Array::fill", [&] { pa.fill(0); }, array),
      throws<OwnerDied>("Array::lock", [&] { (void)pa.lock(); }, array),
      throws<OwnerDied>("Vector::push_back", [&] { vec.push_back(1); }, vector),
      throws<OwnerDied>("Vector::pop_back", [&] { vec.pop_back(); }, vector),
      throws<OwnerDied>("Vector::set", [&] { vec.set(0, 1); }, vector),
      throws<OwnerDied>("Vector::clear", [&] { vec.clear(); }, vector),
      throws<OwnerDied>("Vector::at (a torn container refuses reads)", [&] { vec.at(0); }, vector),
      throws<OwnerDied>("Vector::at past the end", [&] { vec.at(100); }, vector),
      throws<OwnerDied>("Vector::size", [&] { vec.size(); }, vector),
      throws<OwnerDied>("Vector::snapshot", [&] { vec.snapshot(); }, vector),
      throws<OwnerDied>("Vector::free_bytes", [&] { vec.free_bytes(); }, vector),
      throws<OwnerDied>("Vector::lock", [&] { (void)vec.lock(); }, vector),
      throws<OwnerDied>("Map::insert_or_assign", [&] { map.insert_or_assign(2, 2); }, map_says),
      throws<OwnerDied>("Map::erase", [&] { map.erase(1); }, map_says),
      throws<OwnerDied>("Map::clear", [&] { map.clear(); }, map_says),
      throws<OwnerDied>("Map::get", [&] { map.get(1); }, map_says),
      throws<OwnerDied>("Map::contains", [&] { map.contains(1); }, map_says),
      throws<OwnerDied>("Map::size", [&] { map.size(); }, map_says),
      throws<OwnerDied>("Map::snapshot", [&] { map.snapshot(); }, map_says),
      throws<OwnerDied>("Map::lock", [&] { (void)map.lock(); }, map_says),
      throws<OwnerDied>("String::store", [&] { str.store("x"); }, string),
      throws<OwnerDied>("String::append", [&] { str.append("x"); }, string),
      throws<OwnerDied>("String::load", [&] { str.load(); }, string),
      throws<OwnerDied>("String::size", [&] { str.size(); }, string),
      throws<OwnerDied>("Segment::value_text of a poisoned vector",
                        [&] { f.segment.value_text("poisoned_vector"); }, vector),
      throws<OwnerDied>("Segment::value_text of a poisoned string",
                        [&] { f.segment.value_text("poisoned_string"); }, string),
  };
  run(rows, [&] { f.verify(); });
}

TEST_CASE("closed queues, broken barriers and misused locks give their exact errors, changing nothing") {
  Fixture f;
  const std::string s = f.name.str();
  auto& cq = f.closed_queue;
  const Says push_closed{s, "queue 'closed_queue'", "push: the queue is closed"};
  const Says pop_closed{s, "queue 'closed_queue'", "pop: the queue is closed and empty"};
  const Says broken{s, "barrier 'broken_barrier'",
                    fmt::format("broken: process {} called abort(); reset() makes it usable again", ::getpid())};
  SegmentName elsewhere_name("elsewhere");
  auto elsewhere = Segment::create(elsewhere_name, 65536);
  auto foreign_mutex = elsewhere.create_mutex("foreign");
  f.files = shm_files(my_shm_prefix());
  std::vector<Row> rows = {
      throws<QueueClosed>("Queue::push to a closed queue", bounded([&] { cq.push(1); }), push_closed),
      throws<QueueClosed>("Queue::try_push to a closed queue", [&] { cq.try_push(1); }, push_closed),
      throws<QueueClosed>("Queue::push_for to a closed queue", bounded([&] { cq.push_for(1, 10s); }), push_closed),
      throws<QueueClosed>("Queue::pop from a closed, drained queue", bounded([&] { cq.pop(); }), pop_closed),
      throws<QueueClosed>("Queue::try_pop from a closed, drained queue", [&] { cq.try_pop(); }, pop_closed),
      throws<QueueClosed>("Queue::pop_for from a closed, drained queue", bounded([&] { cq.pop_for(10s); }),
                          pop_closed),
      throws<BrokenBarrier>("Barrier::arrive_and_wait at a broken barrier",
                            bounded([&] { f.broken_barrier.arrive_and_wait(); }), broken),
      throws<BrokenBarrier>("Barrier::wait_for at a broken barrier",
                            bounded([&] { f.broken_barrier.wait_for(10s); }), broken),
      throws<NotOwner>("Mutex::unlock of a mutex nobody holds", [&] { f.mutex.unlock(); },
                       {s, "mutex 'mutex'", "unlock: the calling thread does not hold the lock"}),
      throws<NotOwner>("RecursiveMutex::unlock of a mutex nobody holds", [&] { f.recursive.unlock(); },
                       {s, "recursive_mutex 'recursive'", "unlock: the calling thread does not hold the lock"}),
      throws<NotOwner>("Mutex::unlock by a thread that does not hold it",
                       [&] {
                         f.mutex.lock();
                         Unlocker unlock{f.mutex};
                         bounded([&] { f.mutex.unlock(); })();
                       },
                       {s, "mutex 'mutex'", "unlock: the calling thread does not hold the lock"}),
      throws<InvalidArgument>("Mutex::lock by the thread that holds it",
                              [&] {
                                f.mutex.lock();
                                Unlocker unlock{f.mutex};
                                f.mutex.lock();
                              },
                              {s, "mutex 'mutex'", "lock: the calling thread already holds the lock"}),
      returns_true("Mutex::try_lock_for by the thread that holds it is false, at once",
                   bounded([&] {
                     f.mutex.lock();
                     Unlocker unlock{f.mutex};
                     const auto start = std::chrono::steady_clock::now();
                     return !f.mutex.try_lock_for(10s) && !f.mutex.try_lock() &&
                            std::chrono::steady_clock::now() - start < 5s;
                   })),
      throws<InvalidArgument>("procshare::lock of the same mutex twice (the first is released again)",
                              [&] { procshare::lock(f.mutex, f.mutex); },
                              {s, "mutex 'mutex'", "lock: the calling thread already holds the lock"}),
      throws<InvalidArgument>("procshare::lock of a mutex this thread holds and another",
                              [&] {
                                f.mutex.lock();
                                Unlocker unlock{f.mutex};
                                procshare::lock(f.other_mutex, f.mutex);
                              },
                              {s, "mutex 'mutex'", "lock: the calling thread already holds the lock"}),
      throws<InvalidArgument>("Condition::wait with a lock of another mutex",
                              bounded([&] {
                                std::unique_lock held(f.other_mutex);
                                f.condition.wait(held);
                              }),
                              {s, "condition 'condition'", "wait with a lock of another mutex than its own ('mutex')"}),
      throws<InvalidArgument>("Condition::wait_for with an empty unique_lock",
                              bounded([&] {
                                std::unique_lock<Mutex> none;
                                f.condition.wait_for(none, 10s);
                              }),
                              {s, "condition 'condition'", "wait with a lock of another mutex"}),
      throws<NotOwner>("Condition::wait with its mutex not held",
                       bounded([&] {
                         std::unique_lock held(f.mutex, std::defer_lock);
                         f.condition.wait(held);
                       }),
                       {s, "condition 'condition'", "wait without holding its mutex"}),
      throws<NotOwner>("Condition::wait_for with a predicate, its mutex not held",
                       bounded([&] {
                         std::unique_lock held(f.mutex, std::defer_lock);
                         f.condition.wait_for(held, 10s, [] { return false; });
                       }),
                       {s, "condition 'condition'", "wait without holding its mutex"}),
      throws<InvalidArgument>("create_condition bound to a mutex of another segment",
                              [&] { f.segment.create_condition("n", foreign_mutex); },
                              {s, "condition 'n'", "its mutex must be an object of the same segment"}),
      throws<InvalidArgument>("create_condition bound to an empty Mutex handle",
                              [&] { f.segment.create_condition("n", Mutex{}); },
                              {s, "condition 'n'", "its mutex must be an object of the same segment"}),
      throws<InvalidArgument>("Semaphore::release of 0 units", [&] { f.semaphore.release(0); },
                              {s, "semaphore 'semaphore'", "release of 0 units"}),
      throws<InvalidArgument>("Semaphore::release past 2^31 - 1", [&] { f.semaphore.release(0x7fffffff); },
                              {s, "semaphore 'semaphore'", "release of 2147483647 would raise the count from 3 above 2147483647"}),
      throws<InvalidArgument>("Semaphore::release of UINT32_MAX units", [&] { f.semaphore.release(UINT32_MAX); },
                              {s, "semaphore 'semaphore'", "release of 4294967295 would raise the count from 3"}),
      throws<InvalidArgument>("BoundedSemaphore::release past its bound", [&] { f.bounded_semaphore.release(); },
                              {s, "bounded_semaphore 'bounded'",
                               "release of 1 would raise the count from 2 above its initial value 2"}),
      throws<InvalidArgument>("BoundedSemaphore::release of 0 units", [&] { f.bounded_semaphore.release(0); },
                              {s, "bounded_semaphore 'bounded'", "release of 0 units"}),
  };
  run(rows, [&] {
    f.verify();
    CHECK(foreign_mutex.try_lock());
    foreign_mutex.unlock();
  });
}

TEST_CASE("zero, negative and huge timeouts return at once with the documented result, changing nothing") {
  Fixture f;
  SegmentName scratch_name("scratch");
  auto scratch = Segment::create(scratch_name, 1 << 20);
  auto barrier_zero = scratch.create_barrier("zero", 2);
  auto barrier_negative = scratch.create_barrier("negative", 2);
  f.files = shm_files(my_shm_prefix());
  const std::string c = scratch_name.str();
  using B = std::function<bool()>;
  auto past_steady = std::chrono::steady_clock::now() - 1h;
  auto past_system = std::chrono::system_clock::now() - 1h;
  std::vector<Row> rows = {
      returns_true("Queue::pop_for(-1 s) on an empty queue is nullopt",
                   bounded(B([&] { return !f.empty_queue.pop_for(-1s).has_value(); }))),
      returns_true("Queue::pop_for(0) on an empty queue is nullopt",
                   bounded(B([&] { return !f.empty_queue.pop_for(0s).has_value(); }))),
      returns_true("Queue::pop_for(duration::min()) on an empty queue is nullopt",
                   bounded(B([&] { return !f.empty_queue.pop_for(std::chrono::nanoseconds::min()).has_value(); }))),
      returns_true("Queue::push_for(-1 s) to a full queue is false",
                   bounded(B([&] { return !f.full_queue.push_for(1, -1s); }))),
      returns_true("Queue::push_for(0) to a full queue is false",
                   bounded(B([&] { return !f.full_queue.push_for(1, 0ms); }))),
      returns_true("Queue::pop_for(hours::max()) on a queue holding an item returns it",
                   bounded(B([&] {
                     const auto item = f.full_queue.pop_for(std::chrono::hours::max());
                     f.full_queue.push(99);  // put it back
                     return item == 99;
                   }))),
      returns_true("Semaphore::try_acquire_for(-1 s) at count 0 is false",
                   bounded(B([&] { return !f.empty_semaphore.try_acquire_for(-1s); }))),
      returns_true("Semaphore::try_acquire_for(0) at count 0 is false",
                   bounded(B([&] { return !f.empty_semaphore.try_acquire_for(0s); }))),
      returns_true("Semaphore::try_acquire_until(an hour ago, steady) at count 0 is false",
                   bounded(B([&] { return !f.empty_semaphore.try_acquire_until(past_steady); }))),
      returns_true("Semaphore::try_acquire_until(an hour ago, system clock) at count 0 is false",
                   bounded(B([&] { return !f.empty_semaphore.try_acquire_until(past_system); }))),
      returns_true("Event::wait_for(-1 s) on a clear event is false",
                   bounded(B([&] { return !f.clear_event.wait_for(-1s); }))),
      returns_true("Event::wait_for(0) on a clear event is false",
                   bounded(B([&] { return !f.clear_event.wait_for(0s); }))),
      returns_true("Event::wait_until(an hour ago) on a clear event is false",
                   bounded(B([&] { return !f.clear_event.wait_until(past_system); }))),
      returns_true("Event::wait_for(-1 s) on a set event is true",
                   bounded(B([&] { return f.event.wait_for(-1s); }))),
      returns_true("Mutex::try_lock_for(-1 s) of a mutex another thread holds is false",
                   [&] {
                     f.mutex.lock();
                     Unlocker unlock{f.mutex};
                     return bounded(B([&] { return !f.mutex.try_lock_for(-1s); }))();
                   }),
      returns_true("Mutex::try_lock_until(an hour ago) of a mutex another thread holds is false",
                   [&] {
                     f.mutex.lock();
                     Unlocker unlock{f.mutex};
                     return bounded(B([&] { return !f.mutex.try_lock_until(past_steady); }))();
                   }),
      returns_true("Condition::wait_for(-1 s) times out at once",
                   bounded(B([&] {
                     std::unique_lock held(f.mutex);
                     return f.condition.wait_for(held, -1s) == std::cv_status::timeout && held.owns_lock();
                   }))),
      returns_true("Condition::wait_for(0, pred) returns pred()",
                   bounded(B([&] {
                     std::unique_lock held(f.mutex);
                     return !f.condition.wait_for(held, 0s, [] { return false; }) && held.owns_lock();
                   }))),
      throws<BrokenBarrier>("Barrier::wait_for(0) breaks the barrier at once",
                            bounded([&] { barrier_zero.wait_for(0s); }),
                            {c, "barrier 'zero'", fmt::format("broken: a wait in process {} timed out", ::getpid())}),
      throws<BrokenBarrier>("Barrier::wait_for(-1 s) breaks the barrier at once",
                            bounded([&] { barrier_negative.wait_for(-1s); }),
                            {c, "barrier 'negative'", fmt::format("broken: a wait in process {} timed out", ::getpid())}),
  };
  run(rows, [&] { f.verify(); });
  CHECK(barrier_zero.broken());
  barrier_zero.reset();
  CHECK_FALSE(barrier_zero.broken());
  CHECK(barrier_zero.waiting() == 0);
}

TEST_CASE("empty, forged and stale handles of every kind are refused, naming what they can") {
  Fixture f;
  const std::string s = f.name.str();
  const Says empty_value{"", "value", "empty handle (default-constructed, never assigned an object)"};
  auto empty = [](std::string kind) {
    return Says{"", std::move(kind), "empty handle (default-constructed, never assigned an object)"};
  };
  std::vector<Row> rows = {
      throws<NotFound>("Value{}.load", [] { Value<I64>{}.load(); }, empty("value")),
      throws<NotFound>("Atomic{}.store", [] { Atomic<I64>{}.store(1); }, empty("atomic")),
      throws<NotFound>("Array{}.size", [] { Array<I64>{}.size(); }, empty("array")),
      throws<NotFound>("Flag{}.set", [] { Flag{}.set(); }, empty("flag")),
      throws<NotFound>("Mutex{}.lock", [] { Mutex{}.lock(); }, empty("mutex")),
      throws<NotFound>("RecursiveMutex{}.unlock", [] { RecursiveMutex{}.unlock(); }, empty("recursive_mutex")),
      throws<NotFound>("Semaphore{}.release", [] { Semaphore{}.release(); }, empty("semaphore")),
      throws<NotFound>("BoundedSemaphore{}.bound", [] { BoundedSemaphore{}.bound(); }, empty("bounded_semaphore")),
      throws<NotFound>("Event{}.wait_for", [] { Event{}.wait_for(1s); }, empty("event")),
      throws<NotFound>("Condition{}.notify_all", [] { Condition{}.notify_all(); }, empty("condition")),
      throws<NotFound>("Barrier{}.arrive_and_wait", [] { Barrier{}.arrive_and_wait(); }, empty("barrier")),
      throws<NotFound>("Queue{}.push", [] { Queue<I64>{}.push(1); }, empty("queue")),
      throws<NotFound>("Vector{}.push_back", [] { Vector<I64>{}.push_back(1); }, empty("vector")),
      throws<NotFound>("Map{}.get", [] { Map<I64, I64>{}.get(1); }, empty("map")),
      throws<NotFound>("String{}.load", [] { String{}.load(); }, empty("string")),
      throws<TypeMismatch>("a Value<int64> handle copied bit for bit into a Value<double>",
                           [&] { std::bit_cast<Value<double>>(f.value).store(1.5); },
                           {s, "value 'value'", "the handle was made for another type of object"}),
      throws<TypeMismatch>("an Array<int64> handle copied bit for bit into an Array<uint64>",
                           [&] { std::bit_cast<Array<std::uint64_t>>(f.array).store(0, 1); },
                           {s, "array 'array'", "the handle was made for another type of object"}),
      throws<TypeMismatch>("a Mutex handle copied bit for bit into a Flag",
                           [&] { std::bit_cast<Flag>(f.mutex).set(); },
                           {s, "flag 'mutex'", "the handle was made for another type of object"}),
      throws<TypeMismatch>("a Queue's handle record copied bit for bit into a Vector",
                           [&] { std::bit_cast<Vector<I64>>(f.queue.handle()).push_back(1); },
                           {s, "vector 'queue'", "the handle was made for another type of object"}),
      throws<TypeMismatch>("a Value<int64>'s handle record copied bit for bit into an Atomic<int64>",
                           [&] { std::bit_cast<Atomic<I64>>(f.value.handle()).store(1); },
                           {s, "atomic 'value'", "the handle was made for another type of object"}),
      throws<CorruptSegment>("a Value handle forged with an offset past the segment's end",
                             [&] {
                               auto core = f.value.handle();
                               core.offset = std::uint64_t{1} << 40;
                               std::bit_cast<Value<I64>>(core).store(1);
                             },
                             {s, "value at offset 1099511627776", "handle offset 1099511627776 lies outside the segment"}),
      throws<CorruptSegment>("a Value handle forged with an unaligned offset",
                             [&] {
                               auto core = f.value.handle();
                               core.offset += 8;
                               std::bit_cast<Value<I64>>(core).store(1);
                             },
                             {s, "value at offset " + std::to_string(f.value.handle().offset + 8), "lies outside the segment"}),
  };
  // Handles of a segment that was closed in this process: every kind.
  SegmentName closed_name("closed");
  Value<I64> value;
  Atomic<I64> atomic;
  Array<I64> array;
  Flag flag;
  Mutex mutex;
  Semaphore semaphore;
  Event event;
  Barrier barrier;
  Queue<I64> queue;
  Vector<I64> vector;
  Map<I64, I64> map;
  String string;
  {
    auto closed = Segment::create(closed_name, 1 << 20);
    value = closed.create_value<I64>("v", 1);
    atomic = closed.create_atomic<I64>("at", 1);
    array = closed.create_array<I64>("a", 2);
    flag = closed.create_flag("f");
    mutex = closed.create_mutex("m");
    semaphore = closed.create_semaphore("sem", 1);
    event = closed.create_event("e");
    barrier = closed.create_barrier("b", 2);
    queue = closed.create_queue<I64>("q", 2);
    vector = closed.create_vector<I64>("vec", 4096);
    map = closed.create_map<I64, I64>("map", 4096);
    string = closed.create_string("s", 4096);
    CHECK(value.load() == 1);
  }
  CHECK_FALSE(procshare::test::shm_exists(closed_name));
  const std::string c = closed_name.str();
  const std::string gone = "its segment is no longer open in this process (it was closed, or removed and recreated)";
  rows.insert(rows.end(), {
      throws<NotFound>("Value::load after its segment was closed", [&] { value.load(); }, {c, "value 'v'", gone}),
      throws<NotFound>("Atomic::load after its segment was closed", [&] { atomic.load(); }, {c, "atomic 'at'", gone}),
      throws<NotFound>("Array::store after its segment was closed", [&] { array.store(0, 1); }, {c, "array 'a'", gone}),
      throws<NotFound>("Flag::is_set after its segment was closed", [&] { flag.is_set(); }, {c, "flag 'f'", gone}),
      throws<NotFound>("Mutex::lock after its segment was closed", [&] { mutex.lock(); }, {c, "mutex 'm'", gone}),
      throws<NotFound>("Semaphore::acquire after its segment was closed", bounded([&] { semaphore.acquire(); }),
                       {c, "semaphore 'sem'", gone}),
      throws<NotFound>("Event::wait after its segment was closed", bounded([&] { event.wait(); }),
                       {c, "event 'e'", gone}),
      throws<NotFound>("Barrier::arrive_and_wait after its segment was closed",
                       bounded([&] { barrier.arrive_and_wait(); }), {c, "barrier 'b'", gone}),
      throws<NotFound>("Queue::pop after its segment was closed", bounded([&] { queue.pop(); }),
                       {c, "queue 'q'", gone}),
      throws<NotFound>("Vector::push_back after its segment was closed", [&] { vector.push_back(1); },
                       {c, "vector 'vec'", gone}),
      throws<NotFound>("Map::insert_or_assign after its segment was closed", [&] { map.insert_or_assign(1, 1); },
                       {c, "map 'map'", gone}),
      throws<NotFound>("String::store after its segment was closed", [&] { string.store("x"); },
                       {c, "string 's'", gone}),
  });
  // Handles of a segment removed from /dev/shm (still mapped: they keep working), then
  // closed and recreated under the same name (they must not reach the new one).
  SegmentName recreated_name("recreated");
  const std::string r = recreated_name.str();
  Value<I64> old_value;
  Queue<I64> old_queue;
  {
    auto original = Segment::create(recreated_name, 1 << 20);
    old_value = original.create_value<I64>("v", 1);
    old_queue = original.create_queue<I64>("q", 4);
    CHECK(Segment::remove(recreated_name));
    old_value += 1;  // removed but mapped: still works
    old_queue.push(5);
    CHECK(old_value.load() == 2);
    CHECK(old_queue.pop() == 5);
  }
  auto recreated = Segment::create(recreated_name, 1 << 20);
  auto new_value = recreated.create_value<I64>("v", 100);
  recreated.create_queue<I64>("q", 4);
  f.files = shm_files(my_shm_prefix());
  rows.push_back(throws<NotFound>("Value::store through a handle of the segment's previous incarnation",
                                  [&] { old_value.store(7); }, {r, "value 'v'", gone}));
  rows.push_back(throws<NotFound>("Queue::push through a handle of the segment's previous incarnation",
                                  [&] { old_queue.push(7); }, {r, "queue 'q'", gone}));
  run(rows, [&] {
    f.verify();
    CHECK(new_value.load() == 100);
    CHECK(recreated.open_queue<I64>("q").size() == 0);
  });
}

TEST_CASE("value_text and set_value_text refuse bad names, text and kinds, writing nothing") {
  Fixture f;
  const std::string s = f.name.str();
  Segment& g = f.segment;
  auto bad_text = [&](std::string what, std::string name, std::string text, std::string object,
                      std::string detail) {
    return throws<InvalidArgument>(std::move(what), [&g, name, text] { g.set_value_text(name, text); },
                                   {s, std::move(object), std::move(detail)});
  };
  std::vector<Row> rows = {
      throws<NotFound>("value_text of a missing object", [&] { g.value_text("missing"); },
                       {s, "object 'missing'", "no object of that name"}),
      throws<NotFound>("value_text with an empty name", [&] { g.value_text(""); },
                       {s, "object ''", "no object of that name"}),
      throws<NotFound>("set_value_text of a missing object", [&] { g.set_value_text("missing", "1"); },
                       {s, "object 'missing'", "no object of that name"}),
      throws<NotFound>("set_value_text with a NUL in the name", [&] { g.set_value_text(nul_name, "1"); },
                       {s, "object 'a\\x00b'", "no object of that name"}),
      bad_text("set_value_text of a word into an int64", "value", "abc", "value 'value'",
               "'abc' is not a valid int64"),
      bad_text("set_value_text of an empty text", "value", "", "value 'value'", "'' is not a valid int64"),
      bad_text("set_value_text of 2^64 into an int64", "value", "18446744073709551616", "value 'value'",
               "'18446744073709551616' is not a valid int64"),
      bad_text("set_value_text of a number with trailing junk", "value", "12x", "value 'value'",
               "'12x' is not a valid int64"),
      bad_text("set_value_text of a fraction into an int64", "value", "1.5", "value 'value'",
               "'1.5' is not a valid int64"),
      bad_text("set_value_text of a NUL into an atomic", "atomic", nul_name, "atomic 'atomic'",
               "'a\\x00b' is not a valid int64"),
      bad_text("set_value_text of 'maybe' into a flag", "flag", "maybe", "flag 'flag'", "'maybe' is not a valid flag"),
      bad_text("set_value_text of '2' into an event", "event", "2", "event 'event'", "'2' is not a valid event"),
      throws<TypeMismatch>("set_value_text of an array", [&] { g.set_value_text("array", "1"); },
                           {s, "array 'array'", "a array cannot be set from text"}),
      throws<TypeMismatch>("set_value_text of a queue", [&] { g.set_value_text("queue", "1"); },
                           {s, "queue 'queue'", "cannot be set from text"}),
      throws<TypeMismatch>("set_value_text of a mutex", [&] { g.set_value_text("mutex", "1"); },
                           {s, "mutex 'mutex'", "cannot be set from text"}),
      throws<TypeMismatch>("set_value_text of a map", [&] { g.set_value_text("map", "1"); },
                           {s, "map 'map'", "cannot be set from text"}),
  };
  run(rows, [&] { f.verify(); });
}

TEST_CASE("bad Pool options, calls after close and oversized jobs are refused, and the pool works on") {
  wait_single_threaded();
  SegmentName taken("taken"), pool_name("pool"), bad_name("badpool");
  auto taken_segment = Segment::create(taken, 65536);
  const std::string p = pool_name.str(), t = taken.str(), b = bad_name.str();
  const std::string generated = "procshare-pool-" + std::to_string(::getpid()) + "-";
  {
    Pool pool({.workers = 2, .name = p, .arena_bytes = 1 << 16});
    Pool closed({.workers = 1, .arena_bytes = 1 << 16});
    const std::string closed_segment = closed.control_segment();
    closed.close();
    Pool terminated({.workers = 1, .arena_bytes = 1 << 16});
    const std::string terminated_segment = terminated.control_segment();
    auto pending = terminated.submit([] {
      std::this_thread::sleep_for(1h);  // ended by terminate()
      return 1;
    });
    terminated.terminate();
    const auto files = shm_files(my_shm_prefix());
    const auto pool_files = shm_files(generated);
    const auto twice = [](const I64& x) { return x * 2; };
    const std::vector<I64> items{1, 2, 3};
    auto named = [](std::string name, unsigned workers, std::size_t arena) {
      return [name, workers, arena] { Pool bad({.workers = workers, .name = name, .arena_bytes = arena}); };
    };
    const std::string closed_text = "the pool is closed";
    std::vector<Row> rows = {
        throws<InvalidArgument>("Pool of 1025 workers", named(b, 1025, 1 << 16),
                                {b, "pool", "1025 workers is more than 1024"}),
        throws<InvalidArgument>("Pool of UINT_MAX workers", named(b, UINT_MAX, 1 << 16),
                                {b, "pool", "4294967295 workers is more than 1024"}),
        throws<InvalidArgument>("Pool with a 0-byte arena", named(b, 1, 0),
                                {b, "pool", "arena_bytes 0 is out of range (4096 to 2^40)"}),
        throws<InvalidArgument>("Pool with a 4095-byte arena", named(b, 1, 4095),
                                {b, "pool", "arena_bytes 4095 is out of range (4096 to 2^40)"}),
        throws<InvalidArgument>("Pool with a 2^40 + 1-byte arena", named(b, 1, (std::size_t{1} << 40) + 1),
                                {b, "pool", "arena_bytes 1099511627777 is out of range"}),
        throws<InvalidArgument>("Pool with a SIZE_MAX-byte arena", named(b, 1, SIZE_MAX),
                                {b, "pool", "is out of range (4096 to 2^40)"}),
        throws<InvalidName>("Pool named with a '/'", named("a/b", 1, 1 << 16),
                            {"a/b", "", "invalid segment name: it contains '/'"}),
        throws<InvalidName>("Pool with a 201-character name", named(long_segment_name, 1, 1 << 16),
                            {long_segment_name, "", "201 characters long"}),
        throws<AlreadyExists>("Pool named after an existing segment", named(t, 1, 1 << 16),
                              {t, "", "cannot create segment: it already exists"}),
        throws<InvalidArgument>("Pool() while another thread runs",
                                [b] {
                                  std::promise<void> release;
                                  std::thread other([done = release.get_future()]() mutable { done.wait(); });
                                  struct Join {
                                    std::promise<void>& release;
                                    std::thread& other;
                                    ~Join() {
                                      release.set_value();
                                      other.join();
                                      wait_single_threaded();
                                    }
                                  } join{release, other};
                                  Pool bad({.workers = 1, .name = b, .arena_bytes = 1 << 16});
                                },
                                {b, "pool", "this process runs 2 threads, and forking a threaded process is unsafe"}),
        throws<SegmentFull>("map of more items than the arena holds",
                            [&] { pool.map(std::vector<I64>(20000, 1), twice); }, {p, "pool", "the job needs"}),
        throws<SegmentFull>("submit of an argument larger than the arena",
                            [&] { pool.submit([](const std::string& x) { return x.size(); }, std::string(1 << 17, 'x')); },
                            {p, "pool", "raise PoolOptions::arena_bytes"}),
        throws<InvalidArgument>("join() before close()", [&] { pool.join(); }, {p, "pool", "join() before close()"}),
        throws<NotFound>("inspect_pool of a segment without a pool", [&] { inspect_pool(taken_segment); },
                         {t, "pool 'pool'", "no object of that name: it is not a pool's control segment; the pool"}),
        throws<NotFound>("stop_pool_jobs of a segment without a pool", [&] { stop_pool_jobs(taken_segment); },
                         {t, "pool 'pool'", "'" + p + "'"}),
        returns_true("map of no items returns no results", [&] {
          auto job = pool.map_async(std::vector<I64>{}, twice);
          return job.wait_for(30s) && job.get().empty();
        }),
        returns_true("find_first of no items finds nothing",
                     bounded([&] { return !pool.find_first(std::vector<I64>{}, [](const I64&) { return true; }); })),
        returns_true("map with a chunk of UINT64_MAX items runs them all",
                     [&] {
                       auto job = pool.map_async(Chunk{UINT64_MAX}, items, twice);
                       return job.wait_for(30s) && job.get() == std::vector<I64>{2, 4, 6};
                     }),
        throws<PoolClosed>("submit after close()", [&] { closed.submit([] { return 1; }); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("map after close()", [&] { closed.map(items, twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("map_async after close()", [&] { closed.map_async(items, twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("find_first after close()",
                           [&] { closed.find_first(items, [](const I64& x) { return x > 1; }); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("submit after terminate()", [&] { terminated.submit([] { return 1; }); },
                           {terminated_segment, "pool", "the pool was terminated"}),
        throws<PoolClosed>("map after terminate()", [&] { terminated.map(items, twice); },
                           {terminated_segment, "pool", "the pool was terminated"}),
        throws<PoolClosed>("Future::get of a task the pool was terminated under", [&] { pending.get(); },
                           {terminated_segment, "pool", "the pool was terminated"}),
    };
    run(rows, [&] {
      CHECK(pool.map(items, twice) == std::vector<I64>{2, 4, 6});
      CHECK(pool.submit([](I64 x) { return x + 1; }, I64{41}).get() == 42);
      CHECK(pool.workers() == 2);
      CHECK(taken_segment.objects().empty());
      CHECK(shm_files(my_shm_prefix()) == files);
      CHECK(shm_files(generated) == pool_files);
    });
    // A pool used from a forked child: refused there, and the parent's pool is untouched.
    const pid_t child = run_child([&] {
      try {
        pool.submit([] { return 1; });
      } catch (const PoolClosed& e) {
        ::_exit(std::string_view(e.what()).find("a pool can only be used by the process that made it") !=
                        std::string_view::npos
                    ? 0
                    : 4);
      }
      ::_exit(5);
    });
    CHECK(wait_child(child, 30s).ok());
    CHECK(pool.map(items, twice) == std::vector<I64>{2, 4, 6});
  }
  // Every pool's control segment is gone with it, and no refused pool left one behind.
  CHECK(shm_files(generated).empty());
  CHECK_FALSE(procshare::test::shm_exists(p));
  CHECK_FALSE(procshare::test::shm_exists(b));
}


namespace {

// A Pipe message as the wire carries it: header, type name, payload; `magic`,
// `type_size` and `payload_size` as given (forged), the bytes that follow as given.
std::vector<std::byte> wire_message(std::uint32_t magic, std::uint32_t type_size, std::uint64_t payload_size,
                                    std::string_view body) {
  const detail::PipeHeader header{magic, type_size, payload_size, static_cast<std::int32_t>(::getpid()), 0};
  std::vector<std::byte> bytes(sizeof header + body.size());
  std::memcpy(bytes.data(), &header, sizeof header);
  std::memcpy(bytes.data() + sizeof header, body.data(), body.size());
  return bytes;
}

// Writes `bytes` straight into `end`'s socket, as a foreign or broken sender would.
void write_raw(const Connection& end, const std::vector<std::byte>& bytes) {
  REQUIRE(::write(end.fd(), bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
}

// The name typeid gives an I64 (what a Pipe header carries as its type).
const std::string i64_type = typeid(I64).name();

}  // namespace

TEST_CASE("Pipe ends that are closed, moved from, misused or fed bad bytes give their exact errors, keeping what is in the pipe") {
  // A message in flight that every row must leave where it is.
  Pipe kept({.name = "kept"});
  kept.first.send(I64{42});
  auto verify_kept = [&] {
    CHECK(bounded([&] { return kept.second.poll(0s); })());
    CHECK(kept.second.recv<I64>() == 42);
    kept.first.send(I64{42});
  };
  verify_kept();

  Pipe closed({.name = "closed"});  // end 0 closed here
  closed.first.close();
  Pipe peer_closed({.name = "peer-closed"});  // end 1 closed after sending one message
  peer_closed.second.send(I64{7});
  peer_closed.second.close();
  Pipe silent({.name = "silent"});   // end 1 closed, nothing sent
  silent.second.close();
  Pipe died({.name = "died"});       // end 1 held by a child that sent 9 and exited
  const pid_t child = run_child([&] {
    died.first.close();
    died.second.send(I64{9});
  });
  died.second.close();
  REQUIRE(wait_child(child, 30s).ok());
  Pipe moved({.name = "moved"});      // end 0 moved into `taker`
  Connection taker = std::move(moved.first);
  Pipe assigned({.name = "assigned"});  // end 1 move-assigned away
  Connection assignee;
  assignee = std::move(assigned.second);
  Pipe one_way({.duplex = false, .name = "one-way"});
  Pipe empty({.name = "empty"});      // open both ends, nothing sent
  Pipe junk({.name = "junk"});        // a foreign header
  write_raw(junk.second, std::vector<std::byte>(32, std::byte{'j'}));
  Pipe huge({.name = "huge"});        // a header claiming more than 2^40 payload bytes
  write_raw(huge.second, wire_message(detail::pipe_magic, 1, (std::uint64_t{1} << 40) + 1, ""));
  Pipe no_type({.name = "no-type"});  // a header with an empty type name
  write_raw(no_type.second, wire_message(detail::pipe_magic, 0, 8, std::string(8, 'x')));
  Pipe long_type({.name = "long-type"});  // a type name of 4097 bytes
  write_raw(long_type.second, wire_message(detail::pipe_magic, 4097, 0, std::string(4097, 't')));
  Pipe cut({.name = "cut"});          // a header promising 100 body bytes, 10 sent, then closed
  write_raw(cut.second, wire_message(detail::pipe_magic, 1, 99, "l123456789"));
  cut.second.close();
  Pipe terabyte({.name = "terabyte"});  // a header claiming 2^40 payload bytes, then closed
  write_raw(terabyte.second, wire_message(detail::pipe_magic, static_cast<std::uint32_t>(i64_type.size()),
                                          std::uint64_t{1} << 40, i64_type));
  terabyte.second.close();
  Pipe short_payload({.name = "short"});  // an I64 message whose payload has 3 bytes
  write_raw(short_payload.second,
            wire_message(detail::pipe_magic, static_cast<std::uint32_t>(i64_type.size()), 3, i64_type + "abc"));
  short_payload.second.send(I64{5});   // and a good one behind it
  Pipe long_payload({.name = "long"});  // an I64 message whose payload has 12 bytes
  write_raw(long_payload.second, wire_message(detail::pipe_magic, static_cast<std::uint32_t>(i64_type.size()),
                                              12, i64_type + std::string(12, '\0')));
  long_payload.second.send(I64{6});

  const std::string this_end_closed = "this end is closed (close() was called, or it was moved from)";
  const std::string peer_gone = "the other end was closed or its process died";
  const std::string not_a_message =
      "recv: the bytes that arrived are not a procshare message (bad header); this end is now closed";
  using B = std::function<bool()>;
  const auto min = std::chrono::nanoseconds::min();
  std::vector<Row> rows = {
      throws<PipeClosed>("recv on an end closed with close()", [&] { closed.first.recv<I64>(); },
                         {"", "pipe 'closed' end 0", "recv: " + this_end_closed}),
      throws<PipeClosed>("recv_for on an end closed with close()", [&] { closed.first.recv_for<I64>(1s); },
                         {"", "pipe 'closed' end 0", "recv_for: " + this_end_closed}),
      throws<PipeClosed>("send after close()", [&] { closed.first.send(I64{1}); },
                         {"", "pipe 'closed' end 0", "send: " + this_end_closed}),
      throws<PipeClosed>("poll(0) on an end closed with close()", [&] { closed.first.poll(0s); },
                         {"", "pipe 'closed' end 0", "poll: " + this_end_closed}),
      returns_true("close() of an end closed already does nothing", [&] {
        closed.first.close();
        return closed.first.closed() && closed.first.fd() == -1;
      }),
      returns_true("recv after the other end closed still returns what it sent first",
                   bounded(B([&] { return peer_closed.first.recv<I64>() == 7; }))),
      throws<PipeClosed>("recv after the other end closed and everything was read",
                         bounded([&] { peer_closed.first.recv<I64>(); }),
                         {"", "pipe 'peer-closed' end 0", "recv: " + peer_gone}),
      throws<PipeClosed>("recv_for(1 h) after the other end closed, nothing sent",
                         bounded([&] { silent.first.recv_for<I64>(1h); }),
                         {"", "pipe 'silent' end 0", "recv_for: " + peer_gone}),
      returns_true("poll(hours::max()) after the other end closed is true at once (recv will throw)",
                   bounded(B([&] { return silent.first.poll(std::chrono::hours::max()); }))),
      throws<PipeClosed>("send after the other end closed (no SIGPIPE)", [&] { silent.first.send(I64{1}); },
                         {"", "pipe 'silent' end 0", "send: " + peer_gone}),
      returns_true("recv after the peer's process exited returns its message",
                   bounded(B([&] { return died.first.recv<I64>() == 9; }))),
      throws<PipeClosed>("recv after the peer's process exited and its message was read",
                         bounded([&] { died.first.recv<I64>(); }), {"", "pipe 'died' end 0", "recv: " + peer_gone}),
      throws<PipeClosed>("recv of a message cut off by the close (10 of 100 body bytes)",
                         bounded([&] { cut.first.recv<I64>(); }),
                         {"", "pipe 'cut' end 0",
                          "recv: " + peer_gone + " in the middle of a message (34 of 124 bytes arrived)"}),
      throws<PipeClosed>("recv of a header claiming 2^40 payload bytes, then the close (nothing that large is allocated)",
                         bounded([&] { terabyte.first.recv<I64>(); }),
                         {"", "pipe 'terabyte' end 0", "in the middle of a message (" +
                                                           std::to_string(24 + i64_type.size()) + " of " +
                                                           std::to_string(24 + i64_type.size() + (std::uint64_t{1} << 40)) +
                                                           " bytes arrived)"}),
      throws<PipeClosed>("recv on a moved-from end", [&] { moved.first.recv<I64>(); },
                         {"", "pipe 'moved' end 0", "recv: " + this_end_closed}),
      throws<PipeClosed>("send on a moved-from end", [&] { moved.first.send(I64{1}); },
                         {"", "pipe 'moved' end 0", "send: " + this_end_closed}),
      throws<PipeClosed>("poll on a moved-from end", [&] { moved.first.poll(); },
                         {"", "pipe 'moved' end 0", "poll: " + this_end_closed}),
      throws<PipeClosed>("recv_for(0) on an end moved away by assignment", [&] { assigned.second.recv_for<I64>(0s); },
                         {"", "pipe 'assigned' end 1", "recv_for: " + this_end_closed}),
      returns_true("the end moved into another Connection works on", bounded(B([&] {
                     taker.send(I64{11});
                     assignee.send(I64{12});
                     return moved.second.recv<I64>() == 11 && assigned.first.recv<I64>() == 12 &&
                            moved.first.fd() == -1 && assigned.second.fd() == -1;
                   }))),
      throws<InvalidArgument>("send on the receiving end of a one-way pipe", [&] { one_way.first.send(I64{1}); },
                              {"", "pipe 'one-way' end 0", "send: this is the receiving end of a one-way pipe"}),
      throws<InvalidArgument>("recv on the sending end of a one-way pipe", [&] { one_way.second.recv<I64>(); },
                              {"", "pipe 'one-way' end 1", "recv: this is the sending end of a one-way pipe"}),
      throws<InvalidArgument>("poll on the sending end of a one-way pipe", [&] { one_way.second.poll(1s); },
                              {"", "pipe 'one-way' end 1", "poll: this is the sending end of a one-way pipe"}),
      returns_true("poll(0) on an empty pipe is false", bounded(B([&] { return !empty.first.poll(0s); }))),
      returns_true("poll(-1 s) on an empty pipe is false", bounded(B([&] { return !empty.first.poll(-1s); }))),
      returns_true("poll(duration::min()) on an empty pipe is false", bounded(B([&] { return !empty.first.poll(min); }))),
      returns_true("poll() on an empty pipe is false", bounded(B([&] { return !empty.first.poll(); }))),
      returns_true("poll(hours::max()) on a pipe holding a message is true at once",
                   bounded(B([&] { return kept.second.poll(std::chrono::hours::max()); }))),
      throws<Timeout>("recv_for(0) on an empty pipe", bounded([&] { empty.first.recv_for<I64>(0s); }),
                      {"", "pipe 'empty' end 0", "recv_for: no whole message arrived before the deadline"}),
      throws<Timeout>("recv_for(-1 s) on an empty pipe", bounded([&] { empty.first.recv_for<I64>(-1s); }),
                      {"", "pipe 'empty' end 0", "recv_for: no whole message arrived before the deadline"}),
      throws<Timeout>("recv_for(duration::min()) on an empty pipe", bounded([&] { empty.first.recv_for<I64>(min); }),
                      {"", "pipe 'empty' end 0", "recv_for: no whole message arrived before the deadline"}),
      throws<Timeout>("recv_until(an hour ago) on an empty pipe",
                      bounded([&] { empty.first.recv_until<I64>(std::chrono::system_clock::now() - 1h); }),
                      {"", "pipe 'empty' end 0", "recv_until: no whole message arrived before the deadline"}),
      throws<TypeMismatch>("recv<double> of a message sent as an int64 (it stays in the pipe)",
                           [&] { kept.second.recv<double>(); },
                           {"", "pipe 'kept' end 1", "recv<double>: the next message was sent as long; it stays in the pipe"}),
      throws<CorruptMessage>("recv of bytes that are not a message", bounded([&] { junk.first.recv<I64>(); }),
                             {"", "pipe 'junk' end 0", not_a_message}),
      throws<PipeClosed>("recv on the end a bad header closed", [&] { junk.first.recv<I64>(); },
                         {"", "pipe 'junk' end 0", "recv: " + this_end_closed}),
      throws<CorruptMessage>("recv of a header claiming 2^40 + 1 payload bytes (too big a message)",
                             bounded([&] { huge.first.recv<I64>(); }), {"", "pipe 'huge' end 0", not_a_message}),
      throws<CorruptMessage>("recv of a header with an empty type name", bounded([&] { no_type.first.recv<I64>(); }),
                             {"", "pipe 'no-type' end 0", not_a_message}),
      throws<CorruptMessage>("recv of a header with a 4097-byte type name",
                             bounded([&] { long_type.first.recv<I64>(); }), {"", "pipe 'long-type' end 0", not_a_message}),
      throws<CorruptMessage>("recv of an int64 message whose payload has 3 bytes",
                             bounded([&] { short_payload.first.recv<I64>(); }),
                             {"", "pipe 'short' end 0",
                              "recv<long>: the message's payload runs out before it decodes as that type; it was dropped"}),
      returns_true("the message behind the dropped one arrives", bounded(B([&] { return short_payload.first.recv<I64>() == 5; }))),
      throws<CorruptMessage>("recv of an int64 message whose payload has 12 bytes",
                             bounded([&] { long_payload.first.recv<I64>(); }),
                             {"", "pipe 'long' end 0",
                              "recv<long>: the message's payload is longer than it decodes as that type; it was dropped"}),
      returns_true("the message behind the dropped one arrives", bounded(B([&] { return long_payload.first.recv<I64>() == 6; }))),
  };
  run(rows, [&] {
    verify_kept();
    CHECK(closed.first.closed());
    CHECK_FALSE(empty.first.closed());
    CHECK_FALSE(empty.second.closed());
  });
}

TEST_CASE("Process calls out of order, on a moved-from Process or with zero and negative timeouts give their exact errors, leaving the child alone") {
  wait_single_threaded();  // start() refuses to fork a threaded process
  procshare::test::PipeSignal release;
  Process unstarted({.name = "unstarted"}, [] {});
  auto running = Process::spawn({.name = "running", .daemon = true}, [&release] {
    if (!release.wait(60s)) ::_exit(4);
  });
  auto exited = Process::spawn({.name = "exited"}, [] { ::_exit(3); });
  exited.join();
  Process source({.name = "moved"}, [] {});
  Process target = std::move(source);
  const std::string running_pid = std::to_string(running.pid()), exited_pid = std::to_string(exited.pid());
  const auto min = std::chrono::nanoseconds::min();
  using B = std::function<bool()>;
  std::vector<Row> rows = {
      throws<InvalidArgument>("join() before start()", [&] { unstarted.join(); },
                              {"", "process 'unstarted'", "join() before start()"}),
      throws<InvalidArgument>("join_for(0) before start()", [&] { unstarted.join_for(0s); },
                              {"", "process 'unstarted'", "join() before start()"}),
      throws<InvalidArgument>("join_for(-1 s) before start()", [&] { unstarted.join_for(-1s); },
                              {"", "process 'unstarted'", "join() before start()"}),
      throws<InvalidArgument>("terminate() before start()", [&] { unstarted.terminate(); },
                              {"", "process 'unstarted'", "terminate() before start()"}),
      throws<InvalidArgument>("kill() before start()", [&] { unstarted.kill(); },
                              {"", "process 'unstarted'", "kill() before start()"}),
      returns_true("exitcode() before start() is nullopt, is_alive() false, pid() 0",
                   [&] { return !unstarted.exitcode() && !unstarted.is_alive() && unstarted.pid() == 0; }),
      throws<InvalidArgument>("start() of a running process", [&] { running.start(); },
                              {"", "process 'running'", "start() called twice: it was started already (pid " + running_pid + ")"}),
      throws<InvalidArgument>("start() of a process already joined", [&] { exited.start(); },
                              {"", "process 'exited'", "start() called twice: it was started already (pid " + exited_pid + ")"}),
      returns_true("exitcode() while it runs is nullopt", [&] { return !running.exitcode().has_value(); }),
      returns_true("join_for(0) while it runs is false", bounded(B([&] { return !running.join_for(0s); }))),
      returns_true("join_for(-1 s) while it runs is false", bounded(B([&] { return !running.join_for(-1s); }))),
      returns_true("join_for(duration::min()) while it runs is false", bounded(B([&] { return !running.join_for(min); }))),
      returns_true("join_for(0) of a process already joined is true", bounded(B([&] { return exited.join_for(0s); }))),
      returns_true("join_for(-1 s) of a process already joined is true", bounded(B([&] { return exited.join_for(-1s); }))),
      returns_true("terminate() of a process already joined does nothing", [&] {
        exited.terminate();
        return exited.exitcode() == 3;
      }),
      returns_true("kill() of a process already joined does nothing", [&] {
        exited.kill();
        return exited.exitcode() == 3;
      }),
      throws<InvalidArgument>("start() of a moved-from Process", [&] { source.start(); },
                              {"", "process", "start() on a moved-from Process"}),
      throws<InvalidArgument>("join() of a moved-from Process", [&] { source.join(); },
                              {"", "process", "join() on a moved-from Process"}),
      throws<InvalidArgument>("join_for(0) of a moved-from Process", [&] { source.join_for(0s); },
                              {"", "process", "join() on a moved-from Process"}),
      throws<InvalidArgument>("terminate() of a moved-from Process", [&] { source.terminate(); },
                              {"", "process", "terminate() on a moved-from Process"}),
      throws<InvalidArgument>("kill() of a moved-from Process", [&] { source.kill(); },
                              {"", "process", "kill() on a moved-from Process"}),
      returns_true("a moved-from Process is not alive, has no exit code, pid 0 and no name", [&] {
        return !source.is_alive() && !source.exitcode() && source.pid() == 0 && source.name().empty() &&
               !source.daemon();
      }),
  };
  run(rows, [&] {
    CHECK(running.is_alive());
    CHECK_FALSE(running.exitcode().has_value());
    CHECK(exited.exitcode() == 3);
    CHECK_FALSE(exited.is_alive());
    CHECK(unstarted.pid() == 0);
    CHECK(target.name() == "moved");
    CHECK(target.pid() == 0);
  });
  release.notify();
  CHECK(running.join_for(30s));
  CHECK(running.exitcode() == 0);
  // The Process a move left unstarted still runs when started.
  wait_single_threaded();
  target.start();
  target.join();
  CHECK(target.exitcode() == 0);
}

TEST_CASE("Vector insert, erase and pop refuse bad indices and a full arena, keeping every element") {
  Fixture f;
  const std::string s = f.name.str();
  auto& v = f.vector;  // {10, 20, 30}
  SegmentName other_name("vectors");
  auto other = Segment::create(other_name, 1 << 20);
  auto empty = other.create_vector<I64>("empty", 4096);
  auto full = other.create_vector<I64>("full", 1024);
  auto full_text = other.create_vector<std::string>("full_text", 1024);
  for (I64 i = 0;; ++i) {
    try {
      full.push_back(i);
    } catch (const SegmentFull&) {
      break;
    }
  }
  for (int i = 0;; ++i) {
    try {
      full_text.push_back(std::string(40, static_cast<char>('a' + i % 26)));
    } catch (const SegmentFull&) {
      break;
    }
  }
  const auto full_items = full.snapshot();
  const auto full_text_items = full_text.snapshot();
  const std::size_t full_free = full.free_bytes(), full_text_free = full_text.free_bytes();
  REQUIRE(full_items.size() > 4);
  REQUIRE(full_text_items.size() > 2);
  f.files = shm_files(my_shm_prefix());
  const std::string o = other_name.str();
  const Says vector_4{s, "vector 'vector'", "index 4 out of range (size 3)"};
  const Says vector_3{s, "vector 'vector'", "index 3 out of range (size 3)"};
  const Says vector_max{s, "vector 'vector'", "index 18446744073709551615 out of range (size 3)"};
  const Says empty_0{o, "vector 'empty'", "index 0 out of range (size 0)"};
  // A guard call whose error is caught inside the guard, then rethrown outside it.
  auto in_guard = [](Vector<I64>& vector, std::function<void(Vector<I64>::Guard&)> call) {
    return [&vector, call] {
      std::exception_ptr error;
      {
        auto guard = vector.lock();
        try {
          call(guard);
        } catch (...) {
          error = std::current_exception();
        }
      }
      std::rethrow_exception(error);
    };
  };
  std::vector<Row> rows = {
      throws<IndexOutOfRange>("Vector::insert one past the end", [&] { v.insert(4, 1); }, vector_4),
      throws<IndexOutOfRange>("Vector::insert at SIZE_MAX", [&] { v.insert(SIZE_MAX, 1); }, vector_max),
      throws<IndexOutOfRange>("Vector::erase at its size", [&] { v.erase(3); }, vector_3),
      throws<IndexOutOfRange>("Vector::erase at SIZE_MAX", [&] { v.erase(SIZE_MAX); }, vector_max),
      throws<IndexOutOfRange>("Vector::pop at its size", [&] { v.pop(3); }, vector_3),
      throws<IndexOutOfRange>("Vector::pop at SIZE_MAX", [&] { v.pop(SIZE_MAX); }, vector_max),
      throws<IndexOutOfRange>("Vector::Guard::insert one past the end (caught inside the guard)",
                              in_guard(v, [](auto& g) { g.insert(4, 1); }), vector_4),
      throws<IndexOutOfRange>("Vector::Guard::erase at its size (caught inside the guard)",
                              in_guard(v, [](auto& g) { g.erase(3); }), vector_3),
      throws<IndexOutOfRange>("Vector::Guard::pop at its size (caught inside the guard)",
                              in_guard(v, [](auto& g) { (void)g.pop(3); }), vector_3),
      throws<IndexOutOfRange>("Vector::pop(0) on an empty vector", [&] { empty.pop(0); }, empty_0),
      throws<IndexOutOfRange>("Vector::erase(0) on an empty vector", [&] { empty.erase(0); }, empty_0),
      throws<IndexOutOfRange>("Vector::insert(1) into an empty vector",
                              [&] { empty.insert(1, 1); }, {o, "vector 'empty'", "index 1 out of range (size 0)"}),
      throws<IndexOutOfRange>("Vector::Guard::pop(0) on an empty vector (caught inside the guard)",
                              in_guard(empty, [](auto& g) { (void)g.pop(0); }), empty_0),
      returns_true("Vector::pop_back on an empty vector is nullopt", [&] { return !empty.pop_back().has_value(); }),
      throws<SegmentFull>("Vector::insert at the front of a full vector", [&] { full.insert(0, -1); },
                          {o, "vector 'full'", "its arena is full ("}),
      throws<SegmentFull>("Vector::insert in the middle of a full vector", [&] { full.insert(2, -1); },
                          {o, "vector 'full'", "; nothing was changed"}),
      throws<SegmentFull>("Vector::insert at the end of a full vector", [&] { full.insert(full_items.size(), -1); },
                          {o, "vector 'full'", "; nothing was changed"}),
      throws<IndexOutOfRange>("Vector::insert past the end of a full vector (the index is checked first)",
                              [&] { full.insert(full_items.size() + 1, -1); },
                              {o, "vector 'full'",
                               fmt::format("index {} out of range (size {})", full_items.size() + 1, full_items.size())}),
      throws<SegmentFull>("Vector::Guard::insert into a full vector (caught inside the guard)",
                          in_guard(full, [](auto& g) { g.insert(1, -1); }), {o, "vector 'full'", "; nothing was changed"}),
      throws<SegmentFull>("Vector<string>::insert of a string at the front of a full vector",
                          [&] { full_text.insert(0, std::string(40, 'z')); }, {o, "vector 'full_text'", "; nothing was changed"}),
      throws<SegmentFull>("Vector<string>::insert of a 2000-byte string, larger than the arena",
                          [&] { full_text.insert(1, std::string(2000, 'z')); }, {o, "vector 'full_text'", "; nothing was changed"}),
      throws<IndexOutOfRange>("Vector<string>::pop past the end of a full vector",
                              [&] { full_text.pop(full_text_items.size()); },
                              {o, "vector 'full_text'",
                               fmt::format("index {} out of range (size {})", full_text_items.size(), full_text_items.size())}),
  };
  run(rows, [&] {
    f.verify();
    CHECK(empty.size() == 0);
    CHECK(full.snapshot() == full_items);
    CHECK(full_text.snapshot() == full_text_items);
    CHECK(full.free_bytes() == full_free);  // a refused insert gave back what it took
    CHECK(full_text.free_bytes() == full_text_free);
    CHECK_FALSE(empty.poisoned());
    CHECK_FALSE(full.poisoned());
    CHECK_FALSE(full_text.poisoned());
  });
  // The refused calls left them usable: room made by a pop takes an insert.
  CHECK(full.pop(0) == full_items[0]);
  full.insert(0, full_items[0]);
  CHECK(full.snapshot() == full_items);
}

TEST_CASE("streams on a closed pool, empty streams, outcomes() after get() and zero or negative get timeouts give the documented result") {
  wait_single_threaded();
  SegmentName gate_name("gate"), pool_name("streams");
  auto gate_segment = Segment::create(gate_name, 65536);
  auto gate = gate_segment.create_event("gate");  // the slow tasks wait for it
  const std::string p = pool_name.str();
  const std::string generated = "procshare-pool-" + std::to_string(::getpid()) + "-";
  {
    // Three workers: one for the slow task, one for the slow job, one for the rest.
    Pool pool({.workers = 3, .name = p, .arena_bytes = 1 << 16});
    Pool closed({.workers = 1, .arena_bytes = 1 << 16});
    const std::string closed_segment = closed.control_segment();
    closed.close();
    Pool terminated({.workers = 1, .arena_bytes = 1 << 16});
    const std::string terminated_segment = terminated.control_segment();
    terminated.terminate();
    const auto twice = [](const I64& x) { return x * 2; };
    const auto index_twice = [](std::uint64_t x) { return x * 2; };
    const auto wait_gate = [](Event e) {
      e.wait_for(60s);
      return I64{7};
    };
    const std::vector<I64> items{1, 2, 3};
    const std::vector<I64> none;
    auto slow = pool.submit(wait_gate, gate);
    auto slow_job = pool.map_async(std::vector<I64>{1}, [](const I64& x, Event e) {
      e.wait_for(60s);
      return x;
    }, gate);
    auto done_zero = pool.submit(twice, I64{5});
    auto done_negative = pool.submit(twice, I64{6});
    auto done_min = pool.submit(twice, I64{8});
    auto done_job = pool.map_async(items, twice);
    auto done_job_negative = pool.map_async(items, twice);
    done_zero.wait();
    done_negative.wait();
    done_min.wait();
    REQUIRE(done_job.wait_for(30s));
    REQUIRE(done_job_negative.wait_for(30s));
    const auto files = shm_files(my_shm_prefix());
    const auto pool_files = shm_files(generated);
    // How many outcomes a stream yields, and whether it ended stopped (it must not).
    auto count = [](auto&& stream) -> std::size_t {
      std::size_t n = 0;
      for (const auto& o : stream) {
        (void)o;
        ++n;
      }
      return stream.stopped() ? SIZE_MAX : n;
    };
    using B = std::function<bool()>;
    const auto min = std::chrono::nanoseconds::min();
    const std::string closed_text = "the pool is closed", terminated_text = "the pool was terminated";
    const std::string running_text = "has not ended after 0 ms; it goes on running";
    std::vector<Row> rows = {
        throws<PoolClosed>("imap after close()", [&] { closed.imap(items, twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("imap_unordered after close()", [&] { closed.imap_unordered(items, twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("imap over a Range after close()", [&] { closed.imap(Range{0, 10}, index_twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("imap_unordered over a Range after close()",
                           [&] { closed.imap_unordered(Range{0, 10}, index_twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("imap of no items after close()", [&] { closed.imap(none, twice); },
                           {closed_segment, "pool", closed_text}),
        throws<PoolClosed>("imap after terminate()", [&] { terminated.imap(items, twice); },
                           {terminated_segment, "pool", terminated_text}),
        throws<PoolClosed>("imap_unordered over a Range after terminate()",
                           [&] { terminated.imap_unordered(Range{0, 10}, index_twice); },
                           {terminated_segment, "pool", terminated_text}),
        returns_true("imap of no items ends at once", bounded(B([&] { return count(pool.imap(none, twice)) == 0; }))),
        returns_true("imap_unordered of an empty span ends at once",
                     bounded(B([&] { return count(pool.imap_unordered(std::span<const I64>(), twice)) == 0; }))),
        returns_true("imap over Range{0, 0} ends at once",
                     bounded(B([&] { return count(pool.imap(Range{0, 0}, index_twice)) == 0; }))),
        returns_true("imap_unordered over Range{5, 5} ends at once",
                     bounded(B([&] { return count(pool.imap_unordered(Range{5, 5}, index_twice)) == 0; }))),
        returns_true("imap over Range{10, 3} (end before first) ends at once",
                     bounded(B([&] { return count(pool.imap(Range{10, 3}, index_twice)) == 0; }))),
        returns_true("next() of an empty stream is nullopt, again and again", bounded(B([&] {
                       auto stream = pool.imap_unordered(none, twice);
                       return !stream.next() && !stream.next() && !stream.stopped();
                     }))),
        throws<Timeout>("Future::get(0) while the task runs", bounded([&] { slow.get(0s); }),
                        {p, "pool", running_text}),
        throws<Timeout>("Future::get(-1 s) while the task runs", bounded([&] { slow.get(-1s); }),
                        {p, "pool", "it goes on running"}),
        throws<Timeout>("Future::get(duration::min()) while the task runs", bounded([&] { slow.get(min); }),
                        {p, "pool", "it goes on running"}),
        throws<Timeout>("Job::get(0) while the job runs", bounded([&] { slow_job.get(0s); }),
                        {p, "pool", "(map, 1 items) " + running_text}),
        throws<Timeout>("Job::get(-1 s) while the job runs", bounded([&] { slow_job.get(-1s); }),
                        {p, "pool", "it goes on running"}),
        returns_true("Future::get(0) of an ended task is its value",
                     bounded(B([&] { return done_zero.get(0s) == 10; }))),
        returns_true("Future::get(-1 s) of an ended task is its value",
                     bounded(B([&] { return done_negative.get(-1s) == 12; }))),
        returns_true("Future::get(duration::min()) of an ended task is its value",
                     bounded(B([&] { return done_min.get(min) == 16; }))),
        returns_true("Job::get(0) of an ended job is its results",
                     bounded(B([&] { return done_job.get(0s) == std::vector<I64>{2, 4, 6}; }))),
        returns_true("Job::get(-1 s) of an ended job is its results",
                     bounded(B([&] { return done_job_negative.get(-1s) == std::vector<I64>{2, 4, 6}; }))),
        throws<InvalidArgument>("Job::outcomes() after get() returned the results", bounded([&] { done_job.outcomes(); }),
                                {p, "pool", "outcomes() after get() returned the results (it moved them out)"}),
        throws<InvalidArgument>("Job::get() after get() returned the results", bounded([&] { done_job.get(); }),
                                {p, "pool", "get() after get() returned the results (it moved them out): keep "
                                            "the vector the first get() returned"}),
    };
    run(rows, [&] {
      CHECK_FALSE(slow.ready());  // every refused or timed-out call left the slow ones running
      CHECK_FALSE(slow_job.wait_for(0s));
      CHECK(pool.map(items, twice) == std::vector<I64>{2, 4, 6});
      std::vector<std::uint64_t> seen;
      for (const auto& o : pool.imap(Range{0, 4}, index_twice)) seen.push_back(o.value());
      CHECK(seen == std::vector<std::uint64_t>{0, 2, 4, 6});
      CHECK(shm_files(my_shm_prefix()) == files);
      CHECK(shm_files(generated) == pool_files);
    });
    gate.set();
    CHECK(slow.get(30s) == 7);
    CHECK(slow_job.get(30s) == std::vector<I64>{1});
  }
  CHECK(shm_files(generated).empty());
  CHECK_FALSE(procshare::test::shm_exists(p));
}

// A moved-from Stream says so (InvalidArgument) from every call but its destructor; it
// used to dereference its null state (SIGSEGV). The iteration runs in a forked child,
// so that a crash could not take the suite with it.
TEST_CASE("iterating a moved-from Stream is an error naming it, not a crash") {
  wait_single_threaded();
  Pool pool({.workers = 1, .arena_bytes = 1 << 16});
  const std::vector<I64> items{1, 2, 3};
  auto source = pool.imap(items, [](const I64& x) { return x; });
  auto target = std::move(source);
  const pid_t child = run_child([&] {
    ::signal(SIGSEGV, SIG_DFL);  // (not doctest's handler: the child reports by its status)
    try {
      for (const auto& o : source) (void)o;
    } catch (const InvalidArgument& e) {
      ::_exit(std::string_view(e.what()).find("moved") != std::string_view::npos ? 0 : 4);
    }
    ::_exit(5);  // iterated without an error
  });
  const auto status = wait_child(child, 30s);
  INFO("child exit code ", status.code, ", signal ", status.signal);
  CHECK(status.ok());
  std::size_t seen = 0;
  for (const auto& o : target) seen += o.ok();
  CHECK(seen == 3);
}

// Future::get(timeout) and Job::get(timeout) report the wait they made: 0 ms for every
// timeout <= 0 (they used to print the negative timeout, and hours::min() overflowed
// in the conversion to nanoseconds).
TEST_CASE("get() with a negative timeout says it waited 0 ms") {
  wait_single_threaded();
  SegmentName gate_name("gate");
  auto gate_segment = Segment::create(gate_name, 65536);
  auto gate = gate_segment.create_event("gate");
  Pool pool({.workers = 2, .arena_bytes = 1 << 16});
  auto slow = pool.submit([](Event e) {
    e.wait_for(60s);
    return I64{7};
  }, gate);
  auto slow_job = pool.map_async(std::vector<I64>{1}, [](const I64& x, Event e) {
    e.wait_for(60s);
    return x;
  }, gate);
  const auto says_zero = doctest::Contains("has not ended after 0 ms; it goes on running");
  CHECK_THROWS_WITH_AS(slow.get(-1s), says_zero, Timeout);
  CHECK_THROWS_WITH_AS(slow.get(std::chrono::nanoseconds::min()), says_zero, Timeout);
  CHECK_THROWS_WITH_AS(slow.get(std::chrono::hours::min()), says_zero, Timeout);
  CHECK_THROWS_WITH_AS(slow_job.get(-1s), says_zero, Timeout);
  CHECK_THROWS_WITH_AS(slow_job.get(std::chrono::hours::min()), says_zero, Timeout);
  gate.set();
  CHECK(slow.get() == 7);
  CHECK(slow_job.get() == std::vector<I64>{1});
}

// A default-constructed Connection (never an end of a Pipe) says it is empty; it used to
// name a pipe '' and blame close().
TEST_CASE("a default-constructed Connection's error says it is empty") {
  Connection none;
  std::string message;
  try {
    none.send(I64{1});
  } catch (const PipeClosed& e) {
    message = e.what();
  }
  INFO("message: ", message);
  CHECK(message.find("pipe ''") == std::string::npos);
  CHECK(message.find("default-constructed") != std::string::npos);
}

}  // TEST_SUITE
