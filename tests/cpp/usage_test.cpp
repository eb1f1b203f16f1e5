// normalize_usage against payloads shaped as each provider sends them (responses, bare usage objects,
// streams), and against the broken inputs gateways mis-bill. Every expected split is derived in a comment.

#include <gtest/gtest.h>

#include <optional>
#include <ostream>
#include <string>

#include "msgpack_builder.hpp"
#include "turnout/usage.hpp"

namespace turnout {

// Readable failure output. Internal linkage: other test files may define their own printer.
static void PrintTo(const Usage& u, std::ostream* os) {
  *os << "{uncached=" << u.uncached_input_tokens << " read=" << u.cache_read_tokens
      << " write_5m=" << u.cache_write_5m_tokens << " write_1h=" << u.cache_write_1h_tokens
      << " output=" << u.output_tokens << " reasoning=" << u.reasoning_tokens
      << " reported_cost=" << (u.reported_cost ? u.reported_cost->to_usd_string() : "none") << "}";
}

namespace {

using test::from_json;

struct Tokens {
  std::int64_t uncached = 0, read = 0, write_5m = 0, write_1h = 0, output = 0, reasoning = 0;
};

struct UsageCase {
  const char* name;
  Provider provider;
  const char* json;
  Tokens expected;
  const char* reported_cost_usd = nullptr;  // exact decimal, or none
};

// Failure messages show the case name instead of the struct's bytes.
void PrintTo(const UsageCase& c, std::ostream* os) { *os << c.name; }

Usage expected_usage(const UsageCase& c) {
  Usage u;
  u.uncached_input_tokens = c.expected.uncached;
  u.cache_read_tokens = c.expected.read;
  u.cache_write_5m_tokens = c.expected.write_5m;
  u.cache_write_1h_tokens = c.expected.write_1h;
  u.output_tokens = c.expected.output;
  u.reasoning_tokens = c.expected.reasoning;
  if (c.reported_cost_usd != nullptr) u.reported_cost = parse_usd(c.reported_cost_usd).value();
  return u;
}

class NormalizeUsage : public ::testing::TestWithParam<UsageCase> {};

TEST_P(NormalizeUsage, SplitsTokensAsTheProviderBillsThem) {
  const UsageCase& c = GetParam();
  const auto native = from_json(c.json);
  const Result<Usage> got = normalize_usage(c.provider, native.get());
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(*got, expected_usage(c));
}

const UsageCase kUsageCases[] = {
    // ---- OpenAI chat completions -------------------------------------------------------------------
    {"openai_chat_response_without_cache",
     Provider::openai,
     R"({
      "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion", "created": 1741570283,
      "model": "gpt-4.1-2025-04-14",
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure.", "refusal": null,
                   "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
      "service_tier": "default", "system_fingerprint": "fp_fc9f1d7035"})",
     // nothing cached: all 1117 prompt tokens are uncached input
     {.uncached = 1117, .output = 46}},
    {"openai_chat_bare_usage_with_cache_hit",
     Provider::openai,
     R"({
      "prompt_tokens": 1500, "completion_tokens": 300, "total_tokens": 1800,
      "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
      "completion_tokens_details": {"reasoning_tokens": 0}})",
     // cached_tokens is inside prompt_tokens: uncached = 1500 - 1024 = 476
     {.uncached = 476, .read = 1024, .output = 300}},
    {"openai_chat_stream_last_usage_chunk_wins",
     Provider::openai,
     R"([
      {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4.1",
       "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}],
       "usage": null},
      {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4.1",
       "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}], "usage": null},
      {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4.1",
       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": null},
      {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4.1",
       "choices": [], "usage": {"prompt_tokens": 2200, "completion_tokens": 95, "total_tokens": 2295,
                                "prompt_tokens_details": {"cached_tokens": 2048}}},
      "[DONE]"])",
     // uncached = 2200 - 2048 = 152
     {.uncached = 152, .read = 2048, .output = 95}},
    {"openai_chat_reasoning_is_inside_completion",
     Provider::openai,
     R"({
      "usage": {"prompt_tokens": 800, "completion_tokens": 1200, "total_tokens": 2000,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 1024}}})",
     // reasoning 1024 is a part of the 1200 completion tokens, not added to them
     {.uncached = 800, .output = 1200, .reasoning = 1024}},
    {"openai_cache_write_tokens_in_details",
     Provider::openai,
     R"({
      "usage": {"prompt_tokens": 5000, "completion_tokens": 100,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4096}}})",
     // writes are inside prompt_tokens too: uncached = 5000 - 0 - 4096 = 904
     {.uncached = 904, .write_5m = 4096, .output = 100}},
    {"openai_cache_write_tokens_top_level",
     Provider::openai,
     R"({
      "usage": {"prompt_tokens": 5000, "completion_tokens": 100, "cache_write_tokens": 1024,
                "prompt_tokens_details": {"cached_tokens": 2048}}})",
     // uncached = 5000 - 2048 read - 1024 written = 1928
     {.uncached = 1928, .read = 2048, .write_5m = 1024, .output = 100}},
    {"openai_counts_as_whole_number_floats",
     Provider::openai,
     R"({
      "usage": {"prompt_tokens": 1000.0, "completion_tokens": 20.0,
                "prompt_tokens_details": {"cached_tokens": 512.0}}})",
     // a JSON-to-msgpack converter that makes every number a double: 1000 - 512 = 488
     {.uncached = 488, .read = 512, .output = 20}},
    {"openai_unknown_fields_are_ignored",
     Provider::openai,
     R"({
      "usage": {"prompt_tokens": 10, "completion_tokens": 5, "some_future_field": {"x": [1, "y"]},
                "prompt_tokens_details": {"cached_tokens": 0, "image_tokens": "n/a"}}})",
     {.uncached = 10, .output = 5}},

    // ---- OpenAI Responses API ------------------------------------------------------------------------
    {"openai_responses_api_response",
     Provider::openai,
     R"({
      "id": "resp_67ccd2bed1ec8190b14f964abc054267", "object": "response", "created_at": 1741476542,
      "status": "completed", "model": "gpt-5-2025-08-07", "output": [],
      "usage": {"input_tokens": 2048, "input_tokens_details": {"cached_tokens": 1920},
                "output_tokens": 1200, "output_tokens_details": {"reasoning_tokens": 1024},
                "total_tokens": 3248}})",
     // uncached = 2048 - 1920 = 128; reasoning is inside output_tokens
     {.uncached = 128, .read = 1920, .output = 1200, .reasoning = 1024}},
    {"openai_responses_api_stream",
     Provider::openai,
     R"([
      {"type": "response.created", "sequence_number": 0,
       "response": {"id": "resp_1", "object": "response", "status": "in_progress", "usage": null}},
      {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "delta": "Hi"},
      {"type": "response.completed", "sequence_number": 2,
       "response": {"id": "resp_1", "object": "response", "status": "completed",
                    "usage": {"input_tokens": 300, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 340}}}])",
     {.uncached = 300, .output = 40}},

    // ---- vLLM / SGLang (OpenAI-compatible) ------------------------------------------------------------
    {"vllm_prompt_tokens_details_null",
     Provider::vllm,
     R"({
      "id": "cmpl-7d2f", "object": "chat.completion", "model": "meta-llama/Llama-3.1-8B-Instruct",
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 2048, "total_tokens": 2176, "completion_tokens": 128,
                "prompt_tokens_details": null}})",
     // prefix caching not reported: every prompt token counts as uncached
     {.uncached = 2048, .output = 128}},
    {"vllm_prefix_cache_hit_reported",
     Provider::vllm,
     R"({
      "usage": {"prompt_tokens": 2048, "total_tokens": 2176, "completion_tokens": 128,
                "prompt_tokens_details": {"cached_tokens": 1024}}})",
     // --enable-prompt-tokens-details: 64 blocks of 16 hit; uncached = 2048 - 1024 = 1024
     {.uncached = 1024, .read = 1024, .output = 128}},
    {"vllm_stream_with_continuous_usage_stats",
     Provider::vllm,
     R"([
      {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "a"}}],
       "usage": {"prompt_tokens": 700, "completion_tokens": 1, "total_tokens": 701}},
      {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "b"}}],
       "usage": {"prompt_tokens": 700, "completion_tokens": 2, "total_tokens": 702}},
      {"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [],
       "usage": {"prompt_tokens": 700, "completion_tokens": 3, "total_tokens": 703}}])",
     // every chunk carries cumulative usage: the last one (3 completion tokens) wins
     {.uncached = 700, .output = 3}},
    {"sglang_details_absent",
     Provider::sglang,
     R"({
      "usage": {"prompt_tokens": 96, "total_tokens": 160, "completion_tokens": 64}})",
     {.uncached = 96, .output = 64}},
    {"sglang_cache_report",
     Provider::sglang,
     R"({
      "usage": {"prompt_tokens": 4000, "total_tokens": 4100, "completion_tokens": 100,
                "prompt_tokens_details": {"cached_tokens": 3968}}})",
     // --enable-cache-report: uncached = 4000 - 3968 = 32
     {.uncached = 32, .read = 3968, .output = 100}},

    // ---- Anthropic Messages ---------------------------------------------------------------------------
    {"anthropic_message_without_cache",
     Provider::anthropic,
     R"({
      "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
      "model": "claude-sonnet-4-20250514", "content": [{"type": "text", "text": "Hello!"}],
      "stop_reason": "end_turn", "stop_sequence": null,
      "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "output_tokens": 150, "service_tier": "standard"}})",
     {.uncached = 25, .output = 150}},
    {"anthropic_5m_write_with_breakdown",
     Provider::anthropic,
     R"({
      "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
      "content": [], "stop_reason": "end_turn", "stop_sequence": null,
      "usage": {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 393, "service_tier": "standard"}})",
     // input_tokens is already the uncached part (21); the whole write is 5 min TTL
     {.uncached = 21, .write_5m = 188086, .output = 393}},
    {"anthropic_1h_write_and_read",
     Provider::anthropic,
     R"({
      "usage": {"input_tokens": 50, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 100000,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
                "output_tokens": 500}})",
     {.uncached = 50, .read = 100000, .write_1h = 2000, .output = 500}},
    {"anthropic_5m_and_1h_writes_split",
     Provider::anthropic,
     R"({
      "usage": {"input_tokens": 10, "cache_creation_input_tokens": 4000, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000},
                "output_tokens": 200}})",
     // 1000 + 3000 = 4000 = cache_creation_input_tokens
     {.uncached = 10, .write_5m = 1000, .write_1h = 3000, .output = 200}},
    {"anthropic_write_without_breakdown_is_5m",
     Provider::anthropic,
     R"({
      "input_tokens": 12, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 0,
      "output_tokens": 80})",
     {.uncached = 12, .write_5m = 3000, .output = 80}},
    {"anthropic_cache_fields_absent",
     Provider::anthropic,
     R"({"input_tokens": 12, "output_tokens": 80})",
     {.uncached = 12, .output = 80}},
    {"anthropic_stream_message_delta_overrides_output",
     Provider::anthropic,
     R"([
      {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
        "content": [], "model": "claude-sonnet-4-20250514", "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4000,
                  "output_tokens": 1}}},
      {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
      {"type": "ping"},
      {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
      {"type": "content_block_stop", "index": 0},
      {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
       "usage": {"output_tokens": 512}},
      {"type": "message_stop"}])",
     // message_start's output_tokens (1) is replaced by the cumulative 512 of message_delta
     {.uncached = 25, .read = 4000, .output = 512}},
    {"anthropic_stream_cumulative_delta_with_all_fields",
     Provider::anthropic,
     R"([
      {"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant",
        "content": [], "model": "claude-sonnet-4-20250514",
        "usage": {"input_tokens": 40, "cache_creation_input_tokens": 6000, "cache_read_input_tokens": 0,
                  "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 6000},
                  "output_tokens": 2}}},
      {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
       "usage": {"input_tokens": 40, "cache_creation_input_tokens": 6000, "cache_read_input_tokens": 0,
                 "output_tokens": 77}},
      {"type": "message_stop"}])",
     // the 1 h breakdown from message_start still holds; the delta repeats the same totals
     {.uncached = 40, .write_1h = 6000, .output = 77}},
    {"anthropic_stream_cache_creation_grows_in_message_delta",
     Provider::anthropic,
     R"([
      {"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100},
        "output_tokens": 1}}},
      {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
       "usage": {"input_tokens": 10, "cache_creation_input_tokens": 160, "cache_read_input_tokens": 0,
                 "output_tokens": 50}},
      {"type": "message_stop"}])",
     // the delta's cumulative 160 wins; message_start's split covers 100 at 1 h, the 60 it does not
     // cover were written at the default 5 min TTL
     {.uncached = 10, .write_5m = 60, .write_1h = 100, .output = 50}},
    {"anthropic_stream_cache_creation_grows_without_a_split",
     Provider::anthropic,
     R"([
      {"type": "message_start", "message": {"usage": {"input_tokens": 3, "cache_creation_input_tokens": 1000,
        "output_tokens": 1}}},
      {"type": "message_delta", "usage": {"cache_creation_input_tokens": 1500, "output_tokens": 9}}])",
     // no split at all: the last total, at 5 min
     {.uncached = 3, .write_5m = 1500, .output = 9}},

    // ---- Gemini ---------------------------------------------------------------------------------------
    {"gemini_implicit_cache_hit_and_thoughts",
     Provider::gemini,
     R"({
      "candidates": [{"content": {"parts": [{"text": "..."}], "role": "model"}, "finishReason": "STOP",
                      "index": 0}],
      "usageMetadata": {"promptTokenCount": 4210, "candidatesTokenCount": 512, "totalTokenCount": 5100,
                        "cachedContentTokenCount": 4096,
                        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4210}],
                        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 4096}],
                        "thoughtsTokenCount": 378},
      "modelVersion": "gemini-2.5-pro", "responseId": "mSyraMGqJ6m0vdIPr5TCiAM"})",
     // cached is inside promptTokenCount: uncached = 4210 - 4096 = 114 (never 4210 + 4096);
     // output = 512 candidates + 378 thoughts = 890
     {.uncached = 114, .read = 4096, .output = 890, .reasoning = 378}},
    {"gemini_zero_counts_omitted",
     Provider::gemini,
     R"({
      "candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"}, "finishReason": "STOP"}],
      "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "totalTokenCount": 11,
                        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}]},
      "modelVersion": "gemini-2.5-flash"})",
     {.uncached = 9, .output = 2}},
    {"gemini_thinking_hit_max_tokens_no_candidates",
     Provider::gemini,
     R"({
      "candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
      "usageMetadata": {"promptTokenCount": 1000, "totalTokenCount": 2024, "thoughtsTokenCount": 1024},
      "modelVersion": "gemini-2.5-flash"})",
     // proto3 JSON drops candidatesTokenCount = 0: output = 0 + 1024 thoughts
     {.uncached = 1000, .output = 1024, .reasoning = 1024}},
    {"gemini_tool_use_prompt_is_uncached_input",
     Provider::gemini,
     R"({
      "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 300, "toolUsePromptTokenCount": 150,
                        "totalTokenCount": 1650}})",
     // tool-use prompt tokens are not inside promptTokenCount: uncached = 1200 + 150 = 1350
     {.uncached = 1350, .output = 300}},
    {"gemini_stream_last_chunk_wins",
     Provider::gemini,
     R"([
      {"candidates": [{"content": {"parts": [{"text": "The"}], "role": "model"}, "index": 0}],
       "usageMetadata": {"promptTokenCount": 250000, "cachedContentTokenCount": 240000, "totalTokenCount": 250000},
       "modelVersion": "gemini-2.5-pro"},
      {"candidates": [{"content": {"parts": [{"text": " end."}], "role": "model"}, "finishReason": "STOP",
                       "index": 0}],
       "usageMetadata": {"promptTokenCount": 250000, "candidatesTokenCount": 800, "totalTokenCount": 252000,
                         "cachedContentTokenCount": 240000, "thoughtsTokenCount": 1200},
       "modelVersion": "gemini-2.5-pro"}])",
     // uncached = 250000 - 240000 = 10000; output = 800 + 1200 = 2000
     {.uncached = 10000, .read = 240000, .output = 2000, .reasoning = 1200}},
    {"gemini_python_sdk_snake_case",
     Provider::gemini,
     R"({
      "usage_metadata": {"prompt_token_count": 3000, "cached_content_token_count": 2048,
                         "candidates_token_count": 100, "thoughts_token_count": 50, "total_token_count": 3150}})",
     // google-genai model_dump(): uncached = 3000 - 2048 = 952; output = 100 + 50 = 150
     {.uncached = 952, .read = 2048, .output = 150, .reasoning = 50}},

    // ---- DeepSeek -------------------------------------------------------------------------------------
    {"deepseek_cache_hit_and_miss",
     Provider::deepseek,
     R"({
      "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e", "object": "chat.completion", "created": 1705651092,
      "model": "deepseek-chat",
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 1240, "completion_tokens": 310, "total_tokens": 1550,
                "prompt_tokens_details": {"cached_tokens": 1152},
                "prompt_cache_hit_tokens": 1152, "prompt_cache_miss_tokens": 88},
      "system_fingerprint": "fp_3a5770e1b4_prod0820_fp8_kvcache"})",
     // hit 1152 + miss 88 = 1240 = prompt_tokens; the duplicate cached_tokens is not counted again
     {.uncached = 88, .read = 1152, .output = 310}},
    {"deepseek_reasoner_stream",
     Provider::deepseek,
     R"([
      {"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-reasoner",
       "choices": [{"index": 0, "delta": {"reasoning_content": "Let"}, "finish_reason": null}], "usage": null},
      {"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-reasoner",
       "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
       "usage": {"prompt_tokens": 500, "completion_tokens": 2000, "total_tokens": 2500,
                 "prompt_tokens_details": {"cached_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 1800},
                 "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 500}}])",
     {.uncached = 500, .output = 2000, .reasoning = 1800}},
    {"deepseek_without_prompt_tokens",
     Provider::deepseek,
     R"({
      "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36, "completion_tokens": 7})",
     {.uncached = 36, .read = 64, .output = 7}},

    // ---- OpenRouter -----------------------------------------------------------------------------------
    {"openrouter_cost_and_cache_tokens",
     Provider::openrouter,
     R"({
      "id": "gen-1753900000-abcdef", "provider": "Anthropic", "model": "anthropic/claude-sonnet-4",
      "object": "chat.completion", "created": 1753900000,
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 10000, "completion_tokens": 200, "total_tokens": 10200, "cost": 0.0126,
                "is_byok": false,
                "prompt_tokens_details": {"cached_tokens": 8000, "cache_write_tokens": 1500, "audio_tokens": 0},
                "cost_details": {"upstream_inference_cost": null},
                "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0}}})",
     // uncached = 10000 - 8000 read - 1500 written = 500; the float 0.0126 is exactly $0.0126
     {.uncached = 500, .read = 8000, .write_5m = 1500, .output = 200},
     "0.0126"},
    {"openrouter_stream_final_chunk_cost",
     Provider::openrouter,
     R"([
      ": OPENROUTER PROCESSING",
      {"id": "gen-2", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]},
      {"id": "gen-2", "object": "chat.completion.chunk", "choices": [],
       "usage": {"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196, "cost": 0.000095,
                 "prompt_tokens_details": {"cached_tokens": 0}}},
      "[DONE]"])",
     // 0.000095 prints as "9.5e-05" (shortest round trip) = 95,000,000 picodollars
     {.uncached = 194, .output = 2},
     "0.000095"},
    {"openrouter_free_model_integer_cost",
     Provider::openrouter,
     R"({
      "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "cost": 0}})",
     {.uncached = 30, .output = 9},
     "0"},
    {"openrouter_cost_below_a_picodollar_rounds",
     Provider::openrouter,
     R"({
      "usage": {"prompt_tokens": 30, "completion_tokens": 9, "cost": 1.23456789012345e-05}})",
     // 0.000012345678|9012345 has 19 decimals: rounded at 12 -> 0.000012345679
     {.uncached = 30, .output = 9},
     "0.000012345679"},
    {"openrouter_cost_absent",
     Provider::openrouter,
     R"({
      "usage": {"prompt_tokens": 30, "completion_tokens": 9}})",
     {.uncached = 30, .output = 9}},
};

INSTANTIATE_TEST_SUITE_P(Providers, NormalizeUsage, ::testing::ValuesIn(kUsageCases),
                         [](const ::testing::TestParamInfo<UsageCase>& test_info) {
                           return std::string(test_info.param.name);
                         });

// ---- Rejected inputs: each error names the field path ----------------------------------------------

struct BadCase {
  const char* name;
  Provider provider;
  const char* json;
  const char* message;  // the whole message when `exact`, else a substring
  bool exact = false;
};

// Failure messages show the case name instead of the struct's bytes.
void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class RejectUsage : public ::testing::TestWithParam<BadCase> {};

TEST_P(RejectUsage, NamesTheField) {
  const BadCase& c = GetParam();
  const auto native = from_json(c.json);
  const Result<Usage> got = normalize_usage(c.provider, native.get());
  ASSERT_FALSE(got.ok()) << "accepted: " << ::testing::PrintToString(*got);
  EXPECT_EQ(got.error().code, ErrorCode::usage_invalid);
  if (c.exact) {
    EXPECT_EQ(got.error().message, c.message);
  } else {
    EXPECT_NE(got.error().message.find(c.message), std::string::npos) << got.error().message;
  }
}

const BadCase kBadCases[] = {
    {"openai_cached_exceeds_prompt", Provider::openai,
     R"({"usage": {"prompt_tokens": 1000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1200}}})",
     "usage.prompt_tokens_details.cached_tokens (1200) exceeds usage.prompt_tokens (1000)", true},
    {"openai_prompt_tokens_is_a_string", Provider::openai, R"({"prompt_tokens": "1000", "completion_tokens": 5})",
     "usage.prompt_tokens: expected a non-negative integer, got string \"1000\"", true},
    {"openai_negative_completion", Provider::openai, R"({"prompt_tokens": 10, "completion_tokens": -5})",
     "usage.completion_tokens: expected a non-negative integer, got -5", true},
    {"openai_missing_completion", Provider::openai, R"({"usage": {"prompt_tokens": 10, "total_tokens": 10}})",
     "usage.completion_tokens: missing (required)", true},
    {"openai_null_prompt_tokens", Provider::openai, R"({"prompt_tokens": null, "completion_tokens": 1})",
     "usage.prompt_tokens: expected a non-negative integer, got nil", true},
    {"openai_fractional_float", Provider::openai, R"({"prompt_tokens": 12.5, "completion_tokens": 1})",
     "usage.prompt_tokens: expected a non-negative integer, got 12.5", true},
    {"openai_nan", Provider::openai, R"({"prompt_tokens": 10, "completion_tokens": NaN})",
     "usage.completion_tokens: expected a non-negative integer, got NaN", true},
    {"openai_absurd_size", Provider::openai, R"({"prompt_tokens": 2147483649, "completion_tokens": 1})",
     "usage.prompt_tokens: 2147483649 tokens is beyond any real request (at most 2^31 tokens of one kind per call)",
     true},
    {"openai_absurd_uint64", Provider::openai, R"({"prompt_tokens": 18446744073709551615, "completion_tokens": 1})",
     "usage.prompt_tokens: 18446744073709551615"},
    {"openai_cached_plus_write_exceed_prompt", Provider::openai,
     R"({"prompt_tokens": 1000, "completion_tokens": 1,
         "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 500}})",
     "usage.prompt_tokens_details.cached_tokens (600) + usage.prompt_tokens_details.cache_write_tokens (500) "
     "exceed usage.prompt_tokens (1000)",
     true},
    {"openai_cache_write_places_disagree", Provider::openai,
     R"({"prompt_tokens": 1000, "completion_tokens": 1, "cache_write_tokens": 10,
         "prompt_tokens_details": {"cache_write_tokens": 20}})",
     "usage.cache_write_tokens (10) disagrees with usage.prompt_tokens_details.cache_write_tokens (20)", true},
    {"openai_reasoning_exceeds_completion", Provider::openai,
     R"({"prompt_tokens": 10, "completion_tokens": 100, "completion_tokens_details": {"reasoning_tokens": 101}})",
     "usage.completion_tokens_details.reasoning_tokens (101) exceeds usage.completion_tokens (100)", true},
    {"openai_details_not_a_map", Provider::openai,
     R"({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": "cached"})",
     "usage.prompt_tokens_details: expected a map or null, got string \"cached\"", true},
    {"openai_responses_cached_exceeds_input", Provider::openai,
     R"({"usage": {"input_tokens": 100, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 101}}})",
     "usage.input_tokens_details.cached_tokens (101) exceeds usage.input_tokens (100)", true},
    {"openai_single_chunk_without_usage", Provider::openai,
     R"({"object": "chat.completion.chunk", "choices": [], "usage": null})", "usage: is null"},
    {"openai_stream_without_usage", Provider::openai,
     R"([{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "a"}}]}, "[DONE]"])",
     "stream_options.include_usage"},
    {"openai_stream_bad_usage_names_chunk", Provider::openai,
     R"([{"usage": null}, {"usage": {"prompt_tokens": 10, "completion_tokens": -1}}])",
     "stream[1].usage.completion_tokens: expected a non-negative integer, got -1", true},
    {"openai_stream_garbage_element", Provider::openai, R"([{"usage": null}, 42])",
     "stream[1]: expected a map (one event), got 42", true},
    {"openai_empty_stream", Provider::openai, R"([])", "stream: empty"},
    {"openai_top_level_string", Provider::openai, R"("usage")", "got string"},
    {"vllm_usage_not_a_map", Provider::vllm, R"({"usage": [1, 2]})", "usage: expected a map, got array", true},

    {"anthropic_missing_input_tokens", Provider::anthropic,
     R"({"type": "message", "usage": {"output_tokens": 10, "cache_read_input_tokens": 0}})",
     "usage.input_tokens: missing (required)", true},
    {"anthropic_ephemeral_split_does_not_sum", Provider::anthropic,
     R"({"usage": {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 5000,
         "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000}}})",
     "usage.cache_creation.ephemeral_5m_input_tokens (1000) + usage.cache_creation.ephemeral_1h_input_tokens "
     "(3000) = 4000 does not match usage.cache_creation_input_tokens (5000)",
     true},
    {"anthropic_negative_cache_read_in_stream", Provider::anthropic,
     R"([{"type": "message_start", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": -1,
          "output_tokens": 1}}}])",
     "stream[0].message.usage.cache_read_input_tokens: expected a non-negative integer, got -1", true},
    {"anthropic_stream_without_message_start", Provider::anthropic,
     R"([{"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
         {"type": "message_stop"}])",
     "usage.input_tokens: missing from every event of the stream"},
    {"anthropic_single_message_delta_is_incomplete", Provider::anthropic,
     R"({"type": "message_delta", "usage": {"output_tokens": 15}})", "usage.input_tokens: missing (required)", true},
    {"anthropic_stream_without_usage", Provider::anthropic, R"([{"type": "ping"}, {"type": "message_stop"}])",
     "stream: no event carries usage"},
    {"anthropic_output_is_a_string", Provider::anthropic, R"({"input_tokens": 5, "output_tokens": "7"})",
     "usage.output_tokens: expected a non-negative integer, got string"},

    {"gemini_cached_exceeds_prompt", Provider::gemini,
     R"({"usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 4096, "candidatesTokenCount": 1}})",
     "usageMetadata.cachedContentTokenCount (4096) exceeds usageMetadata.promptTokenCount (100)", true},
    {"gemini_missing_prompt_count", Provider::gemini, R"({"usageMetadata": {"candidatesTokenCount": 5}})",
     "usageMetadata.promptTokenCount: missing (required)", true},
    {"gemini_usage_metadata_not_a_map", Provider::gemini, R"({"usageMetadata": "n/a"})",
     "usageMetadata: expected a map, got string"},
    {"gemini_negative_thoughts_in_stream", Provider::gemini,
     R"([{"usageMetadata": {"promptTokenCount": 10}}, {"usageMetadata": {"promptTokenCount": 10,
         "thoughtsTokenCount": -3}}])",
     "stream[1].usageMetadata.thoughtsTokenCount: expected a non-negative integer, got -3", true},
    {"gemini_stream_without_usage", Provider::gemini, R"([{"candidates": []}])", "no chunk carries usageMetadata"},

    {"deepseek_hit_plus_miss_mismatch", Provider::deepseek,
     R"({"usage": {"prompt_tokens": 1240, "completion_tokens": 1, "prompt_cache_hit_tokens": 1152,
         "prompt_cache_miss_tokens": 100}})",
     "usage.prompt_cache_hit_tokens (1152) + usage.prompt_cache_miss_tokens (100) = 1252 does not match "
     "usage.prompt_tokens (1240)",
     true},
    {"deepseek_missing_miss", Provider::deepseek,
     R"({"usage": {"prompt_tokens": 1240, "completion_tokens": 1, "prompt_cache_hit_tokens": 1152}})",
     "usage.prompt_cache_miss_tokens: missing (required)", true},

    {"openrouter_cost_is_a_string", Provider::openrouter,
     R"({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": "0.01"}})",
     "usage.cost: expected a non-negative number of USD"},
    {"openrouter_negative_cost", Provider::openrouter,
     R"({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": -0.5}})",
     "usage.cost: expected a non-negative number of USD (below 9.2 million), got -0.5", true},
};

INSTANTIATE_TEST_SUITE_P(Providers, RejectUsage, ::testing::ValuesIn(kBadCases),
                         [](const ::testing::TestParamInfo<BadCase>& test_info) {
                           return std::string(test_info.param.name);
                         });

// ---- What JSON cannot express ------------------------------------------------------------------------

TEST(NormalizeUsageTypes, AcceptsFloat32WholeNumbersAndFloat32Cost) {
  // A packer that writes float32 (e.g. a C# or Go client): 1000.0f, 24.0f, cost 0.5f ($0.5 exactly).
  const auto native = test::pack_with([](test::Packer& p) {
    p.pack_map(3);
    p.pack("prompt_tokens");
    p.pack_float(1000.0f);
    p.pack("completion_tokens");
    p.pack_float(24.0f);
    p.pack("cost");
    p.pack_float(0.5f);
  });
  const Result<Usage> got = normalize_usage(Provider::openrouter, native.get());
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->uncached_input_tokens, 1000);
  EXPECT_EQ(got->output_tokens, 24);
  EXPECT_EQ(got->reported_cost, parse_usd("0.5").value());
}

TEST(NormalizeUsageTypes, Float32CostUsesTheFloatsOwnShortestDecimal) {
  // 0.1f is 0.100000001490116...; its shortest float repr is "0.1", which is what the sender meant.
  const auto native = test::pack_with([](test::Packer& p) {
    p.pack_map(3);
    p.pack("prompt_tokens");
    p.pack(1);
    p.pack("completion_tokens");
    p.pack(1);
    p.pack("cost");
    p.pack_float(0.1f);
  });
  const Result<Usage> got = normalize_usage(Provider::openrouter, native.get());
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->reported_cost, parse_usd("0.1").value());
}

TEST(NormalizeUsageTypes, RejectsBinaryAndBooleanCounts) {
  const auto binary = test::pack_with([](test::Packer& p) {
    p.pack_map(2);
    p.pack("prompt_tokens");
    p.pack_bin(2);
    p.pack_bin_body("\x01\x02", 2);
    p.pack("completion_tokens");
    p.pack(1);
  });
  const Result<Usage> a = normalize_usage(Provider::openai, binary.get());
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().message, "usage.prompt_tokens: expected a non-negative integer, got binary");

  const auto boolean = from_json(R"({"prompt_tokens": 3, "completion_tokens": true})");
  const Result<Usage> b = normalize_usage(Provider::openai, boolean.get());
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().message, "usage.completion_tokens: expected a non-negative integer, got boolean true");
}

// Anthropic's usage says which tier billed the call: "batch" is priced at the batch prices.
TEST(NormalizeUsageAnthropic, ServiceTierBatchMarksTheUsage) {
  const auto batch = from_json(R"({"input_tokens": 12, "output_tokens": 80, "service_tier": "batch"})");
  auto got = normalize_usage(Provider::anthropic, batch.get());
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_TRUE(got->batch_tier);
  EXPECT_EQ(got->output_tokens, 80);
  for (const char* tier : {"standard", "priority"}) {
    const auto other =
        from_json(std::string(R"({"input_tokens": 12, "output_tokens": 80, "service_tier": ")") + tier + R"("})");
    auto u = normalize_usage(Provider::anthropic, other.get());
    ASSERT_TRUE(u.ok()) << u.error().message;
    EXPECT_FALSE(u->batch_tier) << tier;
  }
  const auto stream = from_json(R"([
      {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1,
                                                      "service_tier": "batch"}}},
      {"type": "message_delta", "usage": {"output_tokens": 7}}])");
  auto streamed = normalize_usage(Provider::anthropic, stream.get());
  ASSERT_TRUE(streamed.ok()) << streamed.error().message;
  EXPECT_TRUE(streamed->batch_tier) << "message_start's tier holds for the stream";
  const auto bad = from_json(R"({"input_tokens": 12, "output_tokens": 80, "service_tier": 3})");
  auto refused = normalize_usage(Provider::anthropic, bad.get());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::usage_invalid);
  EXPECT_NE(refused.error().message.find("usage.service_tier: expected a string"), std::string::npos)
      << refused.error().message;
}

// Cumulative counts never shrink: a later total below an earlier split is still an error.
TEST(NormalizeUsageAnthropic, CacheCreationThatShrinksIsRefused) {
  const auto stream = from_json(R"([
      {"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_creation_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60}, "output_tokens": 1}}},
      {"type": "message_delta", "usage": {"cache_creation_input_tokens": 80, "output_tokens": 5}}])");
  auto got = normalize_usage(Provider::anthropic, stream.get());
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, ErrorCode::usage_invalid);
  EXPECT_NE(got.error().message.find("does not match usage.cache_creation_input_tokens (80)"), std::string::npos)
      << got.error().message;
}

TEST(NormalizeUsageTypes, BeyondTheBoundIsRefusedNamingFieldAndBound) {
  const auto absurd = from_json(R"({"prompt_tokens": 1000000000000000000, "completion_tokens": 1})");
  auto got = normalize_usage(Provider::openai, absurd.get());
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, ErrorCode::usage_invalid);
  EXPECT_EQ(got.error().message,
            "usage.prompt_tokens: 1000000000000000000 tokens is beyond any real request (at most 2^31 tokens of one "
            "kind per call)");
}

TEST(NormalizeUsageTypes, ExactlyTwoToThe31IsAccepted) {
  // The limit is inclusive: 2^31 = 2147483648 tokens is the largest accepted count.
  const auto native = from_json(R"({"prompt_tokens": 2147483648, "completion_tokens": 0})");
  const Result<Usage> got = normalize_usage(Provider::openai, native.get());
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->uncached_input_tokens, std::int64_t{1} << 31);
}

TEST(NormalizeUsageTypes, InputTokensAddsEveryPartOnce) {
  // Gemini 4210 prompt (4096 cached) + 150 tool-use: 114 + 150 uncached + 4096 read = 4360 input tokens.
  const auto native = from_json(R"({"usageMetadata": {"promptTokenCount": 4210, "cachedContentTokenCount": 4096,
                                     "toolUsePromptTokenCount": 150, "candidatesTokenCount": 1}})");
  const Result<Usage> got = normalize_usage(Provider::gemini, native.get());
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->input_tokens(), 4360);
}

}  // namespace
}  // namespace turnout
