// segment_report: what `procshare-ctl show` prints about a segment, as a library call, so
// that the controller, scripts and the fuzzer (tests/fuzz) all run the very same code.
//
// Reads only: every object's kind, type, value (Segment::value_text), poison and
// owner-death marks, and a pool's workers and jobs (inspect_pool). A value that cannot be
// read is shown as its reason in parentheses ("(... poisoned ...)", "(... Timeout ...)"),
// so one wedged or damaged object never hides the others.
// Bounded: every lock it takes is waited on for a limited time (a second per object by
//   default), so a lock held for ever, by a stuck process or in a forged file, is shown as
//   a Timeout, never a hang.
// Errors: CorruptSegment when the directory or a pool's tables do not hold together,
//   Timeout when the directory lock stays held, NotFound when the pool object is missing.
#pragma once

#include <procshare/segment.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace procshare {

// How segment_report writes: lines for people, or one JSON object for scripts.
enum class ReportFormat { text, json };

// The report `procshare-ctl show` prints for `segment` (ends with a newline).
PROCSHARE_API std::string segment_report(Segment& segment, ReportFormat format);

// `text` as a JSON string literal, quotes included.
PROCSHARE_API std::string json_quote(std::string_view text);

// A byte count for people: "512B", "4.0K", "1.5M", "2.0G".
PROCSHARE_API std::string human_bytes(std::uint64_t bytes);

}  // namespace procshare
