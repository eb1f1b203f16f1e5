#pragma once
// Money is exact: an integer count of picodollars (1e-12 USD). One token at any listed price is a whole
// number of picodollars (a price in USD per million tokens with up to 6 decimals), so no rounding ever
// happens between a provider's price page and the ledger.

#include <compare>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "turnout/result.hpp"

namespace turnout {

__extension__ using Int128 = __int128;  ///< 128-bit money sums (GCC/Clang)
__extension__ using UInt128 = unsigned __int128;

/// An amount of USD in picodollars. Per-request figures fit in 64 bits (up to ~9.2 million USD).
/// Sums and differences saturate at the 64-bit range instead of wrapping: a budget's figures fed absurd
/// costs stay at the top (still exhausted), never wrap to a negative that would admit again.
class Money {
 public:
  static constexpr std::int64_t kPerUsd = 1'000'000'000'000;  // picodollars per USD
  static constexpr std::int64_t kMaxPicos = std::numeric_limits<std::int64_t>::max();
  static constexpr std::int64_t kMinPicos = std::numeric_limits<std::int64_t>::min();

  constexpr Money() = default;
  static constexpr Money from_picos(std::int64_t picos) { return Money(picos); }

  [[nodiscard]] constexpr std::int64_t picos() const { return picos_; }
  constexpr Money& operator+=(Money other) { return *this = *this + other; }
  constexpr Money& operator-=(Money other) { return *this = *this - other; }
  friend constexpr Money operator+(Money a, Money b) {
    std::int64_t sum = 0;
    if (__builtin_add_overflow(a.picos_, b.picos_, &sum)) return Money(b.picos_ > 0 ? kMaxPicos : kMinPicos);
    return Money(sum);
  }
  friend constexpr Money operator-(Money a, Money b) {
    std::int64_t difference = 0;
    if (__builtin_sub_overflow(a.picos_, b.picos_, &difference)) {
      return Money(b.picos_ < 0 ? kMaxPicos : kMinPicos);
    }
    return Money(difference);
  }
  friend constexpr auto operator<=>(Money, Money) = default;  // NOLINT(modernize-use-nullptr): clang-tidy 14 bug

  /// Exact decimal text in USD, e.g. "0.000412", trailing zeros trimmed (at least one decimal).
  [[nodiscard]] std::string to_usd_string() const;

 private:
  constexpr explicit Money(std::int64_t picos) : picos_(picos) {}
  std::int64_t picos_ = 0;
};

/// A price for one token, in picodollars; built from "USD per million tokens" config values.
class TokenPrice {
 public:
  constexpr TokenPrice() = default;
  static constexpr TokenPrice from_picos_per_token(std::int64_t p) { return TokenPrice(p); }

  [[nodiscard]] constexpr std::int64_t picos_per_token() const { return picos_; }
  /// Cost of `tokens` tokens; saturates at the Money range.
  [[nodiscard]] constexpr Money times(std::int64_t tokens) const {
    std::int64_t product = 0;
    if (__builtin_mul_overflow(picos_, tokens, &product)) {
      return Money::from_picos((picos_ < 0) != (tokens < 0) ? Money::kMinPicos : Money::kMaxPicos);
    }
    return Money::from_picos(product);
  }
  friend constexpr auto operator<=>(TokenPrice, TokenPrice) = default;  // NOLINT(modernize-use-nullptr)

 private:
  constexpr explicit TokenPrice(std::int64_t p) : picos_(p) {}
  std::int64_t picos_ = 0;
};

/// A sum of many Money values: 128-bit, so totals far above 1e9 USD never overflow.
class MoneyTotal {
 public:
  /// A total from its exact picodollars (what a snapshot stored).
  [[nodiscard]] static constexpr MoneyTotal from_picos(Int128 picos) {
    MoneyTotal t;
    t.picos_ = picos;
    return t;
  }
  constexpr MoneyTotal& operator+=(Money m) {
    picos_ += m.picos();
    return *this;
  }
  constexpr MoneyTotal& operator+=(const MoneyTotal& m) {
    picos_ += m.picos_;
    return *this;
  }
  /// Takes back a part of the sum (a ledger's delta between two snapshots).
  constexpr MoneyTotal& operator-=(const MoneyTotal& m) {
    picos_ -= m.picos_;
    return *this;
  }
  [[nodiscard]] constexpr Int128 picos() const { return picos_; }
  [[nodiscard]] std::string to_usd_string() const;
  friend constexpr bool operator==(MoneyTotal, MoneyTotal) = default;

 private:
  Int128 picos_ = 0;
};

/// Parses an exact non-negative decimal ("0.40", "3", "1.25e-06") scaled by 10^scale into an integer.
/// Fails (with a reason) on signs, garbage, more precision than the scale can hold, or overflow.
[[nodiscard]] Result<std::int64_t> parse_scaled_decimal(std::string_view text, int scale);

/// What parse_scaled_decimal does with digits below the unit: refuse them, or round to the nearest
/// unit (halves up).
enum class Excess : std::uint8_t { refuse, round };
/// A parsed decimal, and whether digits below the unit were rounded away.
struct ScaledDecimal {
  std::int64_t value = 0;
  bool rounded = false;
};
[[nodiscard]] Result<ScaledDecimal> parse_scaled_decimal(std::string_view text, int scale, Excess excess);

/// "USD per million tokens" text -> TokenPrice (picodollars per token; 6 decimals of $/Mtok are exact).
[[nodiscard]] Result<TokenPrice> parse_usd_per_mtok(std::string_view text);
/// "USD per token" text (LiteLLM price maps) -> TokenPrice.
[[nodiscard]] Result<TokenPrice> parse_usd_per_token(std::string_view text);
/// A "USD per token" price rounded to the nearest picodollar, and whether it had to be (a price list
/// written from doubles carries float noise: 3.6000000000000003e-06).
struct NearestPrice {
  TokenPrice price;
  bool rounded = false;
};
[[nodiscard]] Result<NearestPrice> parse_usd_per_token_nearest(std::string_view text);
/// "USD" text -> Money.
[[nodiscard]] Result<Money> parse_usd(std::string_view text);

/// Exact decimal text of a 128-bit picodollar count in USD.
[[nodiscard]] std::string picos_to_usd_string(Int128 picos);

}  // namespace turnout
