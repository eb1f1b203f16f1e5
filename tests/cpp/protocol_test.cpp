// The wire protocol (cpp/turnout/protocol.hpp) without a sidecar: every request and reply round trips
// through its encoder and decoder, and every decoder answers bad input with the exact wire error code.

#include "turnout/protocol.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "msgpack_builder.hpp"
#include "test_configs.hpp"
#include "turnout/prefix.hpp"

namespace turnout::protocol {
namespace {

const std::string kExample = std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml";
constexpr TimeMs kNow = 1'767'225'600'000;

std::string bytes(const msgpack::sbuffer& b) { return {b.data(), b.size()}; }

/// The wire bytes of a JSON request literal.
std::string json(std::string_view text) {
  auto oh = test::from_json(text);
  msgpack::sbuffer b;
  msgpack::pack(b, oh.get());
  return bytes(b);
}

/// Decodes a request as the sidecar does; fails the test on an error.
Envelope envelope(const std::string& payload, Channel channel = Channel::socket) {
  Envelope e;
  const auto ok = decode_envelope(payload, DecodeLimits{}, channel, e);
  EXPECT_TRUE(ok.ok()) << (ok.ok() ? "" : ok.error().message);
  return e;
}

/// The error code decode_envelope gives `payload` ("" if none).
std::string envelope_error(const std::string& payload, Channel channel = Channel::socket,
                           const DecodeLimits& limits = {}) {
  Envelope e;
  const auto r = decode_envelope(payload, limits, channel, e);
  return r.ok() ? "" : to_string(r.error().code);
}

/// The error code a field decoder gives the JSON request `text` ("" if none).
template <class Decode>
std::string field_error(std::string_view text, Decode decode, Channel channel = Channel::socket) {
  const Envelope e = envelope(json(text), channel);
  const auto r = decode(e.fields);
  return r.ok() ? "" : to_string(r.error().code);
}

std::string route_error(std::string_view text) {
  return field_error(text, [](const Fields& f) {
    std::vector<std::uint32_t> tokens;
    return decode_route_request(f, kNow, tokens);
  });
}
std::string report_error(std::string_view text) {
  return field_error(text, [](const Fields& f) { return decode_report_request(f, kNow); });
}
std::string verdict_error(std::string_view text) {
  return field_error(text, [](const Fields& f) { return decode_verdict_request(f, kNow); });
}
std::string adopt_error(std::string_view text) {
  return field_error(
      text, [](const Fields& f) { return decode_adopt_request(f, kNow); }, Channel::ring);
}

/// A reply as a client decodes it; fails the test on an error.
Reply reply(const std::string& payload) {
  auto r = decode_reply(payload);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? std::move(r).value() : Reply{};
}

void expect_same(const RouteRequest& got, const RouteRequest& want) {
  EXPECT_EQ(got.scenario, want.scenario);
  EXPECT_EQ(got.key, want.key);
  EXPECT_EQ(got.data_class, want.data_class);
  EXPECT_EQ(got.input_tokens, want.input_tokens);
  EXPECT_EQ(got.max_output_tokens, want.max_output_tokens);
  EXPECT_EQ(got.expected_cached_tokens, want.expected_cached_tokens);
  EXPECT_EQ(std::vector<std::uint32_t>(got.token_ids.begin(), got.token_ids.end()),
            std::vector<std::uint32_t>(want.token_ids.begin(), want.token_ids.end()));
  EXPECT_EQ(got.text, want.text);
  EXPECT_EQ(got.now, want.now);
}

// ------------------------------------------------------------------------------------ the tables

TEST(Protocol, OpTableAndFieldNamesAreTheWireNames) {
  EXPECT_EQ(to_string(Op::route), "route");
  EXPECT_EQ(op_from_string("adopt"), Op::adopt);
  EXPECT_EQ(op_from_string("dance"), std::nullopt);
  std::vector<std::string_view> ring;
  for (const auto& o : kOps) {
    if (o.ring) ring.push_back(o.name);
  }
  EXPECT_EQ(ring, (std::vector<std::string_view>{"report", "verdict", "adopt"}));
  EXPECT_EQ(field::decision_id, "decision_id");
  EXPECT_EQ(field::v, "v");
  for (std::size_t i = 0; i < kFields.size(); ++i) {
    for (std::size_t j = i + 1; j < kFields.size(); ++j) EXPECT_NE(kFields[i], kFields[j]) << "listed twice";
  }
  EXPECT_EQ(hex16(0xABCDEFULL), "0000000000abcdef");
  EXPECT_EQ(parse_hex16("0000000000abcdef"), 0xABCDEFULL);
  EXPECT_EQ(parse_hex16("0000000000ABCDEF"), std::nullopt);
  EXPECT_EQ(parse_hex16("abc"), std::nullopt);
}

TEST(Protocol, DecisionIdsNameTheirRing) {
  const std::uint64_t fast = kFastIdBit | (std::uint64_t{5} << kRingShift) | 77U;
  EXPECT_TRUE(is_fast_id(fast));
  EXPECT_EQ(ring_of(fast), 5U);
  const std::uint64_t sidecar = (std::uint64_t{3} << kGenerationShift) | 9U;
  EXPECT_FALSE(is_fast_id(sidecar));
  EXPECT_EQ(generation_of(sidecar), 3U);
}

// -------------------------------------------------------------------------- requests round trip

TEST(Protocol, RouteAndExplainRequestsRoundTrip) {
  const std::vector<std::uint32_t> ids = {1, 2, 0xFFFFFFFFU};
  RouteRequest r;
  r.scenario = "agent-assist";
  r.key = "user-42";
  r.data_class = "public";
  r.input_tokens = 5000;
  r.max_output_tokens = 300;
  r.expected_cached_tokens = 1024;
  r.token_ids = ids;
  r.text = "You are a helpful assistant.";
  r.now = kNow + 1234;
  for (const Op op : {Op::route, Op::explain}) {
    msgpack::sbuffer out;
    encode_route_request(out, op, r, 7);
    const Envelope e = envelope(bytes(out));
    EXPECT_EQ(e.op, op);
    ASSERT_NE(e.id, nullptr);
    EXPECT_EQ(e.id->as<std::uint64_t>(), 7U);
    std::vector<std::uint32_t> tokens;
    auto got = decode_route_request(e.fields, kNow, tokens);
    ASSERT_TRUE(got.ok()) << got.error().message;
    RouteRequest want = r;
    want.now = kNow;  // the receiver's clock, not the sender's
    expect_same(*got, want);
  }
  // Left out when not given: the receiver's defaults (its clock, the scenario's max output).
  RouteRequest bare;
  bare.scenario = "chat";
  msgpack::sbuffer out;
  encode_route_request(out, Op::route, bare, std::nullopt);
  const Envelope e = envelope(bytes(out));
  EXPECT_EQ(e.id, nullptr);
  EXPECT_EQ(e.fields.size(), 3U) << "v, op, scenario";
  std::vector<std::uint32_t> tokens;
  auto got = decode_route_request(e.fields, kNow, tokens);
  ASSERT_TRUE(got.ok());
  bare.now = kNow;
  expect_same(*got, bare);
}

TEST(Protocol, RouteRequestWithoutACountEstimatesTheInput) {
  std::vector<std::uint32_t> tokens;
  auto by_ids = decode_route_request(
      envelope(json(R"({"v":1,"op":"route","scenario":"s","token_ids":[5,6,7]})")).fields, kNow, tokens);
  ASSERT_TRUE(by_ids.ok());
  EXPECT_EQ(by_ids->input_tokens, 3);
  tokens.clear();
  auto by_text = decode_route_request(
      envelope(json(R"({"v":1,"op":"route","scenario":"s","text":"123456789"})")).fields, kNow, tokens);
  ASSERT_TRUE(by_text.ok());
  EXPECT_EQ(by_text->input_tokens, 3) << "9 characters at 4 per token, rounded up";
  EXPECT_EQ(estimate_input_tokens(std::nullopt, std::nullopt), -1);
}

TEST(Protocol, ReportRequestRoundTrips) {
  const auto usage = test::from_json(R"({"prompt_tokens": 1800, "completion_tokens": 210})");
  OutcomeReport r;
  r.decision_id = (std::uint64_t{1} << kGenerationShift) | 3U;
  r.target = "llama-70b";
  r.status = Status::rate_limited;
  r.usage = &usage.get();
  r.ttft_ms = 240;
  r.latency_ms = 1900;
  r.accepted = false;
  r.now = kNow + 5;
  msgpack::sbuffer out;
  encode_report_request(out, r, 11);
  const Envelope e = envelope(bytes(out), Channel::ring);
  EXPECT_EQ(e.op, Op::report);
  auto got = decode_report_request(e.fields, kNow);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->decision_id, r.decision_id);
  EXPECT_EQ(got->target, r.target);
  EXPECT_EQ(got->status, r.status);
  ASSERT_NE(got->usage, nullptr);
  EXPECT_EQ(*got->usage, *r.usage);
  EXPECT_EQ(got->ttft_ms, r.ttft_ms);
  EXPECT_EQ(got->latency_ms, r.latency_ms);
  EXPECT_EQ(got->accepted, r.accepted);
  EXPECT_EQ(got->now, kNow) << "the receiver's clock, not the sender's";
}

TEST(Protocol, VerdictRequestRoundTrips) {
  const VerdictRequest v{kFastIdBit | 12U, true, kNow - 1000};
  msgpack::sbuffer out;
  encode_verdict_request(out, v, std::nullopt);
  const Envelope e = envelope(bytes(out), Channel::ring);
  EXPECT_EQ(e.op, Op::verdict);
  auto got = decode_verdict_request(e.fields, kNow);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(*got, (VerdictRequest{v.decision_id, v.accepted, kNow})) << "the receiver's clock, not the sender's";
}

TEST(Protocol, AdoptRecordRoundTripsAndCarriesAtMostItsPrefixLimit) {
  Decision d;
  d.id = kFastIdBit | (std::uint64_t{2} << kRingShift) | 41U;
  d.config_version = 0x0123456789ABCDEFULL;
  d.scenario = 2;
  d.placement = {4, 1};
  d.fallbacks = {{0, kNone}, {3, kNone}};
  d.spilled = true;
  d.reserved_cost = Money::from_picos(123'456);
  d.active_blocks = 12;
  d.prefix = {0x1111, 0x2222, 0x3333};
  d.at = kNow - 3;
  msgpack::sbuffer out;
  encode_adopt_request(out, d, 2);
  EXPECT_EQ(envelope_error(bytes(out), Channel::socket), "bad_message") << "adopt comes only through a ring";
  const Envelope e = envelope(bytes(out), Channel::ring);
  EXPECT_EQ(e.op, Op::adopt);
  EXPECT_EQ(e.id, nullptr) << "ring records carry no id";
  auto got = decode_adopt_request(e.fields, kNow);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->id, d.id);
  EXPECT_EQ(got->config_version, d.config_version);
  EXPECT_EQ(got->scenario, d.scenario);
  EXPECT_EQ(got->placement.target, d.placement.target);
  EXPECT_EQ(got->placement.replica, d.placement.replica);
  ASSERT_EQ(got->fallbacks.size(), 2U);
  EXPECT_EQ(got->fallbacks[1].target, 3U);
  EXPECT_EQ(got->fallbacks[1].replica, kNone);
  EXPECT_EQ(got->spilled, d.spilled);
  EXPECT_EQ(got->reserved_cost, d.reserved_cost);
  EXPECT_EQ(got->active_blocks, d.active_blocks);
  EXPECT_EQ(got->prefix, (std::vector<std::uint64_t>{0x1111, 0x2222})) << "the leading blocks only";
  EXPECT_EQ(got->at, kNow) << "committed at the receiver's clock, not the client's";
  auto early = decode_adopt_request(e.fields, kNow - 10);
  ASSERT_TRUE(early.ok());
  EXPECT_EQ(early->at, kNow - 10);
}

// The sidecar runs on its own clock: whatever time a request carries, it happened at the receiver's.
TEST(Protocol, EveryRequestHappensAtTheReceiversClock) {
  for (const char* now : {"0", "1", "4102444800", "253402300800"}) {  // 1970, 2100, the last second allowed
    const std::string at = std::string(R"(,"now":)") + now + "}";
    std::vector<std::uint32_t> tokens;
    auto route =
        decode_route_request(envelope(json(R"({"v":1,"op":"route","scenario":"s")" + at)).fields, kNow, tokens);
    ASSERT_TRUE(route.ok()) << now;
    EXPECT_EQ(route->now, kNow) << now;
    auto report = decode_report_request(
        envelope(json(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok")" + at)).fields, kNow);
    ASSERT_TRUE(report.ok()) << now;
    EXPECT_EQ(report->now, kNow) << now;
    auto verdict = decode_verdict_request(
        envelope(json(R"({"v":1,"op":"verdict","decision_id":1,"accepted":true)" + at)).fields, kNow);
    ASSERT_TRUE(verdict.ok()) << now;
    EXPECT_EQ(verdict->now, kNow) << now;
  }
  for (const char* at : {"0", "9223372036854775807"}) {
    auto adopt = decode_adopt_request(
        envelope(json(std::string(R"({"v":1,"op":"adopt","decision_id":1,"config_version":2,"scenario":0,)"
                                  R"("target":1,"replica":0,"at":)") +
                      at + "}"),
                 Channel::ring)
            .fields,
        kNow);
    ASSERT_TRUE(adopt.ok()) << at;
    EXPECT_EQ(adopt->at, kNow) << at;
  }
}

TEST(Protocol, StatsHealthAndReloadRequestsRoundTrip) {
  const std::pair<Op, std::function<void(msgpack::sbuffer&)>> cases[] = {
      {Op::stats, [](msgpack::sbuffer& b) { encode_stats_request(b, 1); }},
      {Op::health, [](msgpack::sbuffer& b) { encode_health_request(b, 2); }},
      {Op::reload, [](msgpack::sbuffer& b) { encode_reload_request(b, 3); }},
  };
  for (const auto& [op, encode] : cases) {
    msgpack::sbuffer out;
    encode(out);
    const Envelope e = envelope(bytes(out));
    EXPECT_EQ(e.op, op);
    EXPECT_EQ(e.fields.size(), 3U) << "v, op, id";
  }
  const Envelope extra = envelope(json(R"({"v":1,"op":"stats","verbose":true})"));
  EXPECT_TRUE(decode_stats_request(extra.fields).ok()) << "unknown fields are ignored";
  EXPECT_TRUE(decode_health_request(extra.fields).ok());
  EXPECT_TRUE(decode_reload_request(extra.fields).ok());
}

TEST(Protocol, SettleLocalRequestAndReplyRoundTrip) {
  const auto usage = test::from_json(R"({"prompt_tokens": 100, "completion_tokens": 10})");
  LocalDecisionRequest r;
  r.spool_id = kLocalIdBit | (std::uint64_t{7} << kLocalTagShift) | 3U;
  r.scenario = "support-summarization";
  r.target = "llama-70b";
  r.endpoint = "http://127.0.0.1:8001";
  r.fallbacks = {"gpt-4.1-mini", "claude-sonnet-4"};
  r.reserved_cost = Money::from_picos(1'234'000);
  r.outcomes = {{"llama-70b", Status::error, nullptr, -1, 30}, {"gpt-4.1-mini", Status::ok, &usage.get(), 5, 40}};
  r.accepted = true;
  msgpack::sbuffer out;
  encode_settle_local_request(out, r, 9);
  const Envelope e = envelope(bytes(out));
  EXPECT_EQ(e.op, Op::settle_local);
  auto got = decode_settle_local_request(e.fields);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->spool_id, r.spool_id);
  EXPECT_EQ(got->scenario, r.scenario);
  EXPECT_EQ(got->target, r.target);
  EXPECT_EQ(got->endpoint, r.endpoint);
  EXPECT_EQ(got->fallbacks, r.fallbacks);
  EXPECT_EQ(got->reserved_cost, r.reserved_cost);
  ASSERT_EQ(got->outcomes.size(), 2U);
  EXPECT_EQ(got->outcomes[0].status, Status::error);
  EXPECT_EQ(got->outcomes[0].usage, nullptr);
  EXPECT_EQ(got->outcomes[0].latency_ms, 30);
  EXPECT_EQ(got->outcomes[1].target, "gpt-4.1-mini");
  ASSERT_NE(got->outcomes[1].usage, nullptr);
  EXPECT_EQ(*got->outcomes[1].usage, usage.get());
  EXPECT_EQ(got->outcomes[1].ttft_ms, 5);
  EXPECT_EQ(got->accepted, true);
  EXPECT_EQ(envelope_error(bytes(out), Channel::ring), "bad_message") << "socket only";

  MapWriter body;
  encode_settle_local_reply(body, {(std::uint64_t{2} << kGenerationShift) | kImportedIdBit | 1U, true, 1});
  const Reply rep = reply(encode_reply(nullptr, body));
  auto decoded = decode_settle_local_reply(rep.fields);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(*decoded, (LocalDecisionReply{(std::uint64_t{2} << kGenerationShift) | kImportedIdBit | 1U, true, 1}));
}

TEST(Protocol, SettleLocalDecoderRefusesBadFields) {
  const auto error = [](std::string_view text) {
    return field_error(text, [](const Fields& f) { return decode_settle_local_request(f); });
  };
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t"})"), "");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","scenario":"s","target":"t"})"), "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":-1,"scenario":"s","target":"t"})"), "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"target":"t"})"), "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t","fallbacks":"x"})"),
            "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t","fallbacks":[1]})"),
            "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t","reserved_cost_usd":"-1"})"),
            "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t","reserved_cost_usd":"1001"})"),
            "invalid_argument");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t","outcomes":[1]})"),
            "bad_message");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t",)"
                  R"("outcomes":[{"target":"t","status":"fine"}]})"),
            "invalid_argument");
  EXPECT_EQ(error(R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t",)"
                  R"("outcomes":[{"status":"ok"}]})"),
            "bad_message");
  std::string many = R"({"v":1,"op":"settle_local","spool_id":1,"scenario":"s","target":"t","outcomes":[)";
  for (int i = 0; i < 65; ++i) many += std::string(i == 0 ? "" : ",") + R"({"target":"t","status":"ok"})";
  EXPECT_EQ(error(many + "]}"), "bad_message") << "at most 64 outcomes";
}

// ---------------------------------------------------------------------------- replies round trip

TEST(Protocol, DecisionReplyRoundTripsInNames) {
  auto config = load_config_file(kExample);
  ASSERT_TRUE(config.ok()) << config.error().message;
  Router router(config.value(), RouterOptions{.first_decision_id = (std::uint64_t{1} << kGenerationShift) | 1U});
  for (const char* scenario : {"support-summarization", "agent-assist"}) {
    RouteRequest r;
    r.scenario = scenario;
    r.key = "ticket-1001";
    r.text = std::string(4096, 'x');
    r.input_tokens = 1800;
    r.now = kNow + 1;
    auto d = router.route(r);
    ASSERT_TRUE(d.ok()) << d.error().message;
    MapWriter body;
    encode_decision_reply(body, *config.value(), *d);
    const auto id = test::from_json("[\"any\", 1]");
    const Reply got = reply(encode_reply(&id.get(), body));
    EXPECT_FALSE(got.error);
    ASSERT_NE(got.id, nullptr);
    EXPECT_EQ(*got.id, id.get());
    auto decoded = decode_decision_reply(got.fields);
    ASSERT_TRUE(decoded.ok()) << decoded.error().message;
    const Config& c = *config.value();
    DecisionReply want;
    want.decision_id = d->id;
    want.scenario = scenario;
    want.target = c.targets[d->placement.target].name;
    if (d->placement.replica != kNone)
      want.endpoint = c.targets[d->placement.target].replicas[d->placement.replica].endpoint;
    for (const auto& f : d->fallbacks) {
      want.fallbacks.push_back(c.targets[f.target].name);
      want.fallback_endpoints.push_back(
          f.replica == kNone ? std::nullopt : std::optional(c.targets[f.target].replicas[f.replica].endpoint));
    }
    for (const auto& reason : d->reasons) want.reasons.push_back(reason_text(c, reason));
    want.predicted_cost = d->predicted_cost;
    want.reserved_cost = d->reserved_cost;
    want.expected_cached_tokens = d->expected_cached_tokens;
    want.cache_key = d->cache_key;
    want.config_version = c.content_hash;
    want.at = kNow + 1;
    EXPECT_EQ(*decoded, want);
    EXPECT_FALSE(want.reasons.empty());
  }
}

TEST(Protocol, DecisionReplyNamesTheReplicaOfASelfHostedFallback) {
  auto config = testing::load_or_die(testing::kBasicYaml);
  ASSERT_TRUE(config);
  Router router(config);
  RouteRequest r;
  r.scenario = "public-chat";  // fallback: [mini, cheap, pool]
  r.now = kNow;
  auto d = router.route(r);
  ASSERT_TRUE(d.ok()) << d.error().message;
  MapWriter body;
  encode_decision_reply(body, *config, *d);
  const auto id = test::from_json("1");
  auto decoded = decode_decision_reply(reply(encode_reply(&id.get(), body)).fields);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  ASSERT_EQ(decoded->fallbacks.size(), decoded->fallback_endpoints.size());
  ASSERT_FALSE(decoded->fallbacks.empty());
  EXPECT_EQ(decoded->fallbacks.back(), "pool");
  const auto& pool_at = decoded->fallback_endpoints.back();
  ASSERT_TRUE(pool_at.has_value());
  EXPECT_TRUE(*pool_at == "http://127.0.0.1:9001" || *pool_at == "http://127.0.0.1:9002") << *pool_at;
  EXPECT_FALSE(decoded->fallback_endpoints.front().has_value());  // mini or cheap: a managed API
}

TEST(Protocol, ReceiptReplyRoundTrips) {
  ReportReceipt r;
  r.duplicate = false;
  r.fallback = true;
  r.priced = true;
  r.usage = {.uncached_input_tokens = 776,
             .cache_read_tokens = 1024,
             .cache_write_5m_tokens = 3,
             .cache_write_1h_tokens = 4,
             .output_tokens = 210,
             .reasoning_tokens = 50};
  r.cost = Money::from_picos(987'654'321);
  MapWriter body;
  encode_receipt_reply(body, r);
  const Reply got = reply(encode_reply(nullptr, body));
  EXPECT_EQ(got.id, nullptr) << "a nil id is no id";
  auto decoded = decode_receipt_reply(got.fields);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(decoded->duplicate, r.duplicate);
  EXPECT_EQ(decoded->fallback, r.fallback);
  EXPECT_EQ(decoded->priced, r.priced);
  EXPECT_EQ(decoded->usage, r.usage);
  EXPECT_EQ(decoded->cost, r.cost);
}

TEST(Protocol, StatsReplyRoundTrips) {
  StatsReply s;
  s.pid = 4242;
  s.generation = 3;
  s.config_version = 0xFEDCBA9876543210ULL;
  s.config = "/etc/turnout/routing.yaml";
  s.shm = "turnout-1000";
  s.uptime_s = 12.5;
  s.pending_decisions = 17;
  s.fast_path = {true, "turnout-1000.t3", "", 2, 900, 1, 0};
  s.last_reload = {false, 1'767'225'600'250, 3, ErrorCode::io_error, "cannot grow the counter segment"};
  for (const char* row : {R"({"scenario":"a","target":"b","requests":5})", R"({"scenario":"c","target":"d"})"}) {
    s.counters.push_back(json(row));
  }
  s.breakers = {{"llama-70b", "http://127.0.0.1:8001", Breaker::Phase::half_open, 3, 2, 7},
                {"gpt-4.1-mini", std::nullopt, Breaker::Phase::closed, 0, 0, 0}};
  MapWriter body;
  encode_stats_reply(body, s);
  auto decoded = decode_stats_reply(reply(encode_reply(nullptr, body)).fields);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(*decoded, s);

  s.fast_path = {false, "", "no rings: permission denied", 0, 0, 0, 0};
  s.last_reload = {};  // none yet: `at` and `error` are nil
  s.counters.clear();
  s.breakers.clear();
  MapWriter off;
  encode_stats_reply(off, s);
  decoded = decode_stats_reply(reply(encode_reply(nullptr, off)).fields);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(*decoded, s);
}

TEST(Protocol, HealthAndReloadRepliesRoundTrip) {
  const HealthReply h{std::string(kServing), 99, 4, 0x42, 1.25};
  MapWriter hb;
  encode_health_reply(hb, h);
  auto health = decode_health_reply(reply(encode_reply(nullptr, hb)).fields);
  ASSERT_TRUE(health.ok()) << health.error().message;
  EXPECT_EQ(*health, h);

  const ReloadReply r{0x1234, 5};
  MapWriter rb;
  encode_reload_reply(rb, r);
  auto reload = decode_reload_reply(reply(encode_reply(nullptr, rb)).fields);
  ASSERT_TRUE(reload.ok()) << reload.error().message;
  EXPECT_EQ(*reload, r);
}

TEST(Protocol, EveryErrorCodeRoundTripsInAnErrorReply) {
  const auto id = test::from_json("7");
  for (const auto& e : kErrorCodes) {
    const Reply got = reply(encode_error_reply(&id.get(), {e.code, "what happened"}));
    ASSERT_TRUE(got.error.has_value()) << e.name;
    EXPECT_EQ(got.error->code, e.code);
    EXPECT_EQ(got.error->message, "what happened");
    EXPECT_EQ(got.id->as<int>(), 7);
  }
}

// ------------------------------------------------------------------------------------ bad input

TEST(Protocol, EnvelopeRefusesWhatIsNotARequest) {
  EXPECT_EQ(envelope_error("\xc1"), "bad_message");
  EXPECT_EQ(envelope_error(""), "bad_message");
  EXPECT_EQ(envelope_error(json("[1,2,3]")), "bad_message");
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":"health"})") + "x"), "bad_message") << "trailing bytes";
  EXPECT_EQ(envelope_error(json(R"({"v":2,"op":"health"})")), "bad_message") << "another version";
  EXPECT_EQ(envelope_error(json(R"({"op":"health"})")), "bad_message") << "no version";
  EXPECT_EQ(envelope_error(json(R"({"v":"1","op":"health"})")), "bad_message") << "version of the wrong type";
  EXPECT_EQ(envelope_error(json(R"({"v":1})")), "bad_message") << "no op";
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":7})")), "bad_message") << "op of the wrong type";
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":"dance"})")), "unknown_op");
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":"dance"})"), Channel::ring), "unknown_op");
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":"route","scenario":"s"})"), Channel::ring), "bad_message")
      << "a ring carries adopt, report and verdict only";
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":"adopt"})"), Channel::socket), "bad_message")
      << "adopt comes only through a ring";
  const auto keys = test::pack_with([](test::Packer& pk) {
    pk.pack_map(1);
    pk.pack(1);
    pk.pack(2);
  });
  msgpack::sbuffer b;
  msgpack::pack(b, keys.get());
  EXPECT_EQ(envelope_error(bytes(b)), "bad_message") << "keys must be strings";
  std::string deep(40, '\x91');
  deep += '\x01';
  EXPECT_EQ(envelope_error(deep), "too_deep");
  DecodeLimits small;
  small.str = 8;
  EXPECT_EQ(envelope_error(json(R"({"v":1,"op":"route","scenario":"a-long-scenario-name"})"), Channel::socket, small),
            "too_large");
}

TEST(Protocol, AnErrorAfterTheMapKeepsTheRequestId) {
  Envelope e;
  const auto r = decode_envelope(json(R"({"v":1,"id":99,"op":"dance"})"), DecodeLimits{}, Channel::socket, e);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::unknown_op);
  EXPECT_NE(r.error().message.find(
                "expected route, explain, report, verdict, adopt, stats, health, reload, settle_local or migration"),
            std::string::npos)
      << r.error().message;
  ASSERT_NE(e.id, nullptr);
  EXPECT_EQ(e.id->as<int>(), 99);
  const Reply answer = reply(encode_error_reply(e.id, r.error()));
  ASSERT_TRUE(answer.error);
  EXPECT_EQ(answer.error->code, ErrorCode::unknown_op);
  EXPECT_EQ(answer.id->as<int>(), 99);
}

TEST(Protocol, RouteDecoderRefusesBadFields) {
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s"})"), "");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route"})"), "bad_message") << "scenario is required";
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":null})"), "bad_message") << "nil is not given";
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":17})"), "bad_message");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","key":[1]})"), "bad_message");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","input_tokens":"many"})"), "bad_message");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","input_tokens":1.5})"), "bad_message");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","input_tokens":-1})"), "invalid_argument");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","max_output_tokens":-5})"), "invalid_argument");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","token_ids":"1 2 3"})"), "bad_message");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","token_ids":[1,-2]})"), "invalid_argument");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","token_ids":[4294967296]})"), "invalid_argument");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","now":-1})"), "invalid_argument");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","now":NaN})"), "invalid_argument");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","now":"today"})"), "bad_message");
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","now":1e300})"), "invalid_argument") << "no overflow";
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","now":253402300801})"), "invalid_argument")
      << "after the year 10000";
  EXPECT_EQ(route_error(R"({"v":1,"op":"route","scenario":"s","now":18446744073709551615})"), "invalid_argument");
  const auto huge = test::pack_with([](test::Packer& pk) {
    pk.pack_map(4);
    pk.pack("v");
    pk.pack(1);
    pk.pack("op");
    pk.pack("route");
    pk.pack("scenario");
    pk.pack("s");
    pk.pack("input_tokens");
    pk.pack(std::numeric_limits<std::uint64_t>::max());
  });
  msgpack::sbuffer b;
  msgpack::pack(b, huge.get());
  std::vector<std::uint32_t> tokens;
  const Envelope e = envelope(bytes(b));
  auto r = decode_route_request(e.fields, kNow, tokens);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::invalid_argument) << "above 2^63 - 1";
}

TEST(Protocol, ReportDecoderRefusesBadFields) {
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok"})"), "");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","target":"t","status":"ok"})"), "bad_message") << "no decision_id";
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":"x","target":"t","status":"ok"})"), "bad_message");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":-1,"target":"t","status":"ok"})"), "bad_message");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"status":"ok"})"), "bad_message") << "no target";
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t"})"), "bad_message") << "no status";
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"meh"})"), "invalid_argument");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","ttft_ms":-3})"),
            "invalid_argument");
  // Past a week: llround of 9.2e18 used to pass and overflow the ledger's sum of times.
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","ttft_ms":9.2e18})"),
            "invalid_argument");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","latency_ms":1e30})"),
            "invalid_argument");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","latency_ms":604800000})"),
            "");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","latency_ms":"slow"})"),
            "bad_message");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","accepted":1})"),
            "bad_message");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","now":Infinity})"),
            "invalid_argument");
  EXPECT_EQ(report_error(R"({"v":1,"op":"report","decision_id":1,"target":"t","status":"ok","now":1e300})"),
            "invalid_argument");
}

TEST(Protocol, VerdictDecoderRefusesBadFields) {
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","decision_id":1,"accepted":true})"), "");
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","decision_id":1})"), "bad_message") << "accepted is required";
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","decision_id":1,"accepted":"yes"})"), "bad_message");
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","accepted":true})"), "bad_message") << "no decision_id";
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","decision_id":1.5,"accepted":true})"), "bad_message");
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","decision_id":1,"accepted":true,"now":-2})"), "invalid_argument");
  EXPECT_EQ(verdict_error(R"({"v":1,"op":"verdict","decision_id":1,"accepted":true,"now":1e300})"), "invalid_argument");
}

TEST(Protocol, AdoptDecoderRefusesBadFields) {
  const std::string ok = R"("v":1,"op":"adopt","decision_id":1,"config_version":2,"scenario":0,"target":1,"replica":0)";
  EXPECT_EQ(adopt_error("{" + ok + "}"), "");
  EXPECT_EQ(adopt_error(R"({"v":1,"op":"adopt","config_version":2,"scenario":0,"target":1,"replica":0})"),
            "bad_message")
      << "no decision_id";
  EXPECT_EQ(adopt_error(R"({"v":1,"op":"adopt","decision_id":1,"scenario":0,"target":1,"replica":0})"), "bad_message")
      << "no config_version";
  EXPECT_EQ(adopt_error(R"({"v":1,"op":"adopt","decision_id":1,"config_version":2,"target":1,"replica":0})"),
            "bad_message")
      << "no scenario";
  EXPECT_EQ(adopt_error(R"({"v":1,"op":"adopt","decision_id":1,"config_version":2,"scenario":0,"target":1})"),
            "bad_message")
      << "no replica";
  EXPECT_EQ(adopt_error(R"({"v":1,"op":"adopt","decision_id":1,"config_version":2,"scenario":4294967296,"target":1,)"
                        R"("replica":0})"),
            "bad_message")
      << "an index is 32 bits";
  EXPECT_EQ(adopt_error("{" + ok + R"(,"fallbacks":7})"), "bad_message");
  EXPECT_EQ(adopt_error("{" + ok + R"(,"fallbacks":[[1,2,3]]})"), "bad_message");
  EXPECT_EQ(adopt_error("{" + ok + R"(,"fallbacks":[["a","b"]]})"), "bad_message");
  EXPECT_EQ(adopt_error("{" + ok + R"(,"spilled":"no"})"), "bad_message");
  EXPECT_EQ(adopt_error("{" + ok + R"(,"prefix":"abc"})"), "bad_message") << "prefix is bin";
  EXPECT_EQ(adopt_error("{" + ok + R"(,"reserved_cost":1000000000000001})"), "invalid_argument") << "above 1,000 USD";
  EXPECT_EQ(adopt_error("{" + ok + R"(,"reserved_cost":-1})"), "invalid_argument");
  EXPECT_EQ(adopt_error("{" + ok + R"(,"active_blocks":67108865})"), "invalid_argument") << "above 2^26";
  EXPECT_EQ(adopt_error("{" + ok + R"(,"at":-1})"), "invalid_argument");
  EXPECT_EQ(adopt_error("{" + ok + R"(,"at":"now"})"), "bad_message");
  const auto odd = test::pack_with([](test::Packer& pk) {
    pk.pack_map(8);
    for (const auto& [k, v] : {std::pair<const char*, std::uint64_t>{"v", 1},
                               {"decision_id", 1},
                               {"config_version", 2},
                               {"scenario", 0},
                               {"target", 1},
                               {"replica", 0}}) {
      pk.pack(k);
      pk.pack(v);
    }
    pk.pack("op");
    pk.pack("adopt");
    pk.pack("prefix");
    pk.pack_bin(12);
    pk.pack_bin_body("0123456789ab", 12);
  });
  msgpack::sbuffer b;
  msgpack::pack(b, odd.get());
  auto r = decode_adopt_request(envelope(bytes(b), Channel::ring).fields, kNow);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::bad_message) << "12 bytes are not whole 64-bit hashes";
}

TEST(Protocol, ReplyDecodersRefuseMalformedReplies) {
  EXPECT_EQ(decode_reply("\xc1").error().code, ErrorCode::bad_message);
  EXPECT_EQ(decode_reply(json("[1]")).error().code, ErrorCode::bad_message);
  EXPECT_EQ(decode_reply(json(R"({"v":2,"ok":true})")).error().code, ErrorCode::bad_message);
  EXPECT_EQ(decode_reply(json(R"({"v":1})")).error().code, ErrorCode::bad_message) << "no ok";
  EXPECT_EQ(decode_reply(json(R"({"v":1,"ok":false})")).error().code, ErrorCode::bad_message) << "no error";
  const Reply unknown = reply(json(R"({"v":1,"ok":false,"error":{"code":"from_the_future","message":"m"}})"));
  ASSERT_TRUE(unknown.error);
  EXPECT_EQ(unknown.error->code, ErrorCode::internal) << "a code this build does not know";

  auto decision = [](std::string_view text) {
    const Reply r = reply(json(text));
    auto d = decode_decision_reply(r.fields);
    return d.ok() ? std::string() : std::string(to_string(d.error().code));
  };
  const std::string good =
      R"j("decision_id":1,"scenario":"s","target":"t","endpoint":null,"fallbacks":[],"fallback_endpoints":[],)j"
      R"j("reasons":["weight:t (100%)"],)j"
      R"j("reserved_cost_usd":"0","expected_cached_tokens":0,"cache_key":null,"config_version":"00000000000000ab",)j"
      R"j("at":1.5)j";
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"predicted_cost_usd":"0.25",)" + good + "}"), "");
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"predicted_cost_usd":"a quarter",)" + good + "}"), "bad_message");
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"predicted_cost_usd":0.25,)" + good + "}"), "bad_message");
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"decision_id":1})"), "bad_message") << "no scenario";
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"decision_id":1,"scenario":"s","target":"t","fallbacks":[1],"reasons":[],)"
                     R"("predicted_cost_usd":"0"})"),
            "bad_message")
      << "fallbacks are names";
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"decision_id":1,"scenario":"s","target":"t","fallbacks":[],"reasons":[],)"
                     R"("predicted_cost_usd":"0","config_version":"xyz"})"),
            "bad_message")
      << "a version is 16 hex digits";
  std::string two = good;
  two.replace(two.find(R"("fallbacks":[])"), 14, R"("fallbacks":["u"])");
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"predicted_cost_usd":"0",)" + two + "}"), "bad_message")
      << "one endpoint per fallback";
  two.replace(two.find(R"("fallback_endpoints":[])"), 23, R"("fallback_endpoints":[7])");
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"predicted_cost_usd":"0",)" + two + "}"), "bad_message")
      << "an endpoint is a string or nil";
  two.replace(two.find(R"("fallback_endpoints":[7])"), 24, R"("fallback_endpoints":[null])");
  EXPECT_EQ(decision(R"({"v":1,"ok":true,"predicted_cost_usd":"0",)" + two + "}"), "");

  const Reply receipt = reply(json(R"({"v":1,"ok":true,"cost_usd":"0.1","usage":[]})"));
  EXPECT_EQ(decode_receipt_reply(receipt.fields).error().code, ErrorCode::bad_message) << "usage is a map";
  const Reply stats = reply(json(
      R"({"v":1,"ok":true,"config":"c","shm":"s","fast_path":{},"counters":[],"breakers":[{"target":"t","phase":"ajar"}]})"));
  EXPECT_EQ(decode_stats_reply(stats.fields).error().code, ErrorCode::bad_message) << "unknown breaker phase";
  const Reply health = reply(json(R"({"v":1,"ok":true,"status":1})"));
  EXPECT_EQ(decode_health_reply(health.fields).error().code, ErrorCode::bad_message);
  const Reply reload = reply(json(R"({"v":1,"ok":true,"config_version":"short"})"));
  EXPECT_EQ(decode_reload_reply(reload.fields).error().code, ErrorCode::bad_message);
}

TEST(Protocol, AReadOnlySocketTakesOnlyTheOpsThatDoNotWrite) {
  for (const OpInfo& info : kOps) {
    const std::string request = json(R"({"v": 1, "op": ")" + std::string(info.name) + R"("})");
    const std::string got = envelope_error(request, Channel::read_only_socket);
    if (!info.socket) {
      EXPECT_EQ(got, "bad_message") << info.name;
    } else {
      EXPECT_EQ(got, info.writes ? "permission_denied" : "") << info.name;
    }
  }
  // Which ops write is decided once, in kOps: only explain, stats, health and migration do not (a
  // migration command is refused by its handler on such a socket).
  for (const auto op : {Op::explain, Op::stats, Op::health, Op::migration}) {
    EXPECT_FALSE(kOps[static_cast<int>(op)].writes);
  }
  for (const auto op : {Op::route, Op::report, Op::verdict, Op::adopt, Op::reload}) {
    EXPECT_TRUE(kOps[static_cast<int>(op)].writes);
  }
}

std::string migration_error(std::string_view text) {
  return field_error(text, [](const Fields& f) { return decode_migration_request(f); });
}

TEST(Protocol, MigrationRequestsRoundTrip) {
  msgpack::sbuffer all;
  encode_migration_request(all, {}, 4);
  Envelope e = envelope(bytes(all));
  EXPECT_EQ(e.op, Op::migration);
  auto status = decode_migration_request(e.fields);
  ASSERT_TRUE(status.ok()) << status.error().message;
  EXPECT_EQ(*status, MigrationRequest{});

  for (const auto cmd :
       {MigrationCommand::promote, MigrationCommand::pause, MigrationCommand::resume, MigrationCommand::abort}) {
    msgpack::sbuffer out;
    const MigrationRequest r{"support-summarization", cmd};
    encode_migration_request(out, r, 5);
    e = envelope(bytes(out));
    auto back = decode_migration_request(e.fields);
    ASSERT_TRUE(back.ok()) << back.error().message;
    EXPECT_EQ(*back, r);
  }
  // Status of one scenario; no action means status.
  e = envelope(json(R"({"v":1,"op":"migration","scenario":"chat"})"));
  auto one = decode_migration_request(e.fields);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->scenario, "chat");
  EXPECT_FALSE(one->command);
}

TEST(Protocol, MigrationDecoderRefusesBadActions) {
  EXPECT_EQ(migration_error(R"({"v":1,"op":"migration","scenario":"chat","action":"dance"})"), "bad_message");
  EXPECT_EQ(migration_error(R"({"v":1,"op":"migration","scenario":"chat","action":3})"), "bad_message");
  EXPECT_EQ(migration_error(R"({"v":1,"op":"migration","scenario":"chat","action":"Abort"})"), "bad_message");
  EXPECT_EQ(migration_error(R"({"v":1,"op":"migration","action":"abort"})"), "bad_message") << "needs a scenario";
  EXPECT_EQ(migration_error(R"({"v":1,"op":"migration","scenario":7})"), "bad_message");
  Envelope e = envelope(json(R"({"v":1,"op":"migration","scenario":"chat","action":"dance"})"));
  const auto r = decode_migration_request(e.fields);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "unknown migration action 'dance'; expected status, promote, pause, resume or abort");
}

/// The example table with a migration block on its first scenario (set by hand: the wire's encoders
/// only read the spec).
ConfigPtr table_with_migration() {
  auto loaded = load_config_file(kExample);
  EXPECT_TRUE(loaded.ok());
  auto config = std::make_shared<Config>(*loaded.value());
  MigrationSpec spec;
  spec.baseline = 0;
  spec.candidate = 1;
  spec.stage = MigrationStage::canary;
  spec.steps = {1, 5, 25, 50, 100};
  spec.min_samples = 200;
  spec.incident_owner = "support-oncall";
  spec.delta = 0.05;
  spec.attempt = 2;
  config->scenarios[0].migration = spec;
  return config;
}

TEST(Protocol, MigrationStatusMapsNameEveryFieldOnce) {
  const ConfigPtr config = table_with_migration();
  MigrationStatus st;
  st.scenario = 0;
  st.run.phase = MigrationPhase::ramp;
  st.run.step = 1;
  st.run.started_at = kNow;
  st.run.step_started_at = kNow + 60'000;
  st.run.step_outcomes = 87;
  st.run.candidate.outcomes = 187;
  st.run.candidate.cost = Money::from_picos(1'500'000'000'000);
  st.run.transitions.push_back(
      {kNow, MigrationPhase::pending, MigrationPhase::ramp, 0, TransitionCause::started, "", 0, 0});
  st.candidate_percent = 5;
  st.deadline_at = kNow + 3'660'000;
  st.criteria.push_back({StopMetric::errors, 0.0107, 0.01, -0.021, std::numeric_limits<double>::infinity(), 0.02,
                         CriterionResult::Verdict::inconclusive});
  MapWriter body;
  encode_migration_status_reply(body, *config, {st});
  const Reply r = reply(encode_reply(nullptr, body));
  const auto* list = r.fields.get(field::migrations);
  ASSERT_NE(list, nullptr);
  ASSERT_EQ(list->via.array.size, 1U);
  auto m = Fields::of(list->via.array.ptr[0]);
  ASSERT_TRUE(m.ok());
  const auto text = [&](std::string_view k) {
    const auto* o = m->get(k);
    return o != nullptr && o->type == msgpack::type::STR ? std::string(o->via.str.ptr, o->via.str.size) : "<none>";
  };
  EXPECT_EQ(text(field::scenario), config->scenarios[0].name);
  EXPECT_EQ(text(field::stage), "canary");
  EXPECT_EQ(text(field::phase), "ramp");
  EXPECT_EQ(text(field::baseline), config->targets[0].name);
  EXPECT_EQ(text(field::candidate), config->targets[1].name);
  EXPECT_EQ(text(field::incident_owner), "support-oncall");
  EXPECT_EQ(m->get(field::step)->via.u64, 1U);
  EXPECT_EQ(m->get(field::candidate_percent)->via.u64, 5U);
  EXPECT_EQ(m->get(field::attempt)->via.u64, 2U);
  EXPECT_EQ(m->get(field::min_samples)->via.u64, 200U);
  // Seconds since the epoch (a whole second may travel as an integer: msgpack's shortest form).
  const auto seconds = [](const msgpack::object* o) { return o->as<double>(); };
  EXPECT_DOUBLE_EQ(seconds(m->get(field::started_at)), static_cast<double>(kNow) / 1000.0);
  EXPECT_DOUBLE_EQ(seconds(m->get(field::deadline_at)), static_cast<double>(kNow + 3'660'000) / 1000.0);
  ASSERT_EQ(m->get(field::steps)->via.array.size, 5U);
  // A run that never paused has no pause time: nil, not 1970.
  MigrationStatus pending;
  pending.scenario = 0;
  MapWriter pm;
  encode_migration_status(pm, *config, pending);
  msgpack::sbuffer pb;
  pm.emit(pb);
  const auto ph = msgpack::unpack(pb.data(), pb.size());
  auto pf = Fields::of(ph.get());
  ASSERT_TRUE(pf.ok());
  EXPECT_EQ(pf->get(field::started_at), nullptr);
  EXPECT_NE(pf->find(field::started_at), nullptr);

  auto arms = Fields::of(*m->get(field::arms));
  ASSERT_TRUE(arms.ok());
  auto cand = Fields::of(*arms->get(field::candidate));
  ASSERT_TRUE(cand.ok());
  EXPECT_EQ(cand->get(field::outcomes)->via.u64, 187U);
  const auto* cost = cand->get(field::cost_usd);
  EXPECT_EQ(std::string(cost->via.str.ptr, cost->via.str.size), "1.5");
  const auto* criteria = m->get(field::criteria);
  ASSERT_EQ(criteria->via.array.size, 1U);
  auto c = Fields::of(criteria->via.array.ptr[0]);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(std::isinf(c->get(field::hi)->via.f64)) << "no data: an infinite bound, as a float";
  const auto* verdict = c->get(field::verdict);
  EXPECT_EQ(std::string(verdict->via.str.ptr, verdict->via.str.size), "inconclusive");
  const auto* transitions = m->get(field::transitions);
  ASSERT_EQ(transitions->via.array.size, 1U);
  auto t = Fields::of(transitions->via.array.ptr[0]);
  ASSERT_TRUE(t.ok());
  const auto* to = t->get(field::to_phase);
  EXPECT_EQ(std::string(to->via.str.ptr, to->via.str.size), "ramp");

  // The stats reply carries the same maps.
  StatsReply stats;
  MapWriter one;
  encode_migration_status(one, *config, st);
  msgpack::sbuffer packed;
  one.emit(packed);
  stats.migrations.push_back(bytes(packed));
  MapWriter sb;
  encode_stats_reply(sb, stats);
  auto decoded = decode_stats_reply(reply(encode_reply(nullptr, sb)).fields);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(decoded->migrations, stats.migrations);
}

}  // namespace
}  // namespace turnout::protocol
