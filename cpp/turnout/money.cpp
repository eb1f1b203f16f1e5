#include "turnout/money.hpp"

#include <algorithm>
#include <limits>

namespace turnout {
namespace {

std::string u128_to_string(UInt128 v) {
  if (v == 0) return "0";
  std::string s;
  while (v > 0) {
    s.push_back(static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  }
  std::reverse(s.begin(), s.end());
  return s;
}

}  // namespace

std::string picos_to_usd_string(Int128 picos) {
  const bool negative = picos < 0;
  const UInt128 mag = negative ? static_cast<UInt128>(-picos) : static_cast<UInt128>(picos);
  const auto per = static_cast<UInt128>(Money::kPerUsd);
  std::string frac = u128_to_string(mag % per);
  frac.insert(0, 12 - frac.size(), '0');
  while (frac.size() > 1 && frac.back() == '0') frac.pop_back();
  return (negative ? "-" : "") + u128_to_string(mag / per) + "." + frac;
}

std::string Money::to_usd_string() const { return picos_to_usd_string(picos_); }
std::string MoneyTotal::to_usd_string() const { return picos_to_usd_string(picos_); }

Result<std::int64_t> parse_scaled_decimal(std::string_view text, int scale) {
  auto v = parse_scaled_decimal(text, scale, Excess::refuse);
  if (!v) return std::move(v).error();
  return v->value;
}

Result<ScaledDecimal> parse_scaled_decimal(std::string_view text, int scale, Excess excess) {
  auto bad = [&](const char* why) {
    return make_error(ErrorCode::invalid_argument, "'" + std::string(text) + "' " + why);
  };
  std::size_t i = 0;
  if (i < text.size() && text[i] == '+') ++i;
  if (i < text.size() && text[i] == '-') return bad("is negative: expected a number >= 0");
  std::string digits;  // mantissa digits without the point
  int frac_digits = 0;
  bool seen_point = false;
  bool any_digit = false;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      digits.push_back(c);
      any_digit = true;
      if (seen_point) ++frac_digits;
    } else if (c == '.' && !seen_point) {
      seen_point = true;
    } else {
      break;
    }
  }
  if (!any_digit) return bad("is not a number");
  int exponent = 0;
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    bool neg = false;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) neg = text[i++] == '-';
    if (i == text.size()) return bad("has an empty exponent");
    for (; i < text.size(); ++i) {
      if (text[i] < '0' || text[i] > '9') return bad("is not a number");
      exponent = exponent * 10 + (text[i] - '0');
      if (exponent > 400) return bad("has an absurd exponent");
    }
    if (neg) exponent = -exponent;
  }
  if (i != text.size()) return bad("is not a number");

  // value = digits * 10^(exponent - frac_digits + scale)
  int power = exponent - frac_digits + scale;
  bool rounded = false;
  bool round_up = false;  // the digits dropped are at least half a unit
  while (power < 0) {
    if (digits.empty()) {  // every digit dropped: below half a unit
      round_up = false;
      power = 0;
      break;
    }
    if (digits.back() != '0') {
      if (excess == Excess::refuse) return bad("has more precision than this unit can hold exactly");
      rounded = true;
    }
    round_up = digits.back() >= '5';  // the last digit dropped is the most significant one
    digits.pop_back();
    ++power;
  }
  constexpr auto kMax = static_cast<UInt128>(std::numeric_limits<std::int64_t>::max());
  UInt128 value = 0;
  for (char c : digits) {
    value = value * 10 + static_cast<unsigned>(c - '0');
    if (value > kMax) return bad("is too large");
  }
  for (int p = 0; p < power; ++p) {
    value *= 10;
    if (value > kMax) return bad("is too large");
  }
  if (rounded && round_up && ++value > kMax) return bad("is too large");
  return ScaledDecimal{static_cast<std::int64_t>(value), rounded};
}

Result<TokenPrice> parse_usd_per_mtok(std::string_view text) {
  auto v = parse_scaled_decimal(text, 6);  // $/Mtok * 1e6 = picodollars per token
  if (!v) return std::move(v).error();
  return TokenPrice::from_picos_per_token(*v);
}

Result<TokenPrice> parse_usd_per_token(std::string_view text) {
  auto v = parse_scaled_decimal(text, 12);
  if (!v) return std::move(v).error();
  return TokenPrice::from_picos_per_token(*v);
}

Result<NearestPrice> parse_usd_per_token_nearest(std::string_view text) {
  auto v = parse_scaled_decimal(text, 12, Excess::round);
  if (!v) return std::move(v).error();
  return NearestPrice{TokenPrice::from_picos_per_token(v->value), v->rounded};
}

Result<Money> parse_usd(std::string_view text) {
  auto v = parse_scaled_decimal(text, 12);
  if (!v) return std::move(v).error();
  return Money::from_picos(*v);
}

}  // namespace turnout
