// Segment::map_text for maps keyed by int64 and uint64 (see detail/text_map.hpp).
#include "detail/text_map.hpp"

namespace procshare {

template std::string Segment::map_text<std::int64_t>(std::string_view, std::string_view, const std::string&,
                                                     std::size_t, std::chrono::steady_clock::time_point);
template std::string Segment::map_text<std::uint64_t>(std::string_view, std::string_view, const std::string&,
                                                      std::size_t, std::chrono::steady_clock::time_point);

}  // namespace procshare
