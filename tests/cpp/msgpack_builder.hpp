#pragma once
// Test helper: builds msgpack objects the way the wire delivers them, from JSON text (so test payloads
// can be pasted as providers send them) or from a packer callback (for what JSON cannot express, such
// as float32). JSON integers become msgpack ints (negative ones NEGATIVE_INTEGER), numbers with a point
// or exponent become float64; NaN and Infinity are accepted because Python's json module emits them.
// Malformed JSON throws std::invalid_argument: a broken test literal should fail loudly.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <msgpack.hpp>

namespace turnout::test {

using Packer = msgpack::packer<msgpack::sbuffer>;

/// Packs whatever `write` packs and unpacks it into an object that owns its memory.
inline msgpack::object_handle pack_with(const std::function<void(Packer&)>& write) {
  msgpack::sbuffer buffer;
  Packer packer(buffer);
  write(packer);
  return msgpack::unpack(buffer.data(), buffer.size());
}

namespace detail {

class JsonToMsgpack {
 public:
  explicit JsonToMsgpack(std::string_view text) : text_(text) {}

  void document(msgpack::sbuffer& out) {
    value(out);
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument("JSON test literal, offset " + std::to_string(pos_) + ": " + why);
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool take_word(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  void value(msgpack::sbuffer& out) {
    Packer packer(out);
    const char c = peek();
    if (c == '{') return object(out);
    if (c == '[') return array(out);
    if (c == '"') {
      const std::string s = string();
      packer.pack_str(static_cast<std::uint32_t>(s.size()));
      packer.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
      return;
    }
    if (take_word("null")) return static_cast<void>(packer.pack_nil());
    if (take_word("true")) return static_cast<void>(packer.pack_true());
    if (take_word("false")) return static_cast<void>(packer.pack_false());
    if (take_word("NaN")) return static_cast<void>(packer.pack_double(std::nan("")));
    if (take_word("Infinity")) return static_cast<void>(packer.pack_double(HUGE_VAL));
    if (take_word("-Infinity")) return static_cast<void>(packer.pack_double(-HUGE_VAL));
    number(packer);
  }

  // A container's size comes first in msgpack: pack the elements into a side buffer while counting.
  void object(msgpack::sbuffer& out) {
    expect('{');
    msgpack::sbuffer body;
    std::uint32_t count = 0;
    if (peek() != '}') {
      for (;;) {
        if (peek() != '"') fail("expected a key");
        const std::string key = string();
        Packer(body).pack_str(static_cast<std::uint32_t>(key.size()));
        Packer(body).pack_str_body(key.data(), static_cast<std::uint32_t>(key.size()));
        expect(':');
        value(body);
        ++count;
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        break;
      }
    }
    expect('}');
    Packer(out).pack_map(count);
    out.write(body.data(), body.size());
  }

  void array(msgpack::sbuffer& out) {
    expect('[');
    msgpack::sbuffer body;
    std::uint32_t count = 0;
    if (peek() != ']') {
      for (;;) {
        value(body);
        ++count;
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        break;
      }
    }
    expect(']');
    Packer(out).pack_array(count);
    out.write(body.data(), body.size());
  }

  std::string string() {
    expect('"');
    std::string s;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      char c = text_[pos_++];
      if (c == '\\') {
        if (pos_ >= text_.size()) fail("unterminated escape");
        c = text_[pos_++];
        switch (c) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case 'r': c = '\r'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'u': {  // test literals only need ASCII escapes
            if (pos_ + 4 > text_.size()) fail("short \\u escape");
            const long code = std::strtol(std::string(text_.substr(pos_, 4)).c_str(), nullptr, 16);
            if (code > 0x7f) fail("non-ASCII \\u escape");
            c = static_cast<char>(code);
            pos_ += 4;
            break;
          }
          default: break;  // \" \\ \/
        }
      }
      s.push_back(c);
    }
    if (pos_ >= text_.size()) fail("unterminated string");
    ++pos_;
    return s;
  }

  void number(Packer& packer) {
    const std::size_t start = pos_;
    bool integral = true;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '.' || c == 'e' || c == 'E') {
        integral = false;
      } else if (!((c >= '0' && c <= '9') || c == '-' || c == '+')) {
        break;
      }
      ++pos_;
    }
    const std::string token(text_.substr(start, pos_ - start));
    if (token.empty()) fail("unexpected character");
    char* end = nullptr;
    if (!integral) {
      const double d = std::strtod(token.c_str(), &end);
      if (*end != '\0') fail("bad number " + token);
      packer.pack_double(d);
    } else if (token[0] == '-') {
      const long long v = std::strtoll(token.c_str(), &end, 10);
      if (*end != '\0') fail("bad number " + token);
      packer.pack_int64(v);
    } else {
      const unsigned long long v = std::strtoull(token.c_str(), &end, 10);
      if (*end != '\0') fail("bad number " + token);
      packer.pack_uint64(v);
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

}  // namespace detail

/// A msgpack object built from JSON text, e.g. from_json(R"({"usage": {"prompt_tokens": 12}})").
inline msgpack::object_handle from_json(std::string_view json) {
  msgpack::sbuffer buffer;
  detail::JsonToMsgpack(json).document(buffer);
  return msgpack::unpack(buffer.data(), buffer.size());
}

}  // namespace turnout::test
