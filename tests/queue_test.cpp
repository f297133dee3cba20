// Queue<T>: FIFO order, timeouts, closing, strings, bad input, and exact totals with
// 4 producer and 4 consumer processes.
#include "support.hpp"

#include <doctest/doctest.h>

using namespace procshare;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using procshare::test::wait_until_sleeping;
using namespace std::chrono_literals;

TEST_SUITE("queue") {

TEST_CASE("a Queue returns items in the order they were pushed, up to its capacity") {
  SegmentName name("fifo");
  auto segment = Segment::create(name, 64 * 1024);
  auto q = segment.create_queue<int>("q", 3);
  CHECK(q.capacity() == 3);
  q.push(1);
  q.push(2);
  CHECK(q.try_push(3));
  CHECK_FALSE(q.try_push(4));
  CHECK(q.size() == 3);
  CHECK(q.pop() == 1);
  CHECK(q.try_pop() == 2);
  q.push(4);
  CHECK(q.pop_for(1s) == 3);
  CHECK(q.pop() == 4);
  CHECK_FALSE(q.try_pop().has_value());
  CHECK(segment.objects().at(0).description == "queue<int32, 3>");
}

TEST_CASE("pop_for and push_for give up no earlier than the deadline") {
  SegmentName name("qtime");
  auto segment = Segment::create(name, 64 * 1024);
  auto q = segment.create_queue<double>("q", 1);
  for (const auto spin : {50us, 0us}) {
    q.set_spin(spin);
    auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(q.pop_for(40ms).has_value());
    auto took = std::chrono::steady_clock::now() - start;
    CHECK(took >= 40ms);
    CHECK(took < 940ms);
    q.push(1.5);
    start = std::chrono::steady_clock::now();
    CHECK_FALSE(q.push_for(2.5, 40ms));
    took = std::chrono::steady_clock::now() - start;
    CHECK(took >= 40ms);
    CHECK(took < 940ms);
    CHECK(q.pop() == 1.5);
  }
}

TEST_CASE("after close, push throws and pop drains what is left, then throws QueueClosed") {
  SegmentName name("close");
  auto segment = Segment::create(name, 64 * 1024);
  auto q = segment.create_queue<int>("q", 4);
  q.push(7);
  q.push(8);
  q.close();
  CHECK(q.closed());
  CHECK_THROWS_WITH_AS(q.push(9),
                       ("segment '" + name.str() + "': queue 'q': push: the queue is closed").c_str(),
                       QueueClosed);
  CHECK(q.pop() == 7);
  CHECK(q.try_pop() == 8);
  CHECK_THROWS_WITH_AS(q.pop(),
                       ("segment '" + name.str() +
                        "': queue 'q': pop: the queue is closed and empty").c_str(),
                       QueueClosed);
  CHECK_THROWS_AS(q.try_pop(), QueueClosed);
}

TEST_CASE("close wakes processes sleeping in pop") {
  SegmentName name("closewake");
  auto segment = Segment::create(name, 64 * 1024);
  auto q = segment.create_queue<int>("q", 4);
  q.set_spin(0us);
  std::vector<pid_t> pids;
  for (int i = 0; i < 3; ++i)
    pids.push_back(run_child([q]() mutable {
      try {
        q.pop();
      } catch (const QueueClosed&) {
        ::_exit(0);
      }
      ::_exit(9);
    }));
  for (const pid_t pid : pids) REQUIRE(wait_until_sleeping(pid));
  q.close();
  for (const pid_t pid : pids) CHECK(wait_child(pid, 10s).ok());
}

TEST_CASE("a Queue<std::string> carries strings up to max_item_bytes and refuses longer ones") {
  SegmentName name("strings");
  auto segment = Segment::create(name, 64 * 1024);
  auto q = segment.create_queue<std::string>("q", 4, 8);
  q.push("");
  q.push("12345678");
  CHECK_THROWS_WITH_AS(q.push("123456789"),
                       ("segment '" + name.str() +
                        "': queue 'q': push of a 9-byte string: items hold at most 8 bytes").c_str(),
                       InvalidArgument);
  CHECK(q.size() == 2);
  auto opened = segment.open_queue<std::string>("q");
  CHECK(opened.pop() == "");
  CHECK(opened.pop() == "12345678");
  CHECK_THROWS_AS(segment.open_queue<int>("q"), TypeMismatch);
}

TEST_CASE("bad capacities and item sizes are InvalidArgument; another type is TypeMismatch") {
  SegmentName name("qargs");
  auto segment = Segment::create(name, 64 * 1024);
  CHECK_THROWS_WITH_AS(segment.create_queue<int>("q", 0),
                       ("segment '" + name.str() + "': queue 'q': capacity must be 1 to 2^31").c_str(),
                       InvalidArgument);
  CHECK_THROWS_AS(segment.create_queue<int>("q", static_cast<std::uint32_t>(-1)), InvalidArgument);
  CHECK_THROWS_AS(segment.create_queue<std::string>("q", 4, 0), InvalidArgument);
  CHECK_THROWS_AS(segment.create_queue<long>("q", 1u << 30), SegmentFull);
  CHECK(segment.objects().empty());
  segment.create_queue<long>("q", 4);
  CHECK_THROWS_WITH_AS(segment.open_queue<double>("q"),
                       doctest::Contains("created as queue<int64, 4>, not queue<float64, 4>"),
                       TypeMismatch);
  CHECK_THROWS_AS(segment.queue<long>("q", 5), TypeMismatch);
}

TEST_CASE("4 producers x 4 consumers x 50,000 items: every item once, each producer's in order") {
  SegmentName name("mpmc");
  auto segment = Segment::create(name, 1024 * 1024);
  auto q = segment.create_queue<std::int64_t>("q", 64);
  constexpr int producers = 4, consumers = 4, per_producer = 50000;
  auto sums = segment.create_array<std::int64_t>("sums", consumers, 0);
  auto counts = segment.create_array<std::int64_t>("counts", consumers, 0);
  auto order_errors = segment.create_atomic<int>("order_errors", 0);
  std::vector<pid_t> pids;
  for (int c = 0; c < consumers; ++c)
    pids.push_back(run_child([&, c] {
      std::int64_t last[producers];
      std::fill(std::begin(last), std::end(last), -1);
      std::int64_t sum = 0, count = 0;
      try {
        for (;;) {
          const std::int64_t item = q.pop();
          const auto producer = item / per_producer, sequence = item % per_producer;
          if (sequence <= last[producer]) order_errors += 1;
          last[producer] = sequence;
          sum += item;
          ++count;
        }
      } catch (const QueueClosed&) {
      }
      sums.store(c, sum);
      counts.store(c, count);
    }));
  std::vector<pid_t> producer_pids;
  for (int p = 0; p < producers; ++p)
    producer_pids.push_back(run_child([&, p] {
      for (int i = 0; i < per_producer; ++i) q.push(std::int64_t{p} * per_producer + i);
    }));
  for (const pid_t pid : producer_pids) CHECK(wait_child(pid, 120s).ok());
  q.close();
  for (const pid_t pid : pids) CHECK(wait_child(pid, 120s).ok());
  const std::int64_t n = std::int64_t{producers} * per_producer;
  std::int64_t sum = 0, count = 0;
  for (int c = 0; c < consumers; ++c) {
    sum += sums.load(c);
    count += counts.load(c);
  }
  CHECK(count == n);
  CHECK(sum == n * (n - 1) / 2);
  CHECK(order_errors.load() == 0);
}

}  // TEST_SUITE

TEST_SUITE("queue faults") {

TEST_CASE("a consumer killed while it sleeps in pop leaves the queue working") {
  SegmentName name("qwaiter");
  auto segment = Segment::create(name, 64 * 1024);
  auto q = segment.create_queue<int>("q", 2);
  q.set_spin(0us);
  const pid_t victim = run_child([q]() mutable { q.pop(); });
  REQUIRE(wait_until_sleeping(victim));
  ::kill(victim, SIGKILL);
  CHECK(wait_child(victim).signal == SIGKILL);
  q.push(1);
  const pid_t consumer = run_child([q]() mutable {
    if (q.pop() != 1) ::_exit(3);
  });
  CHECK(wait_child(consumer, 10s).ok());
  q.push(2);
  q.push(3);
  CHECK(q.pop() == 2);
  CHECK(q.pop() == 3);
}

TEST_CASE("a producer killed inside push loses at most its own item, and the queue goes on") {
  SegmentName name("qpush");
  auto segment = Segment::create(name, 4 * 1024 * 1024);
  auto q = segment.create_queue<std::string>("q", 1000, 4096);
  for (int round = 0; round < 20; ++round) {
    CAPTURE(round);
    const pid_t producer = run_child([q]() mutable {
      const std::string big(4000, 'x');
      for (int i = 0; i < 1000000; ++i) q.push(big);  // killed somewhere in here
    });
    std::this_thread::sleep_for(std::chrono::microseconds(200 + 300 * round));
    ::kill(producer, SIGKILL);
    CHECK(wait_child(producer).signal == SIGKILL);
    // Every item that made it in is whole, and the queue takes and gives more.
    while (auto item = q.try_pop()) CHECK(*item == std::string(4000, 'x'));
    q.push("after");
    CHECK(q.pop() == "after");
    CHECK(q.size() == 0);
  }
}

}  // TEST_SUITE
