// Randomized robustness test for decode_kv_events: mutations of the engines' real payloads (bit flips,
// truncations, splices, msgpack type bytes written at random places, huge length fields, inserted and
// repeated chunks) and pure random bytes. Every input must give a value (never a crash, an exception or a
// sanitizer report), and every success must respect the limits it was decoded with.
//
// Deterministic: a fixed seed (printed; TURNOUT_FUZZ_SEED overrides it). The count is
// TURNOUT_FUZZ_ITERATIONS (default 1,000,000; about 7 s under ASan+UBSan in a Debug build here).

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kv_event_payloads.hpp"
#include "turnout/kv_events.hpp"

namespace turnout {
namespace {

constexpr std::uint64_t kDefaultSeed = 0x5157'1C4A'9D2E'0001ULL;
constexpr std::uint64_t kDefaultIterations = 1'000'000;

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once, before any thread
  if (text == nullptr || *text == '\0') return fallback;
  return std::strtoull(text, nullptr, 0);
}

/// Checks a successful decode against the limits; returns "" or what is wrong.
std::string violation(const KvEventBatch& b, const KvDecodeLimits& l) {
  if (b.events.size() > l.max_events) return "too many events";
  for (const KvEvent& e : b.events) {
    if (const auto* s = std::get_if<BlockStored>(&e)) {
      if (s->block_hashes.size() > l.max_blocks_per_event) return "too many hashes";
      if (s->block_size < 1 || s->block_size > l.max_block_size) return "block_size out of range";
      if (s->token_ids.size() > l.max_tokens_per_event) return "too many tokens";
      if (s->token_ids.size() != static_cast<std::size_t>(s->block_size) * s->block_hashes.size()) {
        return "token_ids != block_size x block_hashes";
      }
      if (s->medium.size() > l.max_string_bytes || s->lora_name.size() > l.max_string_bytes) return "long string";
    } else if (const auto* r = std::get_if<BlockRemoved>(&e)) {
      if (r->block_hashes.size() > l.max_blocks_per_event) return "too many hashes";
      if (r->medium.size() > l.max_string_bytes) return "long string";
    }
  }
  return {};
}

class Mutator {
 public:
  explicit Mutator(std::uint64_t seed) : rng_(seed) {
    for (std::string_view p : test::kAllPayloads) seeds_.emplace_back(p);
    // Small ones too: cheap to mutate, and each mutation hits a larger share of their structure.
    seeds_.push_back(test::json_bytes(R"([1.0, [["BlockStored", [1, 2], null, [1, 2, 3, 4], 2]], 0])"));
    seeds_.push_back(test::json_bytes(R"([1.0, [["BlockRemoved", [-3], "GPU"], ["AllBlocksCleared"]]])"));
    seeds_.push_back(test::json_bytes(
        R"({"ts": 1.0, "events": [{"type": "BlockStored", "block_hashes": [9], "parent_block_hash": 8,
            "token_ids": [1], "block_size": 1, "lora_id": null, "medium": "GPU", "lora_name": null}]})"));
  }

  /// The next input, written into `out` (reused to avoid an allocation per input).
  void next(std::string& out) {
    const std::uint64_t kind = below(16);
    if (kind == 0) {  // pure random bytes
      out.resize(below(48));
      for (char& c : out) c = static_cast<char>(rng_());
      return;
    }
    out = seeds_[below(seeds_.size())];
    const std::uint64_t rounds = 1 + below(3);
    for (std::uint64_t r = 0; r < rounds && !out.empty(); ++r) mutate(out);
  }

 private:
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : rng_() % n; }

  void mutate(std::string& s) {
    switch (below(8)) {
      case 0: {  // flip 1-4 bits
        const std::uint64_t flips = 1 + below(4);
        for (std::uint64_t i = 0; i < flips; ++i) {
          char& c = s[below(s.size())];
          c = static_cast<char>(static_cast<unsigned char>(c) ^ (1U << below(8)));
        }
        break;
      }
      case 1: s.resize(below(s.size())); break;  // truncate
      case 2: {                                  // splice: a prefix of this one, a suffix of another
        const std::string& other = seeds_[below(seeds_.size())];
        s.resize(below(s.size() + 1));
        s.append(other, below(other.size() + 1));
        break;
      }
      case 3: {  // a msgpack type byte where a value may start
        static constexpr unsigned char kTypes[] = {0xc0, 0xc1, 0xc2, 0xc4, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb,
                                                   0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd,
                                                   0xde, 0xdf, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xff, 0x7f};
        s[below(s.size())] = static_cast<char>(kTypes[below(sizeof kTypes)]);
        break;
      }
      case 4: {  // a huge length field: 0xff bytes after some position
        const std::uint64_t at = below(s.size());
        for (std::uint64_t i = at; i < at + 4 && i < s.size(); ++i) s[i] = '\xff';
        break;
      }
      case 5: {  // insert random bytes
        std::string chunk(1 + below(8), '\0');
        for (char& c : chunk) c = static_cast<char>(rng_());
        s.insert(below(s.size() + 1), chunk);
        break;
      }
      case 6: {  // repeat a chunk of itself (duplicates events, fields, elements)
        const std::uint64_t from = below(s.size());
        const std::uint64_t len = 1 + below(std::min<std::uint64_t>(32, s.size() - from));
        s.insert(below(s.size() + 1), s.substr(from, len));
        break;
      }
      default: {  // a small integer where one was (sizes, counts, hashes)
        s[below(s.size())] = static_cast<char>(below(0x20));
        break;
      }
    }
  }

  std::mt19937_64 rng_;
  std::vector<std::string> seeds_;
};

TEST(KvEventsFuzz, MutatedAndRandomPayloadsNeverCrashAndSuccessesRespectTheLimits) {
  const std::uint64_t seed = env_or("TURNOUT_FUZZ_SEED", kDefaultSeed);
  const std::uint64_t iterations = env_or("TURNOUT_FUZZ_ITERATIONS", kDefaultIterations);
  std::printf("kv events fuzz: seed 0x%llx, %llu inputs\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(iterations));

  KvDecodeLimits tight;  // every other input, so the count limits are reachable by mutation
  tight.max_events = 3;
  tight.max_blocks_per_event = 3;
  tight.max_tokens_per_event = 12;
  tight.max_block_size = 4;
  tight.max_depth = 6;
  tight.max_string_bytes = 24;
  const KvDecodeLimits defaults;

  Mutator mutator(seed);
  std::string input;
  std::uint64_t decoded = 0;
  std::uint64_t events = 0;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    mutator.next(input);
    const KvDecodeLimits& limits = (i % 2 == 0) ? defaults : tight;
    const Result<KvEventBatch> r = decode_kv_events(test::as_payload(input), limits);
    if (!r) continue;
    ++decoded;
    events += r->events.size();
    const std::string wrong = violation(*r, limits);
    if (!wrong.empty()) {
      std::string hex;
      for (const char c : input) {
        char byte[4];
        std::snprintf(byte, sizeof byte, "%02x", static_cast<unsigned char>(c));
        hex += byte;
      }
      FAIL() << "input " << i << " (seed 0x" << std::hex << seed << "): " << wrong << "; bytes " << hex;
    }
  }
  std::printf("kv events fuzz: %llu of %llu inputs decoded (%llu events)\n", static_cast<unsigned long long>(decoded),
              static_cast<unsigned long long>(iterations), static_cast<unsigned long long>(events));
  // The mutations must leave a good share decodable, or they only ever exercise the first checks.
  EXPECT_GT(decoded, iterations / 100);
}

}  // namespace
}  // namespace turnout
