// Mutex and RecursiveMutex in one process: the Lockable contract and its errors.
#include "support.hpp"

#include <doctest/doctest.h>

#include <mutex>
#include <thread>

using namespace procshare;
using procshare::test::SegmentName;
using namespace std::chrono_literals;

TEST_SUITE("mutex") {

TEST_CASE("a Mutex works with std::scoped_lock and std::unique_lock") {
  SegmentName name("lockable");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  {
    std::scoped_lock held(m);
    CHECK_FALSE(m.try_lock());  // held, by this thread: false, as Python's acquire(False)
  }
  std::unique_lock held(m, std::defer_lock);
  CHECK(held.try_lock_for(10ms));
  held.unlock();
  CHECK(m.try_lock());
  m.unlock();
}

TEST_CASE("relocking a Mutex this thread holds is InvalidArgument, not a deadlock") {
  SegmentName name("relock");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  m.lock();
  CHECK_THROWS_WITH_AS(m.lock(),
                       ("segment '" + name.str() +
                        "': mutex 'm': lock: the calling thread already holds the lock").c_str(),
                       InvalidArgument);
  m.unlock();
}

TEST_CASE("try_lock and try_lock_for of a Mutex this thread holds return false at once") {
  SegmentName name("tryheld");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  m.lock();
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(m.try_lock());
  CHECK_FALSE(m.try_lock_for(10s));
  CHECK_FALSE(m.try_lock_until(std::chrono::steady_clock::now() + 10s));
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // none of them waited
  m.unlock();
  CHECK(m.try_lock());
  m.unlock();
}

TEST_CASE("unlock of a Mutex another thread holds is NotOwner naming this process as the holder") {
  SegmentName name("notowner-thread");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  m.lock();
  std::thread other([&] {
    CHECK_THROWS_WITH_AS(m.unlock(),
                         fmt::format("segment '{}': mutex 'm': unlock: the calling thread does not "
                                     "hold the lock (another thread of this process ({}) holds it)",
                                     name.str(), ::getpid()).c_str(),
                         NotOwner);
  });
  other.join();
  m.unlock();
}

TEST_CASE("unlock by a thread that does not hold the Mutex is NotOwner") {
  SegmentName name("notowner");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  CHECK_THROWS_WITH_AS(m.unlock(),
                       ("segment '" + name.str() +
                        "': mutex 'm': unlock: the calling thread does not hold the lock (it is "
                        "not locked, or its holder is not known)").c_str(),
                       NotOwner);
  m.lock();
  std::thread other([&] { CHECK_THROWS_AS(m.unlock(), NotOwner); });
  other.join();
  m.unlock();
}

TEST_CASE("try_lock_for returns false no earlier than the deadline while another thread holds it") {
  SegmentName name("timed");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  m.lock();
  std::thread other([m]() mutable {
    const auto start = std::chrono::steady_clock::now();
    const bool taken = m.try_lock_for(50ms);
    const auto waited = std::chrono::steady_clock::now() - start;
    CHECK_FALSE(taken);
    CHECK(waited >= 50ms);
    CHECK(waited < 1s);
    CHECK_FALSE(m.try_lock());
  });
  other.join();
  m.unlock();
}

TEST_CASE("a RecursiveMutex can be taken again by its holder and needs as many unlocks") {
  SegmentName name("recursive");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_recursive_mutex("r");
  m.lock();
  m.lock();
  CHECK(m.try_lock());
  m.unlock();
  m.unlock();
  std::thread other([m]() mutable { CHECK_FALSE(m.try_lock()); });
  other.join();
  m.unlock();
  std::thread again([m]() mutable {
    CHECK(m.try_lock());
    m.unlock();
  });
  again.join();
  CHECK_THROWS_AS(m.unlock(), NotOwner);
}

TEST_CASE("a thread that exits holding a Mutex counts as an owner death") {
  SegmentName name("threaddeath");
  auto segment = Segment::create(name, 64 * 1024);
  auto m = segment.create_mutex("m");
  std::thread holder([m]() mutable { m.lock(); });
  holder.join();
  CHECK(m.try_lock_for(1s));
  CHECK(m.owner_deaths() == 1);
  CHECK(m.last_dead_owner() == ::getpid());
  m.unlock();
}

TEST_CASE("a Mutex opened as a RecursiveMutex is TypeMismatch") {
  SegmentName name("kinds");
  auto segment = Segment::create(name, 64 * 1024);
  segment.create_mutex("m");
  CHECK_THROWS_WITH_AS(segment.open_recursive_mutex("m"),
                       doctest::Contains("created as mutex, not recursive_mutex"), TypeMismatch);
  CHECK_NOTHROW(segment.open_mutex("m"));
}

}  // TEST_SUITE
