#pragma once
// Normalizes each provider's *native* usage object into one token breakdown. The input is the generic
// msgpack value the wire carries (Python dicts and JSON files are converted to it at the edge).

#include <cstdint>
#include <optional>

#include <msgpack.hpp>

#include "turnout/config.hpp"
#include "turnout/money.hpp"
#include "turnout/result.hpp"

namespace turnout {

/// Billable tokens of one request, split by how each provider prices them. The parts never overlap:
/// uncached + cache read + cache writes = every input token; reasoning is a part of output.
struct Usage {
  std::int64_t uncached_input_tokens = 0;
  std::int64_t cache_read_tokens = 0;
  std::int64_t cache_write_5m_tokens = 0;
  std::int64_t cache_write_1h_tokens = 0;
  std::int64_t output_tokens = 0;      ///< includes reasoning tokens (billed as output)
  std::int64_t reasoning_tokens = 0;   ///< informative
  std::optional<Money> reported_cost;  ///< a cost the provider itself reported (OpenRouter `cost`)

  [[nodiscard]] std::int64_t input_tokens() const noexcept {
    return uncached_input_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens;
  }
  friend bool operator==(const Usage&, const Usage&) = default;
};

/// Reads a provider's usage: the bare usage object, a whole response that contains it (`usage`,
/// `usageMetadata`), or an array of streaming events/chunks (merged as that provider's stream does).
/// Missing, negative, wrongly typed or inconsistent fields are errors naming the field (usage_invalid).
[[nodiscard]] Result<Usage> normalize_usage(Provider provider, const msgpack::object& native);

}  // namespace turnout
