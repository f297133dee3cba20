// Segment::map_text for maps keyed by int32, uint32 and string (see detail/text_map.hpp).
#include "detail/text_map.hpp"

namespace procshare {

template std::string Segment::map_text<std::int32_t>(std::string_view, std::string_view, const std::string&,
                                                     std::size_t, std::chrono::steady_clock::time_point);
template std::string Segment::map_text<std::uint32_t>(std::string_view, std::string_view, const std::string&,
                                                      std::size_t, std::chrono::steady_clock::time_point);
template std::string Segment::map_text<std::string>(std::string_view, std::string_view, const std::string&,
                                                    std::size_t, std::chrono::steady_clock::time_point);

}  // namespace procshare
