// Value<T>, Atomic<T>, Array<T> and Flag in one process: every operation's result, and
// every bad input's exact error.
#include "support.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <stdexcept>

using namespace procshare;
using procshare::test::SegmentName;

namespace {

struct Point {
  double x;
  double y;
};

template <class V, class T>
concept CanAdd = requires(V v, T t) { v += t; };

}  // namespace

template <> struct procshare::type_name<Point> {
  static constexpr std::string_view value = "point";
};

TEST_SUITE("value") {

TEST_CASE("Value load, store, exchange and the arithmetic operators return what std::atomic would") {
  SegmentName name("ops");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<std::int64_t>("v", 10);
  CHECK(v.load() == 10);
  v.store(20);
  CHECK(v.exchange(30) == 20);
  CHECK((v += 5) == 35);
  CHECK((v -= 3) == 32);
  CHECK(++v == 33);
  CHECK(v++ == 33);
  CHECK(--v == 33);
  CHECK(v-- == 33);
  CHECK(v.fetch_add(8) == 32);
  CHECK(v.fetch_sub(2) == 40);
  CHECK(v.load() == 38);
  CHECK(v.name() == "v");
}

TEST_CASE("Value::update stores f's result, and leaves the value alone when f throws") {
  SegmentName name("update");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<int>("v", 3);
  CHECK(v.update([](int x) { return x * 7; }) == 21);
  CHECK_THROWS_AS(v.update([](int) -> int { throw std::logic_error("no"); }), std::logic_error);
  CHECK(v.load() == 21);
  CHECK(v.owner_deaths() == 0);
  CHECK_FALSE(v.poisoned());
}

TEST_CASE("a Value guard gives the T under the lock and releases it on destruction") {
  SegmentName name("guard");
  auto segment = Segment::create(name, 64 * 1024);
  auto p = segment.create_value<Point>("p", Point{1, 2});
  {
    auto guard = p.lock();
    guard->x += 10;
    (*guard).y = 5;
  }
  CHECK(p.load().x == 11);
  CHECK(p.load().y == 5);
  auto moved = [&] {
    auto guard = p.lock();
    return guard;
  }();
  moved->x = 0;
  moved.unlock();
  CHECK(p.load().x == 0);
}

TEST_CASE("a user type is stored under its registered name") {
  SegmentName name("user");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_value<Point>("p", Point{3, 4});
  CHECK(segment.objects().at(0).description == "value<point>");
  CHECK(segment.open_value<Point>("p").load().y == 4);
  CHECK_THROWS_AS(segment.open_value<double>("p"), TypeMismatch);
}

TEST_CASE("Value<bool> and Value<double> work; bool has no arithmetic") {
  SegmentName name("types");
  auto segment = Segment::create(name, 64 * 1024);
  auto b = segment.create_value<bool>("b", false);
  b.store(true);
  CHECK(b.load());
  auto d = segment.create_value<double>("d", 0.5);
  CHECK((d += 0.25) == doctest::Approx(0.75));
  static_assert(!CanAdd<Value<bool>, bool>);
  static_assert(CanAdd<Value<int>, int>);
}

TEST_CASE("Atomic fetch operations and compare_exchange behave as std::atomic") {
  SegmentName name("atomic");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_atomic<std::uint32_t>("a", 5);
  CHECK(a.fetch_add(3) == 5);
  CHECK(a.fetch_sub(1) == 8);
  CHECK(a.fetch_or(0x10) == 7);
  CHECK(a.fetch_and(0x13) == 0x17);
  CHECK(a.fetch_xor(0x1) == 0x13);
  CHECK((a += 2) == 0x14);
  CHECK(++a == 0x15);
  std::uint32_t expected = 1;
  CHECK_FALSE(a.compare_exchange_strong(expected, 9));
  CHECK(expected == 0x15);
  CHECK(a.compare_exchange_strong(expected, 9));
  CHECK(a.exchange(4) == 9);
  CHECK(a.load() == 4);
}

TEST_CASE("Array load, store, update, fill and snapshot") {
  SegmentName name("array");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_array<int>("a", 5, 1);
  CHECK(a.size() == 5);
  CHECK(a.snapshot() == std::vector<int>{1, 1, 1, 1, 1});
  a.store(2, 7);
  CHECK(a.load(2) == 7);
  CHECK(a.update(2, [](int x) { return x * 2; }) == 14);
  {
    auto guard = a.lock();
    CHECK(guard.size() == 5);
    for (int& x : guard) x += 1;
  }
  CHECK(a.snapshot() == std::vector<int>{2, 2, 15, 2, 2});
  a.fill(9);
  CHECK(a.snapshot() == std::vector<int>{9, 9, 9, 9, 9});
}

TEST_CASE("an Array index past the end is IndexOutOfRange naming index, size, array and segment") {
  SegmentName name("jobs");
  auto segment = Segment::create(name, 64 * 1024);
  auto results = segment.create_array<double>("results", 8);
  const std::string text = "segment '" + name.str() + "': array 'results': index 12 out of range (size 8)";
  CHECK_THROWS_WITH_AS(results.load(12), text.c_str(), IndexOutOfRange);
  CHECK_THROWS_AS(results.store(8, 1.0), IndexOutOfRange);
  CHECK_THROWS_AS(results.update(99, [](double x) { return x; }), IndexOutOfRange);
  CHECK(results.snapshot() == std::vector<double>(8, 0.0));
}

TEST_CASE("an Array of length 0 is InvalidArgument") {
  SegmentName name("zero");
  auto segment = Segment::create(name, 64 * 1024);
  CHECK_THROWS_WITH_AS(segment.create_array<int>("a", 0),
                       ("segment '" + name.str() +
                        "': array 'a': length 0: an array needs at least one element").c_str(),
                       InvalidArgument);
  CHECK(segment.objects().empty());
}

TEST_CASE("an absurd Array length is SegmentFull, not an overflow") {
  SegmentName name("absurd");
  auto segment = Segment::create(name, 64 * 1024);
  CHECK_THROWS_AS(segment.create_array<double>("a", SIZE_MAX / 4), SegmentFull);
  CHECK(segment.objects().empty());
}

TEST_CASE("Flag set, clear and test_and_set") {
  SegmentName name("flag");
  auto segment = Segment::create(name, 64 * 1024);
  auto stop = segment.create_flag("stop");
  CHECK_FALSE(stop.is_set());
  CHECK_FALSE(stop.test_and_set());
  CHECK(stop.test_and_set());
  CHECK(stop.is_set());
  stop.clear();
  CHECK_FALSE(stop.is_set());
  CHECK(segment.create_flag("up", true).is_set());
}

TEST_CASE("handles are trivially copyable and copies reach the same object") {
  static_assert(std::is_trivially_copyable_v<Value<int>>);
  static_assert(std::is_trivially_copyable_v<Atomic<long>>);
  static_assert(std::is_trivially_copyable_v<Array<double>>);
  static_assert(std::is_trivially_copyable_v<Flag>);
  static_assert(std::is_trivially_copyable_v<Mutex>);
  SegmentName name("copy");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<int>("v", 1);
  Value<int> copy;
  std::memcpy(static_cast<void*>(&copy), &v, sizeof v);
  copy += 1;
  CHECK(v.load() == 2);
}

}  // TEST_SUITE

TEST_SUITE("value") {

TEST_CASE("an exception unwinding through a guard poisons the object; a normal exit does not") {
  SegmentName name("unwind");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_array<int>("a", 2, 0);
  try {
    auto guard = a.lock();
    guard[0] = 1;
    throw std::runtime_error("half way");
  } catch (const std::runtime_error&) {
  }
  CHECK(a.poisoned());
  CHECK(a.snapshot() == std::vector<int>{1, 0});
  a.clear_poison();
  try {
    throw std::runtime_error("outer");
  } catch (const std::runtime_error&) {
    auto guard = a.lock();  // made and ended inside a handler: no unwinding through it
    guard[1] = 1;
  }
  CHECK_FALSE(a.poisoned());
  CHECK(a.owner_deaths() == 0);
}

TEST_CASE("inside its own guard a Value's load, store, += and update work, as Python's re-entrant Value lock") {
  SegmentName name("reentrant");
  auto segment = Segment::create(name, 64 * 1024);
  auto counter = segment.create_value<long>("counter", 0);
  {
    auto guard = counter.lock();  // with counter.get_lock(): counter.value += 1
    counter.store(counter.load() + 1);
    counter += 1;
    counter.update([](long x) { return x + 1; });
    {
      auto inner = counter.lock();  // a nested guard
      *inner += 1;
    }
    CHECK(*guard == 4);
    *guard += 1;
  }
  CHECK(counter.load() == 5);
  CHECK_FALSE(counter.poisoned());
  // Every level was released: the lock is free for another holder.
  auto guard = counter.lock();
  CHECK(*guard == 5);
}

TEST_CASE("an exception through a Value guard poisons it only once the guard reached the value") {
  SegmentName name("guard-poison");
  auto segment = Segment::create(name, 64 * 1024);
  auto v = segment.create_value<long>("v", 1);
  try {
    auto guard = v.lock();
    v.store(2);  // a whole write through the value's own call
    throw std::runtime_error("before the guard reached the value");
  } catch (const std::runtime_error&) {
  }
  CHECK_FALSE(v.poisoned());
  CHECK(v.load() == 2);
  try {
    auto guard = v.lock();
    *guard = 3;  // perhaps half of a longer change
    throw std::runtime_error("after a write through the guard");
  } catch (const std::runtime_error&) {
  }
  CHECK(v.poisoned());
  CHECK_THROWS_WITH_AS(v.store(4),
                       ("segment '" + name.str() +
                        "': value 'v': poisoned: an exception unwound through a guard that was "
                        "writing it, so a write may be half done (owner deaths so far: 0); reads "
                        "still work; writes throw OwnerDied until clear_poison()").c_str(),
                       OwnerDied);
  v.clear_poison();
  CHECK(v.load() == 3);
}

TEST_CASE("an index error inside an Array guard throws IndexOutOfRange and poisons nothing") {
  SegmentName name("array-guard-index");
  auto segment = Segment::create(name, 64 * 1024);
  auto a = segment.create_array<int>("a", 4, 7);
  try {
    auto guard = a.lock();
    a.store(1, 8);    // the array's own calls work inside its guard
    a.store(99, 1);   // IndexOutOfRange, before anything is written
  } catch (const IndexOutOfRange&) {
  }
  CHECK_FALSE(a.poisoned());
  CHECK(a.snapshot() == std::vector<int>{7, 8, 7, 7});
}

}  // TEST_SUITE
