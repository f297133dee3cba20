// segment_report: procshare-ctl's `show`, as a library call (see report.hpp).
#include <procshare/report.hpp>

#include <procshare/pool.hpp>

#include <fmt/format.h>

#include <optional>

namespace procshare {
namespace {

// The pool in `segment`, if it holds one.
std::optional<PoolStatus> pool_of(Segment& segment, const std::vector<ObjectInfo>& objects) {
  for (const auto& info : objects)
    if (info.kind == ObjectKind::pool) return inspect_pool(segment);
  return std::nullopt;
}

// The object's value as text, or why it cannot be read (a poisoned container, say).
std::string value_or_reason(Segment& segment, const std::string& object) {
  try {
    return segment.value_text(object);
  } catch (const Error& e) {
    return fmt::format("({})", e.what());
  }
}

std::string json_report(Segment& segment, const std::vector<ObjectInfo>& objects,
                        const std::optional<PoolStatus>& pool) {
  std::string out = fmt::format(
      "{{\"segment\":{},\"size\":{},\"used\":{},\"reserved\":{},\"creator_pid\":{},\"objects\":[",
      json_quote(segment.name()), segment.size(), segment.used(), segment.reserved(), segment.creator_pid());
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const auto& o = objects[i];
    out += fmt::format("{}{{\"name\":{},\"kind\":{},\"type\":{},\"value\":{},\"poisoned\":{},"
                       "\"owner_deaths\":{},\"last_dead_owner\":{}}}",
                       i ? "," : "", json_quote(o.name), json_quote(to_string(o.kind)),
                       json_quote(o.description), json_quote(value_or_reason(segment, o.name)),
                       o.poisoned, o.owner_deaths, o.last_dead_owner);
  }
  out += "]";
  if (pool) {
    out += fmt::format(",\"pool\":{{\"state\":{},\"parent_pid\":{},\"supervisor_pid\":{},\"items_done\":{},"
                       "\"worker_deaths\":{},\"workers\":[",
                       json_quote(pool->state), pool->parent_pid, pool->supervisor_pid,
                       pool->items_done, pool->worker_deaths);
    for (std::size_t i = 0; i < pool->workers.size(); ++i) {
      const auto& w = pool->workers[i];
      out += fmt::format("{}{{\"pid\":{},\"state\":{},\"job\":{},\"current_item\":{},\"tasks_done\":{}}}",
                         i ? "," : "", w.pid, json_quote(w.state), w.job, w.current_item, w.tasks_done);
    }
    out += "],\"jobs\":[";
    for (std::size_t i = 0; i < pool->jobs.size(); ++i) {
      const auto& j = pool->jobs[i];
      out += fmt::format("{}{{\"id\":{},\"kind\":{},\"done\":{},\"failed\":{},\"skipped\":{},\"total\":{},\"stop_requested\":{}}}",
                         i ? "," : "", j.id, json_quote(j.kind), j.done, j.failed, j.skipped, j.total,
                         j.stop_requested);
    }
    out += "]}";
  }
  return out + "}\n";
}

std::string text_report(Segment& segment, const std::vector<ObjectInfo>& objects,
                        const std::optional<PoolStatus>& pool) {
  // Used (allocated to objects) and reserved (memory /dev/shm really holds) apart: a pool
  // takes most of its segment as one object but reserves it only as it is used.
  std::string out = fmt::format("segment '{}': {} used of {}, {} reserved in memory{}, created by pid {}\n",
                                segment.name(), human_bytes(segment.used()), human_bytes(segment.size()),
                                human_bytes(segment.reserved()),
                                segment.reserved() < segment.used() ? " (the rest as it is first used)" : "",
                                segment.creator_pid());
  for (const auto& o : objects) {
    std::string marks;
    if (o.poisoned) marks += "  POISONED";
    if (o.owner_deaths) marks += fmt::format("  owner deaths: {} (last pid {})", o.owner_deaths, o.last_dead_owner);
    out += fmt::format("  {:<24} {:<22} {}{}\n", o.name, o.description, value_or_reason(segment, o.name), marks);
  }
  if (pool) {
    out += fmt::format("pool: {}, parent pid {}, supervisor pid {}, {} items done, {} worker deaths\n",
                       pool->state, pool->parent_pid, pool->supervisor_pid, pool->items_done,
                       pool->worker_deaths);
    for (const auto& w : pool->workers)
      out += fmt::format("  worker pid {:<8} {:<8} job {:<4} item {:<10} tasks done {}\n", w.pid, w.state,
                         w.job, w.current_item, w.tasks_done);
    for (const auto& j : pool->jobs)
      out += fmt::format("  job {:<4} {:<10} {} done, {} failed, {} skipped of {}{}\n", j.id, j.kind, j.done,
                         j.failed, j.skipped, j.total, j.stop_requested ? "  STOP REQUESTED" : "");
  }
  return out;
}

}  // namespace

std::string segment_report(Segment& segment, ReportFormat format) {
  const auto objects = segment.objects();
  const auto pool = pool_of(segment, objects);
  return format == ReportFormat::json ? json_report(segment, objects, pool)
                                      : text_report(segment, objects, pool);
}

std::string json_quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += c;
    }
  }
  return out + "\"";
}

std::string human_bytes(std::uint64_t bytes) {
  if (bytes >= (1u << 30)) return fmt::format("{:.1f}G", bytes / double(1u << 30));
  if (bytes >= (1u << 20)) return fmt::format("{:.1f}M", bytes / double(1u << 20));
  if (bytes >= (1u << 10)) return fmt::format("{:.1f}K", bytes / double(1u << 10));
  return fmt::format("{}B", bytes);
}

}  // namespace procshare
