// Exact money: decimal parsing into integer units, USD text, and 128-bit totals.

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <string>

#include "turnout/money.hpp"

namespace turnout {
namespace {

constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kInt64Min = std::numeric_limits<std::int64_t>::min();

struct DecimalCase {
  const char* name;
  const char* text;
  int scale;
  std::optional<std::int64_t> value;  // nullopt: must fail
  const char* reason = "";            // part of the error message when it fails
};

// Failure messages show the case name instead of the struct's bytes.
void PrintTo(const DecimalCase& c, std::ostream* os) { *os << c.name; }

class ParseScaledDecimal : public ::testing::TestWithParam<DecimalCase> {};

TEST_P(ParseScaledDecimal, ParsesExactlyOrExplains) {
  const DecimalCase& c = GetParam();
  const Result<std::int64_t> got = parse_scaled_decimal(c.text, c.scale);
  if (c.value) {
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_EQ(*got, *c.value);
  } else {
    ASSERT_FALSE(got.ok()) << "parsed as " << *got;
    EXPECT_EQ(got.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(got.error().message.find(c.reason), std::string::npos) << got.error().message;
    EXPECT_NE(got.error().message.find(std::string("'") + c.text + "'"), std::string::npos)
        << "the message quotes the input: " << got.error().message;
  }
}

const DecimalCase kDecimalCases[] = {
    // $/Mtok (scale 6: picodollars per token)
    {"price_with_trailing_zero", "0.40", 6, 400'000},  // 0.40 × 10^6
    {"integer_price", "3", 6, 3'000'000},              // 3 × 10^6
    {"explicit_plus", "+1.5", 6, 1'500'000},           // 1.5 × 10^6
    {"leading_point", ".5", 6, 500'000},               // 0.5 × 10^6
    {"trailing_point", "5.", 6, 5'000'000},            // 5 × 10^6
    {"smallest_unit", "0.000001", 6, 1},               // 10^-6 × 10^6
    {"zeros_beyond_scale_are_exact", "0.1000000", 6, 100'000},
    {"zero", "0", 12, 0},
    // exponent forms (LiteLLM price maps write $/token like this; scale 12: picodollars)
    {"exponent_lowercase", "4e-07", 12, 400'000},               // 4 × 10^-7 × 10^12 = 4 × 10^5
    {"exponent_uppercase_fraction", "1.25E-6", 12, 1'250'000},  // 1.25 × 10^-6 × 10^12
    {"exponent_plus_sign", "12.5e+1", 0, 125},
    {"exponent_without_sign", "3E2", 0, 300},
    {"exponent_zero_mantissa_digits", "0.000e5", 0, 0},
    // the int64 edge
    {"int64_max", "9223372036854775807", 0, kInt64Max},
    {"int64_max_in_usd", "9223372.036854775807", 12, kInt64Max},
    {"one_picodollar", "0.000000000001", 12, 1},

    {"too_much_precision", "0.0000001", 6, std::nullopt, "more precision"},
    {"exponent_too_much_precision", "1.25e-06", 6, std::nullopt, "more precision"},  // = 1.25 units
    {"below_a_picodollar", "1e-13", 12, std::nullopt, "more precision"},
    {"negative", "-1", 6, std::nullopt, "negative"},
    {"negative_fraction", "-0.5", 6, std::nullopt, "negative"},
    {"empty", "", 6, std::nullopt, "not a number"},
    {"lone_point", ".", 6, std::nullopt, "not a number"},
    {"letters", "abc", 6, std::nullopt, "not a number"},
    {"two_points", "1.2.3", 6, std::nullopt, "not a number"},
    {"trailing_garbage", "1x", 6, std::nullopt, "not a number"},
    {"leading_space", " 1", 6, std::nullopt, "not a number"},
    {"trailing_space", "1 ", 6, std::nullopt, "not a number"},
    {"hex", "0x10", 6, std::nullopt, "not a number"},
    {"nan", "NaN", 6, std::nullopt, "not a number"},
    {"empty_exponent", "1e", 6, std::nullopt, "empty exponent"},
    {"sign_only_exponent", "1e+", 6, std::nullopt, "empty exponent"},
    {"exponent_with_point", "1e1.5", 6, std::nullopt, "not a number"},
    {"absurd_exponent", "1e401", 0, std::nullopt, "absurd exponent"},
    {"absurd_negative_exponent", "1e-401", 0, std::nullopt, "absurd exponent"},
    {"int64_max_plus_one", "9223372036854775808", 0, std::nullopt, "too large"},
    {"usd_above_int64_picos", "9223372.036854775808", 12, std::nullopt, "too large"},
    {"exponent_overflow", "1e19", 0, std::nullopt, "too large"},
    {"many_digits_overflow", "123456789012345678901234567890", 0, std::nullopt, "too large"},
};

INSTANTIATE_TEST_SUITE_P(Money, ParseScaledDecimal, ::testing::ValuesIn(kDecimalCases),
                         [](const ::testing::TestParamInfo<DecimalCase>& test_info) {
                           return std::string(test_info.param.name);
                         });

TEST(TokenPriceParsing, PerMtokAndPerTokenAgree) {
  // $3/Mtok = $0.000003/token = 3,000,000 picodollars per token, whichever unit the catalog used.
  const TokenPrice per_mtok = parse_usd_per_mtok("3").value();
  const TokenPrice per_token = parse_usd_per_token("3e-06").value();
  EXPECT_EQ(per_mtok.picos_per_token(), 3'000'000);
  EXPECT_EQ(per_mtok, per_token);
  // $0.30/Mtok (a 0.1× cache read) = 300,000 picodollars per token
  EXPECT_EQ(parse_usd_per_mtok("0.30").value().picos_per_token(), 300'000);
  // $0.028/Mtok (DeepSeek cache hit) = 28,000 picodollars per token
  EXPECT_EQ(parse_usd_per_token("0.000000028").value().picos_per_token(), 28'000);
}

TEST(TokenPriceParsing, RejectsSubPicodollarPerTokenPrices) {
  // $0.0000001/Mtok = 0.1 picodollar per token: not representable, so refused rather than rounded.
  const auto price = parse_usd_per_mtok("0.0000001");
  ASSERT_FALSE(price.ok());
  EXPECT_EQ(price.error().code, ErrorCode::invalid_argument);
}

TEST(TokenPriceTimes, MultipliesExactly) {
  // 188,086 tokens × 3,750,000 picos ($3.75/Mtok) = 705,322,500,000 picos = $0.7053225
  EXPECT_EQ(parse_usd_per_mtok("3.75").value().times(188'086), parse_usd("0.7053225").value());
  // The documented bound: 2^31 tokens at $1000/Mtok (10^9 picos) = 2.147e18 picos, inside int64.
  const Money most = parse_usd_per_mtok("1000").value().times(std::int64_t{1} << 31);
  EXPECT_EQ(most.picos(), 2'147'483'648'000'000'000);
}

TEST(ParseUsd, ExactDecimalsAndExponents) {
  EXPECT_EQ(parse_usd("0.0126").value().picos(), 12'600'000'000);  // 0.0126 × 10^12
  EXPECT_EQ(parse_usd("9.5e-05").value().picos(), 95'000'000);     // 0.000095 × 10^12
  EXPECT_FALSE(parse_usd("-0.01").ok());
}

struct UsdTextCase {
  std::int64_t picos;
  const char* text;
};

TEST(MoneyText, ExactDecimalWithTrailingZerosTrimmed) {
  const UsdTextCase cases[] = {
      {0, "0.0"},
      {1, "0.000000000001"},
      {412'000'000, "0.000412"},  // 412 × 10^6 picos = $0.000412
      {1'500'000'000'000, "1.5"},
      {-1'500'000'000'000, "-1.5"},
      {3'000'000'000'000, "3.0"},
      {711'280'500'000, "0.7112805"},
      {kInt64Max, "9223372.036854775807"},
      {kInt64Min, "-9223372.036854775808"},  // negating int64 min needs the 128-bit path
  };
  for (const auto& c : cases) {
    EXPECT_EQ(Money::from_picos(c.picos).to_usd_string(), c.text) << c.picos;
  }
}

TEST(MoneyText, RoundTripsThroughParseUsd) {
  for (const std::int64_t picos : {std::int64_t{1}, std::int64_t{95'000'000}, std::int64_t{12'345'679},
                                   std::int64_t{711'280'500'000}, kInt64Max}) {
    const Money m = Money::from_picos(picos);
    EXPECT_EQ(parse_usd(m.to_usd_string()).value(), m);
  }
}

TEST(MoneyArithmetic, AddsSubtractsAndOrders) {
  const Money a = parse_usd("0.003").value();
  const Money b = parse_usd("0.0004").value();
  EXPECT_EQ((a + b).to_usd_string(), "0.0034");
  EXPECT_EQ((b - a).to_usd_string(), "-0.0026");
  EXPECT_LT(b, a);
  Money c = a;
  c += b;
  c -= a;
  EXPECT_EQ(c, b);
}

// Budget figures saturate instead of wrapping (a wrap would turn an exhausted budget negative).
TEST(MoneyArithmetic, SaturatesAtTheInt64Range) {
  const Money top = Money::from_picos(Money::kMaxPicos);
  const Money bottom = Money::from_picos(Money::kMinPicos);
  EXPECT_EQ(top + Money::from_picos(1), top);
  EXPECT_EQ(top + top, top);
  EXPECT_EQ(bottom - Money::from_picos(1), bottom);
  EXPECT_EQ(bottom + bottom, bottom);
  EXPECT_EQ(Money::from_picos(5) - bottom, top);
  EXPECT_EQ(bottom - top, bottom);
  Money spent = Money::from_picos(9'000'000'000'000'000'000);
  spent += Money::from_picos(9'000'000'000'000'000'000);
  EXPECT_EQ(spent, top);
  spent -= Money::from_picos(1);
  EXPECT_EQ(spent, Money::from_picos(Money::kMaxPicos - 1)) << "ordinary arithmetic below the edge";
  EXPECT_EQ(TokenPrice::from_picos_per_token(1'000'000'000'000).times(std::int64_t{1} << 31), top);
  EXPECT_EQ(TokenPrice::from_picos_per_token(3).times(4), Money::from_picos(12));
}

// LiteLLM's float noise rounds to the nearest picodollar (halves up) and says it did.
TEST(ParseUsdPerTokenNearest, RoundsFloatNoiseAndSaysSo) {
  struct Case {
    const char* text;
    std::int64_t picos;
    bool rounded;
  } const cases[] = {
      {"3.6000000000000003e-06", 3'600'000, true},  // 3,600,000.0000000003
      {"9.9999999999999995e-07", 1'000'000, true},  // 999,999.99999999995
      {"3e-06", 3'000'000, false},                  // exact
      {"0.0000000000005", 1, true},                 // half a picodollar: up
      {"0.0000000000004999", 0, true},              // below half
      {"1e-13", 0, true},                           // a tenth
      {"2.50e-06", 2'500'000, false},               // trailing zeros are exact
  };
  for (const Case& c : cases) {
    auto p = parse_usd_per_token_nearest(c.text);
    ASSERT_TRUE(p.ok()) << c.text << ": " << p.error().message;
    EXPECT_EQ(p->price.picos_per_token(), c.picos) << c.text;
    EXPECT_EQ(p->rounded, c.rounded) << c.text;
  }
  EXPECT_FALSE(parse_usd_per_token_nearest("-1e-06").ok());
  EXPECT_FALSE(parse_usd_per_token_nearest("9223372.0368547758075").ok()) << "rounds up past int64";
}

TEST(MoneyTotal, GoesBeyondInt64) {
  // 3 × (2^63 - 1) = 3 × 9,223,372,036,854,775,807 = 27,670,116,110,564,327,421 picos: over int64.
  MoneyTotal total;
  for (int i = 0; i < 3; ++i) total += Money::from_picos(kInt64Max);
  EXPECT_TRUE(total.picos() == static_cast<Int128>(kInt64Max) * 3);
  EXPECT_TRUE(total.picos() > static_cast<Int128>(kInt64Max));
  EXPECT_EQ(total.to_usd_string(), "27670116.110564327421");

  // ... and back below zero: minus 4 × (2^63 - 1) leaves -(2^63 - 1) = -9,223,372.036854775807 USD.
  for (int i = 0; i < 4; ++i) total += Money::from_picos(-kInt64Max);
  EXPECT_EQ(total.to_usd_string(), "-9223372.036854775807");
}

TEST(MoneyTotal, ManyRequestsSumExactly) {
  // One million requests of $0.000187096 each (the DeepSeek example) = $187.096 exactly, no drift.
  MoneyTotal total;
  const Money each = parse_usd("0.000187096").value();
  for (int i = 0; i < 1'000'000; ++i) total += each;
  EXPECT_EQ(total.to_usd_string(), "187.096");
  MoneyTotal same;
  same += parse_usd("187.096").value();
  EXPECT_EQ(total, same);
}

TEST(MoneyTotal, PicosToUsdStringFor128Bits) {
  // 10^30 picos = 10^18 USD
  const Int128 big = static_cast<Int128>(1'000'000'000'000'000) * 1'000'000'000'000'000;
  EXPECT_EQ(picos_to_usd_string(big), "1000000000000000000.0");
  EXPECT_EQ(picos_to_usd_string(-big - 1), "-1000000000000000000.000000000001");
}

TEST(ErrorCodeNames, AreStable) {
  EXPECT_STREQ(to_string(ErrorCode::usage_invalid), "usage_invalid");
  EXPECT_STREQ(to_string(ErrorCode::price_missing), "price_missing");
  EXPECT_STREQ(to_string(ErrorCode::invalid_argument), "invalid_argument");
}

}  // namespace
}  // namespace turnout
