#include <procshare/error.hpp>

#include <fmt/format.h>

namespace procshare {
namespace {

std::string compose(const std::string& segment, const std::string& object,
                    std::string_view detail) {
  std::string text;
  if (!segment.empty()) text = fmt::format("segment '{}': ", segment);
  if (!object.empty()) text += fmt::format("{}: ", object);
  text += detail;
  return text;
}

}  // namespace

Error::Error(std::string segment, std::string object, std::string_view detail)
    : std::runtime_error(compose(segment, object, detail)),
      segment_(std::move(segment)),
      object_(std::move(object)) {}

}  // namespace procshare
