#pragma once
// Normalizes each provider's *native* usage object into one token breakdown. The input is the generic
// msgpack value the wire carries (Python dicts and JSON files are converted to it at the edge).

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>

#include <msgpack.hpp>

#include "turnout/config.hpp"
#include "turnout/money.hpp"
#include "turnout/result.hpp"

namespace turnout {

/// The most tokens of one kind one call may have (2^31; the largest context windows are ~2^23): a
/// larger count is not a real request and is refused (usage_invalid, naming the field and this bound).
/// It also keeps every price product of one request inside 64 bits.
inline constexpr std::int64_t kMaxTokensPerCall = std::int64_t{1} << 31;
/// kMaxTokensPerCall as messages and docs write it.
inline constexpr std::string_view kMaxTokensPerCallText = "2^31";

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
  /// The provider says it billed this call at its batch prices (Anthropic `service_tier: "batch"`).
  bool batch_tier = false;

  /// Every input token, cached or not (the token kinds whose part is input).
  [[nodiscard]] constexpr std::int64_t input_tokens() const noexcept;
  friend bool operator==(const Usage&, const Usage&) = default;
};

/// Where a token kind sits in a request: a share of the input, of the output, or informative only.
enum class TokenPart : std::uint8_t { input, output, informative };

/// One token kind of Usage. kTokenKinds lists them once; the ledger sums, the stats reply, the Python
/// dicts, /metrics and pricing all iterate it (a new kind is one line there, plus its member above).
struct TokenKind {
  std::string_view column;       ///< the member's name: wire key, ledger column, Python dict key
  std::int64_t Usage::*tokens;   ///< the member itself
  TokenPart part;                ///< input kinds sum to input_tokens()
  TokenPrice PriceRates::*rate;  ///< its price per token; nullptr: not billed on its own
  std::string_view price;        ///< the price's config name (`<price>_per_mtok`), for errors

  /// The metric label: the column without its "_tokens" suffix ("cache_read").
  [[nodiscard]] constexpr std::string_view label() const noexcept {
    return column.substr(0, column.size() - kSuffix.size());
  }
  static constexpr std::string_view kSuffix = "_tokens";
};

inline constexpr std::array kTokenKinds = {
    TokenKind{"uncached_input_tokens", &Usage::uncached_input_tokens, TokenPart::input, &PriceRates::input, "input"},
    TokenKind{"cache_read_tokens", &Usage::cache_read_tokens, TokenPart::input, &PriceRates::cache_read, "cache_read"},
    TokenKind{"cache_write_5m_tokens", &Usage::cache_write_5m_tokens, TokenPart::input, &PriceRates::cache_write_5m,
              "cache_write_5m"},
    TokenKind{"cache_write_1h_tokens", &Usage::cache_write_1h_tokens, TokenPart::input, &PriceRates::cache_write_1h,
              "cache_write_1h"},
    TokenKind{"output_tokens", &Usage::output_tokens, TokenPart::output, &PriceRates::output, "output"},
    // Reasoning tokens are a part of output_tokens (billed as output): counted, never priced again.
    TokenKind{"reasoning_tokens", &Usage::reasoning_tokens, TokenPart::informative, nullptr, ""},
};

constexpr std::int64_t Usage::input_tokens() const noexcept {
  std::int64_t n = 0;
  for (const TokenKind& k : kTokenKinds) {
    if (k.part == TokenPart::input) n += this->*k.tokens;
  }
  return n;
}

/// Adds the token counts of `src` to `dst`, kind by kind (a ledger's sums; reported_cost untouched).
/// Saturates at the int64 maximum, as Money does.
constexpr void add_tokens(Usage& dst, const Usage& src) noexcept {
  for (const TokenKind& k : kTokenKinds) {
    if (__builtin_add_overflow(dst.*k.tokens, src.*k.tokens, &(dst.*k.tokens))) {
      dst.*k.tokens =
          src.*k.tokens > 0 ? std::numeric_limits<std::int64_t>::max() : std::numeric_limits<std::int64_t>::min();
    }
  }
}

/// Reads a provider's usage: the bare usage object, a whole response that contains it (`usage`,
/// `usageMetadata`), or an array of streaming events/chunks (merged as that provider's stream does).
/// Missing, negative, wrongly typed or inconsistent fields are errors naming the field (usage_invalid).
[[nodiscard]] Result<Usage> normalize_usage(Provider provider, const msgpack::object& native);

}  // namespace turnout
