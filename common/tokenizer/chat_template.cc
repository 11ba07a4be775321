#include "common/tokenizer/chat_template.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/io/status_macros.h"

namespace wq {
namespace chat_template_internal {
namespace {

// Bounds against hostile templates: nesting bounds the parser's and the
// renderer's recursion, steps bound loops that print nothing.
constexpr size_t kMaxSourceBytes = size_t{1} << 20;
constexpr int kMaxNesting = 100;
constexpr int64_t kMaxSteps = int64_t{1} << 20;
constexpr int64_t kMaxRange = 100000;
constexpr int kMaxDataDepth = 100;

absl::Status LineError(absl::StatusCode code, int line,
                       absl::string_view message) {
  return absl::Status(code, absl::StrCat("chat template line ", line, ": ",
                                         std::string(message)));
}
absl::Status SyntaxError(int line, absl::string_view message) {
  return LineError(absl::StatusCode::kInvalidArgument, line, message);
}
absl::Status Unsupported(int line, absl::string_view what,
                         absl::string_view name) {
  return LineError(absl::StatusCode::kUnimplemented, line,
                   absl::StrCat("unsupported ", std::string(what), " '",
                                std::string(name), "'"));
}

// ---------------------------------------------------------------- UTF-8 ---

// Invalid bytes decode to U+DC80+byte and encode back to the byte (Python's
// surrogateescape), so no input byte is ever lost or altered.
std::u32string Decode(absl::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int len = c < 0x80         ? 1
              : (c >> 5) == 6  ? 2
              : (c >> 4) == 14 ? 3
              : (c >> 3) == 30 ? 4
                               : 0;
    char32_t cp = len == 1   ? c
                  : len == 2 ? (c & 0x1F)
                  : len == 3 ? (c & 0x0F)
                             : (c & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char cc = s[i + k];
      ok = (cc >> 6) == 2;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
               (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
               (cp >= 0xD800 && cp <= 0xDFFF))) {
      ok = false;
    }
    if (!ok) {
      out.push_back(0xDC00 + c);
      ++i;
    } else {
      out.push_back(cp);
      i += len;
    }
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp >= 0xDC80 && cp <= 0xDCFF) {
    out->push_back(static_cast<char>(cp - 0xDC00));
  } else if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) AppendUtf8(cp, &out);
  return out;
}

// Python's str.isspace().
bool IsPySpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 ||
         c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Python's str.strip / lstrip / rstrip; `chars` unset strips whitespace.
std::string PyStrip(absl::string_view s, const std::u32string* chars, bool left,
                    bool right) {
  const std::u32string u = Decode(s);
  auto strip = [&](char32_t c) {
    return chars == nullptr ? IsPySpace(c)
                            : chars->find(c) != std::u32string::npos;
  };
  size_t b = 0, e = u.size();
  while (left && b < e && strip(u[b])) ++b;
  while (right && e > b && strip(u[e - 1])) --e;
  return Encode(std::u32string_view(u).substr(b, e - b));
}

// ---------------------------------------------------------------- Values ---

struct Value;
using List = std::vector<Value>;
// Insertion-ordered, like Python dicts; string keys only.
using Dict = std::vector<std::pair<std::string, Value>>;

struct Value {
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kFunction  // a global function, named by s: "strftime_now is defined"
  };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  // The string; for an undefined value what was looked up (for errors), for
  // a function its name.
  std::string s;
  std::shared_ptr<const List> list;
  // Dicts are never changed once built (transformers' sandbox is
  // immutable); a namespace is, through every copy of it.
  std::shared_ptr<Dict> dict;

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_number() const {
    return kind == Kind::kBool || kind == Kind::kInt || kind == Kind::kFloat;
  }
  double AsDouble() const {
    return kind == Kind::kFloat ? f : static_cast<double>(AsInt());
  }
  int64_t AsInt() const { return kind == Kind::kBool ? int64_t{b} : i; }
};

Value Undefined(std::string what) {
  Value v;
  v.s = std::move(what);
  return v;
}
Value None() {
  Value v;
  v.kind = Value::Kind::kNone;
  return v;
}
Value Bool(bool b) {
  Value v;
  v.kind = Value::Kind::kBool;
  v.b = b;
  return v;
}
Value Int(int64_t i) {
  Value v;
  v.kind = Value::Kind::kInt;
  v.i = i;
  return v;
}
Value Float(double f) {
  Value v;
  v.kind = Value::Kind::kFloat;
  v.f = f;
  return v;
}
Value Str(std::string s) {
  Value v;
  v.kind = Value::Kind::kString;
  v.s = std::move(s);
  return v;
}
Value MakeList(List list) {
  Value v;
  v.kind = Value::Kind::kList;
  v.list = std::make_shared<const List>(std::move(list));
  return v;
}
Value MakeDict(Dict dict, bool is_namespace = false) {
  Value v;
  v.kind = is_namespace ? Value::Kind::kNamespace : Value::Kind::kDict;
  v.dict = std::make_shared<Dict>(std::move(dict));
  return v;
}

const Value* DictFind(const Dict& dict, absl::string_view key) {
  for (const auto& [k, v] : dict) {
    if (k == key) return &v;
  }
  return nullptr;
}

// Bytes a value stands for, counting shared parts at each use, which is
// what printing or comparing it costs; stops counting past `limit`.
size_t Footprint(const Value& v, size_t limit) {
  size_t total = sizeof(Value) + v.s.size();
  if (v.kind == Value::Kind::kList) {
    for (const Value& item : *v.list) {
      if (total > limit) break;
      total += Footprint(item, limit);
    }
  } else if (v.kind == Value::Kind::kDict) {
    for (const auto& [key, item] : *v.dict) {
      if (total > limit) break;
      total += key.size() + Footprint(item, limit);
    }
  }
  return total;
}

std::string TypeName(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kDict:
      return "dict";
    case Value::Kind::kNamespace:
      return "Namespace";
    case Value::Kind::kFunction:
      return "builtin_function_or_method";
  }
  return "";
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.b;
    case Value::Kind::kInt:
      return v.i != 0;
    case Value::Kind::kFloat:
      return v.f != 0;
    case Value::Kind::kString:
      return !v.s.empty();
    case Value::Kind::kList:
      return !v.list->empty();
    case Value::Kind::kDict:
      return !v.dict->empty();
    case Value::Kind::kNamespace:
    case Value::Kind::kFunction:
      return true;
  }
  return false;
}

// Python's repr(float): the shortest digits that read back to the same
// double, in exponent form outside [1e-4, 1e16).
std::string PyFloat(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*e", precision - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string text = buf;
  const size_t e = text.find('e');
  const int exponent = std::atoi(text.c_str() + e + 1);
  std::string sign, digits;
  for (size_t k = 0; k < e; ++k) {
    if (text[k] == '-') sign = "-";
    if (std::isdigit(static_cast<unsigned char>(text[k]))) {
      digits.push_back(text[k]);
    }
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      return absl::StrCat(sign, "0.", std::string(-exponent - 1, '0'), digits);
    }
    if (digits.size() <= static_cast<size_t>(exponent) + 1) {
      digits.append(exponent + 1 - digits.size(), '0');
      return absl::StrCat(sign, digits, ".0");
    }
    return absl::StrCat(sign, digits.substr(0, exponent + 1), ".",
                        digits.substr(exponent + 1));
  }
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                std::abs(exponent));
  return absl::StrCat(
      sign, digits.substr(0, 1),
      digits.size() > 1 ? absl::StrCat(".", digits.substr(1)) : "", exp_buf);
}

std::string PyRepr(const Value& v);

// Python's str() of a value, as {{ }} prints it.
std::string PyStr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.b ? "True" : "False";
    case Value::Kind::kInt:
      return absl::StrCat(v.i);
    case Value::Kind::kFloat:
      return PyFloat(v.f);
    case Value::Kind::kString:
      return v.s;
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        absl::StrAppend(&out, k ? ", " : "", PyRepr((*v.list)[k]));
      }
      return out + "]";
    }
    case Value::Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, item] : *v.dict) {
        absl::StrAppend(&out, first ? "" : ", ", PyRepr(Str(key)), ": ",
                        PyRepr(item));
        first = false;
      }
      return out + "}";
    }
    case Value::Kind::kNamespace:
      return "<Namespace>";
    case Value::Kind::kFunction:
      return absl::StrCat("<built-in function ", v.s, ">");
  }
  return "";
}

std::string PyRepr(const Value& v) {
  if (v.kind != Value::Kind::kString) return PyStr(v);
  const bool has_single = v.s.find('\'') != std::string::npos;
  const char quote =
      has_single && v.s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (char c : v.s) {
    if (c == quote || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  out.push_back(quote);
  return out;
}

void AppendJsonString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

// transformers' tojson: json.dumps(ensure_ascii=False, sort_keys=False), so
// ", " and ": " separators, or "," and ": " with an indent.
absl::Status AppendJson(const Value& v, int indent, int depth,
                        std::string* out) {
  if (depth > kMaxDataDepth) {
    return absl::ResourceExhaustedError("tojson: value nested too deeply");
  }
  auto newline = [&](int level) {
    if (indent >= 0) {
      out->push_back('\n');
      out->append(static_cast<size_t>(indent) * level, ' ');
    }
  };
  const char* item_sep = indent >= 0 ? "," : ", ";
  switch (v.kind) {
    case Value::Kind::kNone:
      *out += "null";
      break;
    case Value::Kind::kBool:
      *out += v.b ? "true" : "false";
      break;
    case Value::Kind::kInt:
      absl::StrAppend(out, v.i);
      break;
    case Value::Kind::kFloat:
      *out += std::isnan(v.f)   ? "NaN"
              : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity")
                                : PyFloat(v.f);
      break;
    case Value::Kind::kString:
      AppendJsonString(v.s, out);
      break;
    case Value::Kind::kList:
      if (v.list->empty()) {
        *out += "[]";
        break;
      }
      out->push_back('[');
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) *out += item_sep;
        newline(depth + 1);
        RETURN_IF_ERROR(AppendJson((*v.list)[k], indent, depth + 1, out));
      }
      newline(depth);
      out->push_back(']');
      break;
    case Value::Kind::kDict: {
      if (v.dict->empty()) {
        *out += "{}";
        break;
      }
      out->push_back('{');
      bool first = true;
      for (const auto& [key, item] : *v.dict) {
        if (!first) *out += item_sep;
        first = false;
        newline(depth + 1);
        AppendJsonString(key, out);
        *out += ": ";
        RETURN_IF_ERROR(AppendJson(item, indent, depth + 1, out));
      }
      newline(depth);
      out->push_back('}');
      break;
    }
    case Value::Kind::kUndefined:
    case Value::Kind::kNamespace:
    case Value::Kind::kFunction:
      return absl::InvalidArgumentError(absl::StrCat(
          "tojson: object of type ", TypeName(v), " is not JSON serializable"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> FromJson(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxDataDepth) {
    return absl::InvalidArgumentError(
        "chat template variable nested too deeply");
  }
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return None();
    case nlohmann::ordered_json::value_t::boolean:
      return Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      if (j.get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Float(j.get<double>());
      }
      return Int(static_cast<int64_t>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float:
      return Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List list;
      for (const auto& item : j) {
        ASSIGN_OR_RETURN(Value v, FromJson(item, depth + 1));
        list.push_back(std::move(v));
      }
      return MakeList(std::move(list));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict dict;
      for (const auto& [key, item] : j.items()) {
        ASSIGN_OR_RETURN(Value v, FromJson(item, depth + 1));
        dict.emplace_back(key, std::move(v));
      }
      return MakeDict(std::move(dict));
    }
    default:
      return absl::InvalidArgumentError(
          "chat template variables must be JSON values");
  }
}

bool Equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat) {
      return a.AsDouble() == b.AsDouble();
    }
    return a.AsInt() == b.AsInt();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.s == b.s;
    case Value::Kind::kList:
      return std::equal(a.list->begin(), a.list->end(), b.list->begin(),
                        b.list->end(), Equal);
    case Value::Kind::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, item] : *a.dict) {
        const Value* other = DictFind(*b.dict, key);
        if (other == nullptr || !Equal(item, *other)) return false;
      }
      return true;
    case Value::Kind::kNamespace:
      return a.dict == b.dict;
    case Value::Kind::kFunction:
      return a.s == b.s;
    default:
      return false;
  }
}

// -1, 0, 1 as Python orders numbers, strings (by code point, which UTF-8
// byte order preserves) and lists; nullopt where Python raises TypeError.
std::optional<int> Compare(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    const double x = a.AsDouble(), y = b.AsDouble();
    if (a.kind != Value::Kind::kFloat && b.kind != Value::Kind::kFloat) {
      return a.AsInt() < b.AsInt() ? -1 : a.AsInt() > b.AsInt() ? 1 : 0;
    }
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) {
    const int c = a.s.compare(b.s);
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.kind == Value::Kind::kList && b.kind == Value::Kind::kList) {
    for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k) {
      if (!Equal((*a.list)[k], (*b.list)[k])) {
        return Compare((*a.list)[k], (*b.list)[k]);
      }
    }
    const size_t m = a.list->size(), n = b.list->size();
    return m < n ? -1 : m > n ? 1 : 0;
  }
  return std::nullopt;
}

// ------------------------------------------------------------------- AST ---

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,  // literal
    kName,     // name
    kList,     // args: items (tuples too)
    kDict,     // args: key, value, key, value, ...
    kAttr,     // args[0].name
    kItem,     // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]], absent parts null
    kCall,     // name(args, kwargs): a global function
    kMethod,   // args[0].name(args[1:], kwargs)
    kFilter,   // args[0] | name(args[1:], kwargs)
    kTest,     // args[0] is [not] name
    kNeg,      // -args[0]
    kPos,      // +args[0]
    kNot,      // not args[0]
    kAnd,      // args[0] and args[1]
    kOr,       // args[0] or args[1]
    kBinary,   // args[0] name args[1]: + - * / // % ** ~ == != < <= > >= in
    kCond,     // args[1] if args[0] else args[2] (null: undefined)
  };
  Kind kind;
  int line = 0;
  std::string name;
  bool negated = false;  // "is not", "not in"
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;  // output, set value, for iterable
  // for: loop variables; set: the variable, or namespace and attribute.
  std::vector<std::string> targets;
  bool set_attribute = false;
  ExprPtr loop_filter;                             // for ... if filter
  std::vector<std::pair<ExprPtr, Body>> branches;  // if / elif
  Body body;                                       // for body
  Body else_body;                                  // else of if and of for
};

}  // namespace

struct Program {
  Body body;
};

namespace {

// ----------------------------------------------------------------- Lexer ---

struct Token {
  enum class Kind {
    kText,
    kBlockBegin,
    kBlockEnd,
    kVarBegin,
    kVarEnd,
    kName,
    kString,
    kInt,
    kFloat,
    kOp,
    kEof
  };
  Kind kind;
  int line;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

bool IsNameStart(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}
bool IsNameChar(char c) {
  return IsNameStart(c) || std::isdigit(static_cast<unsigned char>(c));
}
bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
         c == '\f';
}

// Jinja's string literal escapes (Python's unicode-escape codec).
absl::StatusOr<std::string> Unescape(absl::string_view body, int line) {
  std::string out;
  for (size_t k = 0; k < body.size(); ++k) {
    if (body[k] != '\\' || k + 1 == body.size()) {
      out.push_back(body[k]);
      continue;
    }
    const char c = body[++k];
    auto hex = [&](int digits) -> absl::StatusOr<char32_t> {
      if (k + digits >= body.size()) {
        return SyntaxError(line, "truncated \\x/\\u escape in string");
      }
      char32_t cp = 0;
      for (int d = 1; d <= digits; ++d) {
        const char h = body[k + d];
        if (!std::isxdigit(static_cast<unsigned char>(h))) {
          return SyntaxError(line, "malformed \\x/\\u escape in string");
        }
        cp = cp * 16 + (std::isdigit(static_cast<unsigned char>(h))
                            ? h - '0'
                            : (std::tolower(h) - 'a' + 10));
      }
      k += digits;
      return cp;
    };
    switch (c) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case '\n':
        break;  // a backslash-newline continues the line
      case 'x':
      case 'u':
      case 'U': {
        ASSIGN_OR_RETURN(char32_t cp, hex(c == 'x' ? 2 : c == 'u' ? 4 : 8));
        if (cp > 0x10FFFF) return SyntaxError(line, "escape beyond U+10FFFF");
        AppendUtf8(cp, &out);
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          char32_t cp = c - '0';
          for (int d = 0; d < 2 && k + 1 < body.size() && body[k + 1] >= '0' &&
                          body[k + 1] <= '7';
               ++d) {
            cp = cp * 8 + (body[++k] - '0');
          }
          AppendUtf8(cp, &out);
        } else {
          out.push_back('\\');
          out.push_back(c);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(absl::string_view source) {
    // Jinja joins the source's lines with "\n" and, without
    // keep_trailing_newline, drops one final newline.
    src_.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
      if (source[k] == '\r') {
        src_.push_back('\n');
        if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
      } else {
        src_.push_back(source[k]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  absl::StatusOr<std::vector<Token>> Run() {
    const size_t n = src_.size();
    while (pos_ < n) {
      size_t tag = std::string::npos;
      for (size_t q = src_.find('{', pos_); q != std::string::npos;
           q = src_.find('{', q + 1)) {
        if (q + 1 < n &&
            (src_[q + 1] == '{' || src_[q + 1] == '%' || src_[q + 1] == '#')) {
          tag = q;
          break;
        }
      }
      const size_t text_end = tag == std::string::npos ? n : tag;
      std::string text = src_.substr(pos_, text_end - pos_);
      const int text_line = line_;
      const bool line_starting = pos_ == 0 || src_[pos_ - 1] == '\n';
      Advance(text_end);
      if (tag == std::string::npos) {
        Push(Token::Kind::kText, text_line, std::move(text));
        break;
      }
      const char kind = src_[tag + 1];
      const char mod = tag + 2 < n ? src_[tag + 2] : '\0';
      if (mod == '-') {
        text = PyStrip(text, nullptr, false, true);
      } else if (mod != '+' && kind != '{') {
        // lstrip_blocks: blanks between a line start and a block tag go.
        const size_t line_pos = text.rfind('\n') + 1;
        if ((line_pos > 0 || line_starting) &&
            text.find_first_not_of(" \t", line_pos) == std::string::npos) {
          text.resize(line_pos);
        }
      }
      if (!text.empty()) Push(Token::Kind::kText, text_line, std::move(text));
      const size_t body = tag + 2 + (mod == '-' || mod == '+' ? 1 : 0);
      if (kind == '#') {
        RETURN_IF_ERROR(SkipComment(tag, body));
      } else {
        RETURN_IF_ERROR(LexTag(kind == '%', tag, body));
      }
    }
    Push(Token::Kind::kEof, line_, "");
    return std::move(tokens_);
  }

 private:
  void Push(Token::Kind kind, int line, std::string text) {
    tokens_.push_back(Token{kind, line, std::move(text)});
  }
  // Moves to `to`, counting lines.
  void Advance(size_t to) {
    line_ += static_cast<int>(
        std::count(src_.begin() + pos_, src_.begin() + to, '\n'));
    pos_ = to;
  }
  void SkipWhitespace() {
    size_t to = pos_;
    while (to < src_.size() && IsAsciiSpace(src_[to])) ++to;
    Advance(to);
  }
  // After a block or comment: "-" strips all following whitespace, "+"
  // nothing, otherwise trim_blocks drops one newline.
  void AfterBlockEnd(char mod) {
    if (mod == '-') {
      SkipWhitespace();
    } else if (mod != '+' && pos_ < src_.size() && src_[pos_] == '\n') {
      Advance(pos_ + 1);
    }
  }

  absl::Status SkipComment(size_t tag, size_t body) {
    const int open_line = line_;
    const size_t end = src_.find("#}", body);
    if (end == std::string::npos) {
      return SyntaxError(open_line, "unterminated comment");
    }
    const char mod = end > body ? src_[end - 1] : '\0';
    Advance(end + 2);
    AfterBlockEnd(mod);
    return absl::OkStatus();
  }

  absl::Status LexTag(bool block, size_t tag, size_t body) {
    const int open_line = line_;
    Push(block ? Token::Kind::kBlockBegin : Token::Kind::kVarBegin, line_, "");
    Advance(body);
    std::vector<char> brackets;
    const absl::string_view src = src_;
    while (true) {
      SkipWhitespace();
      if (pos_ >= src.size()) {
        return SyntaxError(open_line, absl::StrCat("unterminated '",
                                                   block ? "{%" : "{{", "'"));
      }
      const absl::string_view rest = src.substr(pos_);
      if (brackets.empty()) {
        const absl::string_view close = block ? "%}" : "}}";
        // "-" strips whitespace after the tag; "+%}" keeps its newline.
        const bool modified = rest.size() > 2 &&
                              (rest[0] == '-' || (block && rest[0] == '+')) &&
                              rest.substr(1, 2) == close;
        if (modified || rest.substr(0, 2) == close) {
          const char mod = modified ? rest[0] : '\0';
          Push(block ? Token::Kind::kBlockEnd : Token::Kind::kVarEnd, line_,
               "");
          Advance(pos_ + (modified ? 3 : 2));
          if (block) {
            AfterBlockEnd(mod);
          } else if (mod == '-') {
            SkipWhitespace();
          }
          return absl::OkStatus();
        }
      }
      const char c = rest[0];
      if (IsNameStart(c)) {
        size_t len = 1;
        while (len < rest.size() && IsNameChar(rest[len])) ++len;
        Push(Token::Kind::kName, line_, std::string(rest.substr(0, len)));
        Advance(pos_ + len);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        RETURN_IF_ERROR(LexNumber(rest));
      } else if (c == '\'' || c == '"') {
        size_t k = 1;
        while (k < rest.size() && rest[k] != c) k += rest[k] == '\\' ? 2 : 1;
        if (k >= rest.size()) {
          return SyntaxError(line_, "unterminated string literal");
        }
        ASSIGN_OR_RETURN(std::string value,
                         Unescape(rest.substr(1, k - 1), line_));
        Push(Token::Kind::kString, line_, std::move(value));
        Advance(pos_ + k + 1);
      } else {
        static constexpr absl::string_view kTwo[] = {
            "**", "//", "==", "!=", "<=", ">="};
        size_t len = 0;
        for (absl::string_view op : kTwo) {
          if (rest.substr(0, 2) == op) len = 2;
        }
        if (len == 0 && absl::string_view("+-*/%~|.,:()[]{}<>=").find(c) !=
                            absl::string_view::npos) {
          len = 1;
        }
        if (len == 0) {
          return SyntaxError(line_, absl::StrCat("unexpected character '",
                                                 std::string(1, c), "'"));
        }
        if (c == '(' || c == '[' || c == '{') {
          brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
        } else if (c == ')' || c == ']' || c == '}') {
          if (brackets.empty() || brackets.back() != c) {
            return SyntaxError(
                line_, absl::StrCat("unbalanced '", std::string(1, c), "'"));
          }
          brackets.pop_back();
        }
        Push(Token::Kind::kOp, line_, std::string(rest.substr(0, len)));
        Advance(pos_ + len);
      }
    }
  }

  absl::Status LexNumber(absl::string_view rest) {
    size_t len = 0;
    bool is_float = false;
    auto digits = [&] {
      while (len < rest.size() &&
             (std::isdigit(static_cast<unsigned char>(rest[len])) ||
              rest[len] == '_')) {
        ++len;
      }
    };
    digits();
    if (len + 1 < rest.size() && rest[len] == '.' &&
        std::isdigit(static_cast<unsigned char>(rest[len + 1]))) {
      is_float = true;
      ++len;
      digits();
    }
    if (len < rest.size() && (rest[len] == 'e' || rest[len] == 'E')) {
      size_t k = len + 1;
      if (k < rest.size() && (rest[k] == '+' || rest[k] == '-')) ++k;
      if (k < rest.size() &&
          std::isdigit(static_cast<unsigned char>(rest[k]))) {
        is_float = true;
        len = k;
        digits();
      }
    }
    std::string text;
    for (char ch : rest.substr(0, len)) {
      if (ch != '_') text.push_back(ch);
    }
    Token token{is_float ? Token::Kind::kFloat : Token::Kind::kInt, line_,
                text};
    errno = 0;
    if (is_float) {
      token.f = std::strtod(text.c_str(), nullptr);
    } else {
      token.i = std::strtoll(text.c_str(), nullptr, 10);
    }
    if (errno == ERANGE) {
      return SyntaxError(line_, absl::StrCat("number out of range: ", text));
    }
    tokens_.push_back(std::move(token));
    Advance(pos_ + len);
    return absl::OkStatus();
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------- Parser ---

const std::set<std::string, std::less<>>& KnownFilters() {
  static const auto* filters = new std::set<std::string, std::less<>>{
      "abs",     "capitalize", "count",  "d",          "default",    "first",
      "float",   "int",        "items",  "join",       "last",       "length",
      "list",    "lower",      "map",    "reject",     "rejectattr", "replace",
      "reverse", "safe",       "select", "selectattr", "string",     "title",
      "tojson",  "trim",       "upper"};
  return *filters;
}
const std::set<std::string, std::less<>>& KnownTests() {
  static const auto* tests = new std::set<std::string, std::less<>>{
      "boolean",  "defined",   "divisibleby", "eq",     "equalto",  "even",
      "false",    "float",     "ge",          "gt",     "in",       "integer",
      "iterable", "le",        "lower",       "lt",     "mapping",  "ne",
      "none",     "number",    "odd",         "sameas", "sequence", "string",
      "true",     "undefined", "upper"};
  return *tests;
}
const std::set<std::string, std::less<>>& KnownMethods() {
  static const auto* methods = new std::set<std::string, std::less<>>{
      "capitalize", "endswith", "get",     "items",  "keys",
      "lower",      "lstrip",   "replace", "rstrip", "split",
      "startswith", "strip",    "title",   "upper",  "values"};
  return *methods;
}
const std::set<std::string, std::less<>>& KnownFunctions() {
  static const auto* functions = new std::set<std::string, std::less<>>{
      "namespace", "raise_exception", "range", "strftime_now"};
  return *functions;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<Body> ParseTemplate() {
    Body body;
    RETURN_IF_ERROR(ParseBody(&body, {}, "", 0).status());
    return body;
  }

 private:
  const Token& Peek(size_t ahead = 0) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  const Token& Next() {
    const Token& t = Peek();
    if (pos_ < tokens_.size() - 1) ++pos_;
    return t;
  }
  bool IsOp(absl::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == Token::Kind::kOp && Peek(ahead).text == op;
  }
  bool IsName(absl::string_view name, size_t ahead = 0) const {
    return Peek(ahead).kind == Token::Kind::kName && Peek(ahead).text == name;
  }
  bool SkipOp(absl::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(absl::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }
  std::string Describe(const Token& t) const {
    switch (t.kind) {
      case Token::Kind::kBlockEnd:
        return "end of tag '%}'";
      case Token::Kind::kVarEnd:
        return "end of print '}}'";
      case Token::Kind::kEof:
        return "end of template";
      case Token::Kind::kString:
        return "string literal";
      default:
        return absl::StrCat("'", t.text, "'");
    }
  }
  absl::Status Unexpected(absl::string_view expected) const {
    return SyntaxError(Peek().line, absl::StrCat("expected ", expected,
                                                 ", got ", Describe(Peek())));
  }
  absl::Status ExpectOp(absl::string_view op) {
    if (!SkipOp(op)) return Unexpected(absl::StrCat("'", op, "'"));
    return absl::OkStatus();
  }
  absl::Status ExpectBlockEnd() {
    if (Peek().kind != Token::Kind::kBlockEnd) return Unexpected("'%}'");
    Next();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().kind != Token::Kind::kName) return Unexpected("a name");
    return Next().text;
  }

  // Nesting guard for the recursive descent (and so for the renderer, whose
  // recursion follows the tree).
  class Nest {
   public:
    explicit Nest(Parser* p) : p_(p) { ++p_->depth_; }
    ~Nest() { --p_->depth_; }
    absl::Status Check() const {
      if (p_->depth_ > kMaxNesting) {
        return LineError(absl::StatusCode::kResourceExhausted, p_->Peek().line,
                         "template nested too deeply");
      }
      return absl::OkStatus();
    }

   private:
    Parser* p_;
  };

  // Parses nodes into `body` up to a block tag named in `ends`, consumes
  // "{% name" and returns the name; the caller parses the rest of that tag.
  absl::StatusOr<std::string> ParseBody(
      Body* body, std::initializer_list<absl::string_view> ends,
      absl::string_view opener, int opener_line) {
    Nest nest(this);
    RETURN_IF_ERROR(nest.Check());
    while (true) {
      const Token& t = Peek();
      switch (t.kind) {
        case Token::Kind::kEof:
          if (ends.size() == 0) return std::string();
          return SyntaxError(
              opener_line,
              absl::StrCat("unterminated '", opener, "' block (expected '{% ",
                           std::string(*(ends.end() - 1)), " %}')"));
        case Token::Kind::kText: {
          auto node = std::make_unique<Node>();
          node->kind = Node::Kind::kText;
          node->line = t.line;
          node->text = Next().text;
          body->push_back(std::move(node));
          break;
        }
        case Token::Kind::kVarBegin: {
          Next();
          auto node = std::make_unique<Node>();
          node->kind = Node::Kind::kOutput;
          node->line = t.line;
          ASSIGN_OR_RETURN(node->expr, ParseExpr());
          if (Peek().kind != Token::Kind::kVarEnd) return Unexpected("'}}'");
          Next();
          body->push_back(std::move(node));
          break;
        }
        case Token::Kind::kBlockBegin: {
          Next();
          const int line = Peek().line;
          ASSIGN_OR_RETURN(std::string tag, ExpectName());
          if (std::find(ends.begin(), ends.end(), tag) != ends.end()) {
            return tag;
          }
          if (ends.size() > 0 && IsStrayTag(tag)) {
            return SyntaxError(
                line, absl::StrCat("unexpected '", tag, "' in the '", opener,
                                   "' block opened at line ", opener_line,
                                   " (expected '",
                                   std::string(*(ends.end() - 1)), "')"));
          }
          RETURN_IF_ERROR(ParseTag(tag, line, body));
          break;
        }
        default:
          return Unexpected("text or a tag");
      }
    }
  }

  // Tags that only continue or close a block.
  static bool IsStrayTag(absl::string_view tag) {
    return tag == "elif" || tag == "else" || tag == "endfor" ||
           tag == "endif" || tag == "endgeneration";
  }

  absl::Status ParseTag(const std::string& tag, int line, Body* body) {
    if (tag == "for") return ParseFor(line, body);
    if (tag == "if") return ParseIf(line, body);
    if (tag == "set") return ParseSet(line, body);
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) {
        return SyntaxError(line, absl::StrCat("'", tag, "' outside a loop"));
      }
      RETURN_IF_ERROR(ExpectBlockEnd());
      auto node = std::make_unique<Node>();
      node->kind = tag == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
      node->line = line;
      body->push_back(std::move(node));
      return absl::OkStatus();
    }
    if (tag == "generation") {
      // transformers' AssistantTracker tag: it only marks assistant text,
      // which plain rendering prints as is.
      RETURN_IF_ERROR(ExpectBlockEnd());
      RETURN_IF_ERROR(
          ParseBody(body, {"endgeneration"}, "generation", line).status());
      return ExpectBlockEnd();
    }
    if (IsStrayTag(tag)) {
      return SyntaxError(line, absl::StrCat("unexpected '", tag, "'"));
    }
    return Unsupported(line, "tag", tag);
  }

  absl::Status ParseFor(int line, Body* body) {
    auto node = std::make_unique<Node>();
    node->kind = Node::Kind::kFor;
    node->line = line;
    do {
      ASSIGN_OR_RETURN(std::string target, ExpectName());
      node->targets.push_back(std::move(target));
    } while (SkipOp(","));
    if (!SkipName("in")) return Unexpected("'in'");
    // As Jinja: no conditional expression ("if" starts the loop filter),
    // and "a, b" is a tuple.
    ASSIGN_OR_RETURN(node->expr, ParseOr());
    if (IsOp(",")) {
      ExprPtr tuple = MakeExpr(Expr::Kind::kList, node->expr->line);
      tuple->args.push_back(std::move(node->expr));
      while (SkipOp(",") && Peek().kind != Token::Kind::kBlockEnd &&
             !IsName("if")) {
        ASSIGN_OR_RETURN(ExprPtr item, ParseOr());
        tuple->args.push_back(std::move(item));
      }
      node->expr = std::move(tuple);
    }
    if (SkipName("if")) {
      ASSIGN_OR_RETURN(node->loop_filter, ParseExpr());
    }
    if (IsName("recursive")) return Unsupported(line, "loop", "recursive");
    RETURN_IF_ERROR(ExpectBlockEnd());
    ++loop_depth_;
    auto end = ParseBody(&node->body, {"else", "endfor"}, "for", line);
    --loop_depth_;
    RETURN_IF_ERROR(end.status());
    if (*end == "else") {
      RETURN_IF_ERROR(ExpectBlockEnd());
      RETURN_IF_ERROR(
          ParseBody(&node->else_body, {"endfor"}, "for", line).status());
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    body->push_back(std::move(node));
    return absl::OkStatus();
  }

  absl::Status ParseIf(int line, Body* body) {
    auto node = std::make_unique<Node>();
    node->kind = Node::Kind::kIf;
    node->line = line;
    std::string end = "elif";
    while (end == "elif") {
      // Jinja parses conditions without "x if c else y".
      ASSIGN_OR_RETURN(ExprPtr cond, ParseOr());
      RETURN_IF_ERROR(ExpectBlockEnd());
      Body branch;
      ASSIGN_OR_RETURN(
          end, ParseBody(&branch, {"elif", "else", "endif"}, "if", line));
      node->branches.emplace_back(std::move(cond), std::move(branch));
    }
    if (end == "else") {
      RETURN_IF_ERROR(ExpectBlockEnd());
      RETURN_IF_ERROR(
          ParseBody(&node->else_body, {"endif"}, "if", line).status());
    }
    RETURN_IF_ERROR(ExpectBlockEnd());
    body->push_back(std::move(node));
    return absl::OkStatus();
  }

  absl::Status ParseSet(int line, Body* body) {
    auto node = std::make_unique<Node>();
    node->kind = Node::Kind::kSet;
    node->line = line;
    ASSIGN_OR_RETURN(std::string target, ExpectName());
    node->targets.push_back(std::move(target));
    if (SkipOp(".")) {
      ASSIGN_OR_RETURN(std::string attribute, ExpectName());
      node->targets.push_back(std::move(attribute));
      node->set_attribute = true;
    }
    if (Peek().kind == Token::Kind::kBlockEnd) {
      return Unsupported(line, "tag", "set ... endset (block assignment)");
    }
    if (IsOp(",")) return Unsupported(line, "tag", "set with several targets");
    RETURN_IF_ERROR(ExpectOp("="));
    ASSIGN_OR_RETURN(node->expr, ParseExpr());
    RETURN_IF_ERROR(ExpectBlockEnd());
    body->push_back(std::move(node));
    return absl::OkStatus();
  }

  ExprPtr MakeExpr(Expr::Kind kind, int line, std::string name = "") {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->name = std::move(name);
    return e;
  }
  ExprPtr MakeBinary(Expr::Kind kind, int line, std::string op, ExprPtr a,
                     ExprPtr b) {
    ExprPtr e = MakeExpr(kind, line, std::move(op));
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  absl::StatusOr<ExprPtr> ParseExpr() {
    Nest nest(this);
    RETURN_IF_ERROR(nest.Check());
    ASSIGN_OR_RETURN(ExprPtr e, ParseOr());
    while (IsName("if")) {
      const int line = Next().line;
      ExprPtr cond_expr = MakeExpr(Expr::Kind::kCond, line);
      ASSIGN_OR_RETURN(ExprPtr cond, ParseOr());
      ExprPtr otherwise;
      if (SkipName("else")) {
        ASSIGN_OR_RETURN(otherwise, ParseExpr());
      }
      cond_expr->args.push_back(std::move(cond));
      cond_expr->args.push_back(std::move(e));
      cond_expr->args.push_back(std::move(otherwise));
      e = std::move(cond_expr);
    }
    return e;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    ASSIGN_OR_RETURN(ExprPtr e, ParseAnd());
    while (IsName("or")) {
      const int line = Next().line;
      ASSIGN_OR_RETURN(ExprPtr rhs, ParseAnd());
      e = MakeBinary(Expr::Kind::kOr, line, "or", std::move(e), std::move(rhs));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    ASSIGN_OR_RETURN(ExprPtr e, ParseNot());
    while (IsName("and")) {
      const int line = Next().line;
      ASSIGN_OR_RETURN(ExprPtr rhs, ParseNot());
      e = MakeBinary(Expr::Kind::kAnd, line, "and", std::move(e),
                     std::move(rhs));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      Nest nest(this);
      RETURN_IF_ERROR(nest.Check());
      ExprPtr e = MakeExpr(Expr::Kind::kNot, Next().line);
      ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
      e->args.push_back(std::move(operand));
      return e;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    ASSIGN_OR_RETURN(ExprPtr e, ParseMath1());
    while (true) {
      const int line = Peek().line;
      std::string op;
      bool negated = false;
      if (Peek().kind == Token::Kind::kOp &&
          (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp("<=") || IsOp(">") ||
           IsOp(">="))) {
        op = Next().text;
      } else if (SkipName("in")) {
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        Next();
        Next();
        op = "in";
        negated = true;
      } else {
        return e;
      }
      ASSIGN_OR_RETURN(ExprPtr rhs, ParseMath1());
      e = MakeBinary(Expr::Kind::kBinary, line, op, std::move(e),
                     std::move(rhs));
      e->negated = negated;
    }
  }

  // One left-associative level of binary operators.
  absl::StatusOr<ExprPtr> ParseLevel(
      std::initializer_list<absl::string_view> ops,
      absl::StatusOr<ExprPtr> (Parser::*next)()) {
    ASSIGN_OR_RETURN(ExprPtr e, (this->*next)());
    while (true) {
      const auto op = std::find_if(
          ops.begin(), ops.end(), [&](absl::string_view o) { return IsOp(o); });
      if (op == ops.end()) return e;
      const int line = Next().line;
      ASSIGN_OR_RETURN(ExprPtr rhs, (this->*next)());
      e = MakeBinary(Expr::Kind::kBinary, line, std::string(*op), std::move(e),
                     std::move(rhs));
    }
  }
  absl::StatusOr<ExprPtr> ParseMath1() {
    return ParseLevel({"+", "-"}, &Parser::ParseConcat);
  }
  absl::StatusOr<ExprPtr> ParseConcat() {
    return ParseLevel({"~"}, &Parser::ParseMath2);
  }
  absl::StatusOr<ExprPtr> ParseMath2() {
    return ParseLevel({"*", "/", "//", "%"}, &Parser::ParsePow);
  }
  absl::StatusOr<ExprPtr> ParsePow() {
    return ParseLevel({"**"}, &Parser::ParseUnaryWithFilters);
  }
  absl::StatusOr<ExprPtr> ParseUnaryWithFilters() { return ParseUnary(true); }

  // As Jinja: a sign binds tighter than filters, "-x|abs" is "(-x)|abs".
  absl::StatusOr<ExprPtr> ParseUnary(bool with_filters) {
    Nest nest(this);
    RETURN_IF_ERROR(nest.Check());
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      const Token& sign = Next();
      e = MakeExpr(sign.text == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos,
                   sign.line);
      ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary(false));
      e->args.push_back(std::move(operand));
    } else {
      ASSIGN_OR_RETURN(e, ParsePrimary());
    }
    ASSIGN_OR_RETURN(e, ParsePostfix(std::move(e)));
    if (!with_filters) return e;
    while (true) {
      if (IsOp("|")) {
        const int line = Next().line;
        ASSIGN_OR_RETURN(std::string name, ExpectName());
        if (!KnownFilters().count(name)) {
          return Unsupported(line, "filter", name);
        }
        ExprPtr filter = MakeExpr(Expr::Kind::kFilter, line, name);
        filter->args.push_back(std::move(e));
        if (SkipOp("(")) {
          RETURN_IF_ERROR(ParseArgs(filter.get()));
        }
        RETURN_IF_ERROR(CheckFilterArgs(*filter));
        e = std::move(filter);
      } else if (IsName("is")) {
        const int line = Next().line;
        const bool negated = SkipName("not");
        ASSIGN_OR_RETURN(std::string name, ExpectName());
        if (!KnownTests().count(name)) return Unsupported(line, "test", name);
        ExprPtr test = MakeExpr(Expr::Kind::kTest, line, name);
        test->negated = negated;
        test->args.push_back(std::move(e));
        RETURN_IF_ERROR(ParseTestArgs(test.get()));
        e = std::move(test);
      } else {
        return e;
      }
    }
  }

  // As Jinja: "is test(args)", or one argument without parentheses
  // ("is equalto 'x'", "is sameas false").
  absl::Status ParseTestArgs(Expr* test) {
    if (SkipOp("(")) return ParseArgs(test);
    const Token& t = Peek();
    const bool starts_primary =
        t.kind == Token::Kind::kString || t.kind == Token::Kind::kInt ||
        t.kind == Token::Kind::kFloat || IsOp("(") || IsOp("[") || IsOp("{") ||
        (t.kind == Token::Kind::kName && t.text != "else" && t.text != "or" &&
         t.text != "and");
    if (!starts_primary) return absl::OkStatus();
    if (IsName("is")) {
      return SyntaxError(t.line, "tests cannot be chained with 'is'");
    }
    ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
    ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
    test->args.push_back(std::move(arg));
    return absl::OkStatus();
  }

  // Filters that name a test take it as a string literal, checked here so
  // an unknown test fails at parse as elsewhere; map only maps attributes.
  absl::Status CheckFilterArgs(const Expr& filter) {
    const std::string& f = filter.name;
    const size_t test_arg = f == "select" || f == "reject"           ? 1
                            : f == "selectattr" || f == "rejectattr" ? 2
                                                                     : 0;
    if (test_arg > 0 && filter.args.size() > test_arg) {
      const Expr& arg = *filter.args[test_arg];
      if (arg.kind != Expr::Kind::kLiteral ||
          arg.literal.kind != Value::Kind::kString) {
        return SyntaxError(
            filter.line,
            absl::StrCat("filter '", f, "' needs the test's name as a string"));
      }
      if (!KnownTests().count(arg.literal.s)) {
        return Unsupported(filter.line, "test", arg.literal.s);
      }
    }
    if (f == "map" && filter.args.size() > 1) {
      return Unsupported(filter.line, "filter", "map of a filter");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Peek();
    const int line = t.line;
    switch (t.kind) {
      case Token::Kind::kName: {
        const std::string name = Next().text;
        ExprPtr e = MakeExpr(Expr::Kind::kLiteral, line);
        if (name == "true" || name == "True") {
          e->literal = Bool(true);
        } else if (name == "false" || name == "False") {
          e->literal = Bool(false);
        } else if (name == "none" || name == "None") {
          e->literal = None();
        } else {
          e->kind = Expr::Kind::kName;
          e->name = name;
        }
        return e;
      }
      case Token::Kind::kString: {
        std::string s;
        while (Peek().kind == Token::Kind::kString) s += Next().text;
        ExprPtr e = MakeExpr(Expr::Kind::kLiteral, line);
        e->literal = Str(std::move(s));
        return e;
      }
      case Token::Kind::kInt:
      case Token::Kind::kFloat: {
        const Token& number = Next();
        ExprPtr e = MakeExpr(Expr::Kind::kLiteral, line);
        e->literal =
            number.kind == Token::Kind::kInt ? Int(number.i) : Float(number.f);
        return e;
      }
      case Token::Kind::kOp:
        if (SkipOp("(")) {
          if (SkipOp(")")) return MakeExpr(Expr::Kind::kList, line);
          ASSIGN_OR_RETURN(ExprPtr first, ParseExpr());
          if (!IsOp(",")) {
            RETURN_IF_ERROR(ExpectOp(")"));
            return first;
          }
          // A tuple; lists stand in for tuples everywhere.
          ExprPtr tuple = MakeExpr(Expr::Kind::kList, line);
          tuple->args.push_back(std::move(first));
          while (SkipOp(",") && !IsOp(")")) {
            ASSIGN_OR_RETURN(ExprPtr item, ParseExpr());
            tuple->args.push_back(std::move(item));
          }
          RETURN_IF_ERROR(ExpectOp(")"));
          return tuple;
        }
        if (SkipOp("[")) {
          ExprPtr list = MakeExpr(Expr::Kind::kList, line);
          while (!IsOp("]")) {
            ASSIGN_OR_RETURN(ExprPtr item, ParseExpr());
            list->args.push_back(std::move(item));
            if (!SkipOp(",")) break;
          }
          RETURN_IF_ERROR(ExpectOp("]"));
          return list;
        }
        if (SkipOp("{")) {
          ExprPtr dict = MakeExpr(Expr::Kind::kDict, line);
          while (!IsOp("}")) {
            ASSIGN_OR_RETURN(ExprPtr key, ParseExpr());
            RETURN_IF_ERROR(ExpectOp(":"));
            ASSIGN_OR_RETURN(ExprPtr value, ParseExpr());
            dict->args.push_back(std::move(key));
            dict->args.push_back(std::move(value));
            if (!SkipOp(",")) break;
          }
          RETURN_IF_ERROR(ExpectOp("}"));
          return dict;
        }
        break;
      default:
        break;
    }
    return Unexpected("an expression");
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr e) {
    while (true) {
      const int line = Peek().line;
      if (SkipOp(".")) {
        if (Peek().kind == Token::Kind::kInt) {
          ExprPtr item = MakeExpr(Expr::Kind::kItem, line);
          ExprPtr index = MakeExpr(Expr::Kind::kLiteral, line);
          index->literal = Int(Next().i);
          item->args.push_back(std::move(e));
          item->args.push_back(std::move(index));
          e = std::move(item);
          continue;
        }
        ASSIGN_OR_RETURN(std::string name, ExpectName());
        if (IsOp("(")) {
          if (!KnownMethods().count(name)) {
            return Unsupported(line, "method", name);
          }
          Next();
          ExprPtr call = MakeExpr(Expr::Kind::kMethod, line, name);
          call->args.push_back(std::move(e));
          RETURN_IF_ERROR(ParseArgs(call.get()));
          e = std::move(call);
        } else {
          ExprPtr attr = MakeExpr(Expr::Kind::kAttr, line, name);
          attr->args.push_back(std::move(e));
          e = std::move(attr);
        }
      } else if (SkipOp("[")) {
        ASSIGN_OR_RETURN(e, ParseSubscript(std::move(e), line));
      } else if (IsOp("(")) {
        if (e->kind != Expr::Kind::kName) {
          return Unsupported(line, "call of", "a computed value");
        }
        if (!KnownFunctions().count(e->name)) {
          return Unsupported(line, "function", e->name);
        }
        Next();
        e->kind = Expr::Kind::kCall;
        RETURN_IF_ERROR(ParseArgs(e.get()));
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr object, int line) {
    std::vector<ExprPtr> parts;
    bool slice = false;
    while (true) {
      if (IsOp(":") || IsOp("]")) {
        parts.push_back(nullptr);
      } else {
        ASSIGN_OR_RETURN(ExprPtr part, ParseExpr());
        parts.push_back(std::move(part));
      }
      if (parts.size() < 3 && SkipOp(":")) {
        slice = true;
        continue;
      }
      break;
    }
    RETURN_IF_ERROR(ExpectOp("]"));
    if (!slice && parts[0] == nullptr) return Unexpected("an index");
    ExprPtr e = MakeExpr(slice ? Expr::Kind::kSlice : Expr::Kind::kItem, line);
    e->args.push_back(std::move(object));
    for (auto& part : parts) e->args.push_back(std::move(part));
    while (slice && e->args.size() < 4) e->args.push_back(nullptr);
    return e;
  }

  // After "(": positional then keyword arguments up to ")".
  absl::Status ParseArgs(Expr* call) {
    while (!IsOp(")")) {
      if (Peek().kind == Token::Kind::kName && IsOp("=", 1)) {
        std::string name = Next().text;
        Next();
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpr());
        call->kwargs.emplace_back(std::move(name), std::move(value));
      } else {
        if (!call->kwargs.empty()) {
          return SyntaxError(Peek().line,
                             "positional argument after keyword argument");
        }
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpr());
        call->args.push_back(std::move(value));
      }
      if (!SkipOp(",")) break;
    }
    return ExpectOp(")");
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

// -------------------------------------------------------------- Renderer ---

std::string AsciiCase(std::string s, bool upper) {
  for (char& c : s) {
    c = upper ? std::toupper(static_cast<unsigned char>(c))
              : std::tolower(static_cast<unsigned char>(c));
  }
  return s;
}

// Upper-cases the first letter of each word and lower-cases the rest; a
// word starts after any character `separates` accepts.
std::string AsciiTitle(const std::string& s, bool (*separates)(char)) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const unsigned char u = c;
    c = start ? std::toupper(u) : std::tolower(u);
    start = separates(c);
  }
  return out;
}
// Jinja's title filter splits words at whitespace and "-({[<".
bool JinjaTitleSeparator(char c) {
  return IsAsciiSpace(c) ||
         absl::string_view("-({[<").find(c) != absl::string_view::npos;
}
// Python's str.title() starts a word after anything but a letter.
bool PyTitleSeparator(char c) {
  return !std::isalpha(static_cast<unsigned char>(c)) &&
         static_cast<unsigned char>(c) < 0x80;
}

std::string AsciiCapitalize(const std::string& s) {
  std::string out = AsciiCase(s, false);
  if (!out.empty()) out[0] = std::toupper(static_cast<unsigned char>(out[0]));
  return out;
}

// Python's str.islower() / isupper(), for ASCII letters.
bool AsciiCasedAll(const std::string& s, bool upper) {
  bool cased = false;
  for (char c : s) {
    const unsigned char u = c;
    if (std::isalpha(u)) {
      if ((upper && std::islower(u)) || (!upper && std::isupper(u))) {
        return false;
      }
      cased = true;
    }
  }
  return cased;
}

std::vector<std::string> PySplit(const std::string& s, const Value* sep,
                                 int64_t maxsplit) {
  std::vector<std::string> parts;
  if (sep == nullptr) {
    // Runs of whitespace separate; leading and trailing ones give nothing.
    const std::u32string u = Decode(s);
    size_t k = 0;
    while (true) {
      while (k < u.size() && IsPySpace(u[k])) ++k;
      if (k == u.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t e = u.size();
        while (e > k && IsPySpace(u[e - 1])) --e;
        parts.push_back(Encode(std::u32string_view(u).substr(k, e - k)));
        break;
      }
      size_t e = k;
      while (e < u.size() && !IsPySpace(u[e])) ++e;
      parts.push_back(Encode(std::u32string_view(u).substr(k, e - k)));
      k = e;
    }
    return parts;
  }
  size_t start = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    const size_t found = s.find(sep->s, start);
    if (found == std::string::npos) break;
    parts.push_back(s.substr(start, found - start));
    start = found + sep->s.size();
  }
  parts.push_back(s.substr(start));
  return parts;
}

std::string PyReplace(const std::string& s, const std::string& old,
                      const std::string& replacement, int64_t count) {
  std::string out;
  size_t start = 0;
  int64_t done = 0;
  if (old.empty()) {
    // Python inserts the replacement around every code point.
    const std::u32string u = Decode(s);
    for (char32_t cp : u) {
      if (count >= 0 && done >= count) {
        AppendUtf8(cp, &out);
        continue;
      }
      out += replacement;
      AppendUtf8(cp, &out);
      ++done;
    }
    if (count < 0 || done < count) out += replacement;
    return out;
  }
  while (count < 0 || done < count) {
    const size_t found = s.find(old, start);
    if (found == std::string::npos) break;
    out.append(s, start, found - start);
    out += replacement;
    start = found + old.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

// Python's slice.indices, enumerated.
absl::StatusOr<std::vector<int64_t>> SliceIndices(int64_t length,
                                                  const Value& start_v,
                                                  const Value& stop_v,
                                                  const Value& step_v) {
  auto as_int = [](const Value& v) -> std::optional<int64_t> {
    if (v.kind == Value::Kind::kNone || v.is_undefined()) return std::nullopt;
    return v.AsInt();
  };
  for (const Value* v : {&start_v, &stop_v, &step_v}) {
    if (v->kind != Value::Kind::kNone && !v->is_undefined() &&
        v->kind != Value::Kind::kInt && v->kind != Value::Kind::kBool) {
      return absl::InvalidArgumentError(
          "slice indices must be integers or None");
    }
  }
  const int64_t step = as_int(step_v).value_or(1);
  if (step == 0) return absl::InvalidArgumentError("slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t x = *v;
    if (x < 0) x += length;
    if (step > 0) return std::clamp<int64_t>(x, 0, length);
    return std::clamp<int64_t>(x, -1, length - 1);
  };
  const int64_t start = clamp(as_int(start_v), step > 0 ? 0 : length - 1);
  const int64_t stop = clamp(as_int(stop_v), step > 0 ? length : -1);
  std::vector<int64_t> indices;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
    indices.push_back(k);
  }
  return indices;
}

// A call's evaluated arguments bound to parameter names; absent ones empty.
using Bound = std::vector<std::optional<Value>>;

class Renderer {
 public:
  explicit Renderer(size_t max_bytes) : max_bytes_(max_bytes) {
    scopes_.emplace_back();
  }

  void SetGlobal(const std::string& name, Value value) {
    scopes_.front()[name] = std::move(value);
  }

  absl::Status Exec(const Body& body) {
    for (const auto& node : body) {
      RETURN_IF_ERROR(ExecNode(*node));
      if (flow_ != Flow::kNormal) break;
    }
    return absl::OkStatus();
  }

  std::string TakeOutput() { return std::move(out_); }

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using Scope = std::unordered_map<std::string, Value>;

  absl::Status Error(int line, absl::string_view message) const {
    return LineError(absl::StatusCode::kInvalidArgument, line, message);
  }
  absl::Status UndefinedError(int line, const Value& v) const {
    return Error(line, absl::StrCat("'", v.s, "' is undefined"));
  }
  absl::Status TypeError(int line, absl::string_view what, const Value& a,
                         const Value& b) const {
    return Error(line,
                 absl::StrCat("unsupported operand types for ", what, ": '",
                              TypeName(a), "' and '", TypeName(b), "'"));
  }
  absl::Status CheckSize(size_t bytes, int line) const {
    if (bytes > max_bytes_) {
      return LineError(
          absl::StatusCode::kResourceExhausted, line,
          absl::StrCat("rendering exceeds ", max_bytes_, " bytes"));
    }
    return absl::OkStatus();
  }
  // Every list, dict and namespace the template builds is checked here:
  // bounded in size, and holding no namespace, so that no value can
  // contain itself.
  absl::StatusOr<Value> Built(Value v, int line) const {
    size_t total = 0;
    auto check = [&](const Value& item) -> absl::Status {
      if (item.kind == Value::Kind::kNamespace) {
        return Error(line,
                     "a namespace cannot be stored in a list, dict or "
                     "namespace");
      }
      total += Footprint(item, max_bytes_);
      return CheckSize(total, line);
    };
    if (v.kind == Value::Kind::kList) {
      for (const Value& item : *v.list) RETURN_IF_ERROR(check(item));
    } else {
      for (const auto& [key, item] : *v.dict) RETURN_IF_ERROR(check(item));
    }
    return v;
  }

  absl::Status Emit(const std::string& text, int line) {
    RETURN_IF_ERROR(CheckSize(out_.size() + text.size(), line));
    out_ += text;
    return absl::OkStatus();
  }
  absl::Status Step(int line) {
    if (++steps_ > kMaxSteps) {
      return LineError(absl::StatusCode::kResourceExhausted, line,
                       absl::StrCat("rendering exceeds ", kMaxSteps, " steps"));
    }
    return absl::OkStatus();
  }

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      const auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    if (KnownFunctions().count(name)) {
      Value function;
      function.kind = Value::Kind::kFunction;
      function.s = name;
      return function;
    }
    return Undefined(name);
  }

  absl::Status ExecNode(const Node& node) {
    RETURN_IF_ERROR(Step(node.line));
    switch (node.kind) {
      case Node::Kind::kText:
        return Emit(node.text, node.line);
      case Node::Kind::kOutput: {
        ASSIGN_OR_RETURN(Value v, Eval(*node.expr));
        return Emit(PyStr(v), node.line);
      }
      case Node::Kind::kIf:
        for (const auto& [cond, branch] : node.branches) {
          ASSIGN_OR_RETURN(Value c, Eval(*cond));
          if (Truthy(c)) return Exec(branch);
        }
        return Exec(node.else_body);
      case Node::Kind::kFor:
        return ExecFor(node);
      case Node::Kind::kSet: {
        ASSIGN_OR_RETURN(Value v, Eval(*node.expr));
        if (!node.set_attribute) {
          scopes_.back()[node.targets[0]] = std::move(v);
          return absl::OkStatus();
        }
        const Value ns = Lookup(node.targets[0]);
        if (ns.kind != Value::Kind::kNamespace) {
          return Error(node.line, absl::StrCat("cannot assign attribute on '",
                                               node.targets[0],
                                               "', which is not a "
                                               "namespace"));
        }
        if (v.kind == Value::Kind::kNamespace) {
          return Error(node.line,
                       "a namespace cannot be stored in a list, "
                       "dict or namespace");
        }
        for (auto& [key, item] : *ns.dict) {
          if (key == node.targets[1]) {
            item = std::move(v);
            return absl::OkStatus();
          }
        }
        ns.dict->emplace_back(node.targets[1], std::move(v));
        return absl::OkStatus();
      }
      case Node::Kind::kBreak:
        flow_ = Flow::kBreak;
        return absl::OkStatus();
      case Node::Kind::kContinue:
        flow_ = Flow::kContinue;
        return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  absl::Status Bind(const Node& node, const Value& item) {
    Scope& scope = scopes_.back();
    if (node.targets.size() == 1) {
      scope[node.targets[0]] = item;
      return absl::OkStatus();
    }
    if (item.kind != Value::Kind::kList ||
        item.list->size() != node.targets.size()) {
      return Error(node.line,
                   absl::StrCat("cannot unpack ", TypeName(item), " into ",
                                node.targets.size(), " loop variables"));
    }
    for (size_t k = 0; k < node.targets.size(); ++k) {
      scope[node.targets[k]] = (*item.list)[k];
    }
    return absl::OkStatus();
  }

  // Each iteration sets its variables in a fresh scope, so they neither
  // outlive the loop nor carry over to the next iteration, as in Jinja.
  absl::Status ExecFor(const Node& node) {
    ASSIGN_OR_RETURN(Value iterable, Eval(*node.expr));
    ASSIGN_OR_RETURN(List items, Iterate(iterable, node.line));
    if (node.loop_filter != nullptr) {
      List kept;
      for (Value& item : items) {
        RETURN_IF_ERROR(Step(node.line));
        scopes_.emplace_back();
        RETURN_IF_ERROR(Bind(node, item));
        ASSIGN_OR_RETURN(Value keep, Eval(*node.loop_filter));
        scopes_.pop_back();
        if (Truthy(keep)) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      RETURN_IF_ERROR(Step(node.line));
      scopes_.emplace_back();
      RETURN_IF_ERROR(Bind(node, items[k]));
      Dict loop = {
          {"index", Int(k + 1)},
          {"index0", Int(k)},
          {"revindex", Int(n - k)},
          {"revindex0", Int(n - k - 1)},
          {"first", Bool(k == 0)},
          {"last", Bool(k == n - 1)},
          {"length", Int(n)},
          {"previtem", k > 0 ? items[k - 1] : Undefined("loop.previtem")},
          {"nextitem", k + 1 < n ? items[k + 1] : Undefined("loop.nextitem")},
      };
      scopes_.back()["loop"] = MakeDict(std::move(loop));
      RETURN_IF_ERROR(Exec(node.body));
      scopes_.pop_back();
      const Flow flow = flow_;
      flow_ = Flow::kNormal;
      if (flow == Flow::kBreak) break;
    }
    if (n == 0) return Exec(node.else_body);
    return absl::OkStatus();
  }

  absl::StatusOr<List> Iterate(const Value& v, int line) const {
    switch (v.kind) {
      case Value::Kind::kUndefined:
        return List();
      case Value::Kind::kList:
        return *v.list;
      case Value::Kind::kDict: {
        List keys;
        for (const auto& [key, item] : *v.dict) keys.push_back(Str(key));
        return keys;
      }
      case Value::Kind::kString: {
        List chars;
        for (char32_t cp : Decode(v.s)) {
          std::string c;
          AppendUtf8(cp, &c);
          chars.push_back(Str(std::move(c)));
        }
        return chars;
      }
      default:
        return Error(
            line, absl::StrCat("'", TypeName(v), "' object is not iterable"));
    }
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.literal;
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kList: {
        List list;
        for (const auto& item : e.args) {
          ASSIGN_OR_RETURN(Value v, Eval(*item));
          list.push_back(std::move(v));
        }
        return Built(MakeList(std::move(list)), e.line);
      }
      case Expr::Kind::kDict: {
        Dict dict;
        for (size_t k = 0; k < e.args.size(); k += 2) {
          ASSIGN_OR_RETURN(Value key, Eval(*e.args[k]));
          ASSIGN_OR_RETURN(Value value, Eval(*e.args[k + 1]));
          if (key.kind != Value::Kind::kString) {
            return Error(e.line, "dict keys must be strings");
          }
          auto it = std::find_if(dict.begin(), dict.end(), [&](const auto& p) {
            return p.first == key.s;
          });
          if (it != dict.end()) {
            it->second = std::move(value);
          } else {
            dict.emplace_back(std::move(key.s), std::move(value));
          }
        }
        return Built(MakeDict(std::move(dict)), e.line);
      }
      case Expr::Kind::kAttr: {
        ASSIGN_OR_RETURN(Value object, Eval(*e.args[0]));
        return GetAttr(object, e.name, e.line);
      }
      case Expr::Kind::kItem: {
        ASSIGN_OR_RETURN(Value object, Eval(*e.args[0]));
        ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
        return GetItem(object, key, e.line);
      }
      case Expr::Kind::kSlice:
        return EvalSlice(e);
      case Expr::Kind::kCall:
        return EvalCall(e);
      case Expr::Kind::kMethod:
        return EvalMethod(e);
      case Expr::Kind::kFilter:
        return EvalFilter(e);
      case Expr::Kind::kTest: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        List args;
        for (size_t k = 1; k < e.args.size(); ++k) {
          ASSIGN_OR_RETURN(Value arg, Eval(*e.args[k]));
          args.push_back(std::move(arg));
        }
        ASSIGN_OR_RETURN(bool passed, ApplyTest(e.name, v, args, e.line));
        return Bool(passed != e.negated);
      }
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        if (v.is_undefined()) return UndefinedError(e.line, v);
        if (!v.is_number()) {
          return Error(e.line,
                       absl::StrCat("bad operand type for unary ",
                                    e.kind == Expr::Kind::kNeg ? "-" : "+",
                                    ": '", TypeName(v), "'"));
        }
        if (e.kind == Expr::Kind::kPos) {
          return v.kind == Value::Kind::kFloat ? v : Int(v.AsInt());
        }
        if (v.kind == Value::Kind::kFloat) return Float(-v.f);
        if (v.AsInt() == std::numeric_limits<int64_t>::min()) {
          return Error(e.line, "integer overflow");
        }
        return Int(-v.AsInt());
      }
      case Expr::Kind::kNot: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        return Bool(!Truthy(v));
      }
      case Expr::Kind::kAnd:
      case Expr::Kind::kOr: {
        // Python's and/or return an operand, not a bool.
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (Truthy(a) == (e.kind == Expr::Kind::kOr)) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kCond: {
        ASSIGN_OR_RETURN(Value c, Eval(*e.args[0]));
        if (Truthy(c)) return Eval(*e.args[1]);
        if (e.args[2] == nullptr) return Undefined("conditional expression");
        return Eval(*e.args[2]);
      }
      case Expr::Kind::kBinary: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
        return Binary(e, a, b);
      }
    }
    return Error(e.line, "unknown expression");
  }

  absl::StatusOr<Value> GetAttr(const Value& object, const std::string& name,
                                int line) const {
    if (object.is_undefined()) return UndefinedError(line, object);
    if (object.kind == Value::Kind::kDict ||
        object.kind == Value::Kind::kNamespace) {
      const Value* found = DictFind(*object.dict, name);
      if (found != nullptr) return *found;
    }
    return Undefined(name);
  }

  absl::StatusOr<Value> GetItem(const Value& object, const Value& key,
                                int line) const {
    if (object.is_undefined()) return UndefinedError(line, object);
    if (object.kind == Value::Kind::kDict && key.kind == Value::Kind::kString) {
      return GetAttr(object, key.s, line);
    }
    const bool int_key =
        key.kind == Value::Kind::kInt || key.kind == Value::Kind::kBool;
    if (object.kind == Value::Kind::kList && int_key) {
      int64_t k = key.AsInt();
      const int64_t n = static_cast<int64_t>(object.list->size());
      if (k < 0) k += n;
      if (k >= 0 && k < n) return (*object.list)[k];
    } else if (object.kind == Value::Kind::kString && int_key) {
      const std::u32string u = Decode(object.s);
      int64_t k = key.AsInt();
      const int64_t n = static_cast<int64_t>(u.size());
      if (k < 0) k += n;
      if (k >= 0 && k < n) return Str(Encode(u.substr(k, 1)));
    }
    return Undefined(absl::StrCat("[", PyRepr(key), "]"));
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e) {
    ASSIGN_OR_RETURN(Value object, Eval(*e.args[0]));
    Value parts[3];
    for (int k = 0; k < 3; ++k) {
      if (e.args[k + 1] != nullptr) {
        ASSIGN_OR_RETURN(parts[k], Eval(*e.args[k + 1]));
      }
    }
    if (object.is_undefined()) return UndefinedError(e.line, object);
    if (object.kind == Value::Kind::kList) {
      auto indices = SliceIndices(static_cast<int64_t>(object.list->size()),
                                  parts[0], parts[1], parts[2]);
      if (!indices.ok()) return Error(e.line, indices.status().message());
      List out;
      for (int64_t k : *indices) out.push_back((*object.list)[k]);
      return MakeList(std::move(out));
    }
    if (object.kind == Value::Kind::kString) {
      const std::u32string u = Decode(object.s);
      auto indices = SliceIndices(static_cast<int64_t>(u.size()), parts[0],
                                  parts[1], parts[2]);
      if (!indices.ok()) return Error(e.line, indices.status().message());
      std::string out;
      for (int64_t k : *indices) AppendUtf8(u[k], &out);
      return Str(std::move(out));
    }
    return Error(e.line, absl::StrCat("'", TypeName(object),
                                      "' object is not subscriptable"));
  }

  // Evaluates a call's arguments and binds them to `params` by position or
  // name, as Python does.
  absl::StatusOr<Bound> BindArgs(
      const Expr& e, size_t first_arg,
      std::initializer_list<absl::string_view> params, absl::string_view what) {
    Bound bound(params.size());
    if (e.args.size() - first_arg > params.size()) {
      return Error(e.line, absl::StrCat(what, " takes at most ", params.size(),
                                        " arguments"));
    }
    for (size_t k = first_arg; k < e.args.size(); ++k) {
      ASSIGN_OR_RETURN(bound[k - first_arg], Eval(*e.args[k]));
    }
    for (const auto& [name, arg] : e.kwargs) {
      const auto it = std::find(params.begin(), params.end(), name);
      if (it == params.end()) {
        return Error(e.line, absl::StrCat(what,
                                          " got an unexpected keyword "
                                          "argument '",
                                          name, "'"));
      }
      ASSIGN_OR_RETURN(bound[it - params.begin()], Eval(*arg));
    }
    return bound;
  }

  absl::StatusOr<std::string> StringArg(const std::optional<Value>& v,
                                        absl::string_view what,
                                        int line) const {
    if (!v.has_value() || v->kind != Value::Kind::kString) {
      return Error(line, absl::StrCat(what, " expects a string argument"));
    }
    return v->s;
  }
  absl::StatusOr<int64_t> IntArg(const std::optional<Value>& v,
                                 absl::string_view what, int line) const {
    if (!v.has_value() ||
        (v->kind != Value::Kind::kInt && v->kind != Value::Kind::kBool)) {
      return Error(line, absl::StrCat(what, " expects an integer argument"));
    }
    return v->AsInt();
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    if (e.name == "namespace") {
      if (!e.args.empty()) {
        return Error(e.line, "namespace() takes keyword arguments only");
      }
      Dict attributes;
      for (const auto& [name, arg] : e.kwargs) {
        ASSIGN_OR_RETURN(Value v, Eval(*arg));
        attributes.emplace_back(name, std::move(v));
      }
      return Built(MakeDict(std::move(attributes), /*is_namespace=*/true),
                   e.line);
    }
    if (e.name == "raise_exception") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 0, {"message"}, e.name));
      // The template's own words, for the client that sent the messages.
      return absl::InvalidArgumentError(a[0] ? PyStr(*a[0]) : "");
    }
    if (e.name == "strftime_now") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 0, {"format"}, e.name));
      ASSIGN_OR_RETURN(std::string format, StringArg(a[0], e.name, e.line));
      const std::time_t now = std::time(nullptr);
      std::tm local;
      localtime_r(&now, &local);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), format.c_str(), &local);
      return Str(std::string(buf, n));
    }
    // range([start,] stop[, step])
    ASSIGN_OR_RETURN(Bound a, BindArgs(e, 0, {"a", "b", "c"}, e.name));
    ASSIGN_OR_RETURN(int64_t first, IntArg(a[0], e.name, e.line));
    int64_t start = 0, stop = first, step = 1;
    if (a[1]) {
      start = first;
      ASSIGN_OR_RETURN(stop, IntArg(a[1], e.name, e.line));
    }
    if (a[2]) {
      ASSIGN_OR_RETURN(step, IntArg(a[2], e.name, e.line));
    }
    if (step == 0) return Error(e.line, "range() step must not be zero");
    List out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (static_cast<int64_t>(out.size()) >= kMaxRange) {
        return LineError(absl::StatusCode::kResourceExhausted, e.line,
                         absl::StrCat("range() longer than ", kMaxRange));
      }
      out.push_back(Int(k));
    }
    return MakeList(std::move(out));
  }

  absl::StatusOr<Value> EvalMethod(const Expr& e) {
    ASSIGN_OR_RETURN(Value object, Eval(*e.args[0]));
    if (object.is_undefined()) return UndefinedError(e.line, object);
    const std::string& m = e.name;
    const std::string what = absl::StrCat(TypeName(object), ".", m, "()");
    if (object.kind == Value::Kind::kDict) {
      if (m == "get") {
        ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"key", "default"}, what));
        ASSIGN_OR_RETURN(std::string key, StringArg(a[0], what, e.line));
        const Value* found = DictFind(*object.dict, key);
        if (found != nullptr) return *found;
        return a[1] ? *a[1] : None();
      }
      if (m == "items" || m == "keys" || m == "values") {
        ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {}, what));
        List out;
        for (const auto& [key, item] : *object.dict) {
          out.push_back(m == "keys"     ? Str(key)
                        : m == "values" ? item
                                        : MakeList({Str(key), item}));
        }
        return MakeList(std::move(out));
      }
    }
    static const std::set<std::string, std::less<>> kDictOnly = {
        "get", "items", "keys", "values"};
    if (object.kind != Value::Kind::kString || kDictOnly.count(m)) {
      return Error(e.line, absl::StrCat("'", TypeName(object),
                                        "' object has no attribute '", m, "'"));
    }
    const std::string& s = object.s;
    if (m == "strip" || m == "lstrip" || m == "rstrip") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"chars"}, what));
      if (!a[0] || a[0]->kind == Value::Kind::kNone) {
        return Str(PyStrip(s, nullptr, m != "rstrip", m != "lstrip"));
      }
      ASSIGN_OR_RETURN(std::string chars, StringArg(a[0], what, e.line));
      const std::u32string set = Decode(chars);
      return Str(PyStrip(s, &set, m != "rstrip", m != "lstrip"));
    }
    if (m == "startswith" || m == "endswith") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"prefix"}, what));
      List candidates;
      if (a[0] && a[0]->kind == Value::Kind::kList) {
        candidates = *a[0]->list;
      } else if (a[0]) {
        candidates.push_back(*a[0]);
      }
      if (candidates.empty()) {
        return Error(e.line, absl::StrCat(what, " expects a string"));
      }
      for (const Value& c : candidates) {
        ASSIGN_OR_RETURN(std::string affix, StringArg(c, what, e.line));
        const bool hit =
            affix.size() <= s.size() &&
            (m == "startswith" ? s.compare(0, affix.size(), affix) == 0
                               : s.compare(s.size() - affix.size(),
                                           affix.size(), affix) == 0);
        if (hit) return Bool(true);
      }
      return Bool(false);
    }
    if (m == "split") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"sep", "maxsplit"}, what));
      int64_t maxsplit = -1;
      if (a[1]) {
        ASSIGN_OR_RETURN(maxsplit, IntArg(a[1], what, e.line));
      }
      const Value* sep =
          a[0] && a[0]->kind != Value::Kind::kNone ? &*a[0] : nullptr;
      if (sep != nullptr) {
        ASSIGN_OR_RETURN(std::string text, StringArg(*sep, what, e.line));
        if (text.empty()) return Error(e.line, "split(): empty separator");
      }
      List out;
      for (std::string& part : PySplit(s, sep, maxsplit)) {
        out.push_back(Str(std::move(part)));
      }
      return MakeList(std::move(out));
    }
    if (m == "replace") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"old", "new", "count"}, what));
      return Replace(s, a, what, e.line);
    }
    ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {}, what));
    if (m == "upper" || m == "lower") return Str(AsciiCase(s, m == "upper"));
    if (m == "title") return Str(AsciiTitle(s, PyTitleSeparator));
    return Str(AsciiCapitalize(s));  // capitalize: the dict-only ones are out
  }

  absl::StatusOr<Value> Replace(const std::string& s, const Bound& a,
                                absl::string_view what, int line) const {
    ASSIGN_OR_RETURN(std::string old, StringArg(a[0], what, line));
    ASSIGN_OR_RETURN(std::string replacement, StringArg(a[1], what, line));
    int64_t count = -1;
    if (a[2] && a[2]->kind != Value::Kind::kNone) {
      ASSIGN_OR_RETURN(count, IntArg(a[2], what, line));
    }
    // Sized before building, as the result can be far larger than `s`.
    size_t matches = 0;
    if (old.empty()) {
      matches = Decode(s).size() + 1;
    } else {
      for (size_t at = s.find(old); at != std::string::npos;
           at = s.find(old, at + old.size())) {
        ++matches;
      }
    }
    if (count >= 0) matches = std::min(matches, static_cast<size_t>(count));
    RETURN_IF_ERROR(CheckSize(
        s.size() - matches * old.size() + matches * replacement.size(), line));
    return Str(PyReplace(s, old, replacement, count));
  }

  absl::StatusOr<Value> EvalFilter(const Expr& e) {
    ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
    const std::string& f = e.name;
    const std::string what = absl::StrCat("filter '", f, "'");
    if (f == "select" || f == "reject" || f == "selectattr" ||
        f == "rejectattr") {
      return FilterItems(e, v);
    }
    if (f == "map") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"attribute", "default"}, what));
      ASSIGN_OR_RETURN(std::string attribute, StringArg(a[0], what, e.line));
      ASSIGN_OR_RETURN(List items, Iterate(v, e.line));
      List out;
      for (const Value& item : items) {
        ASSIGN_OR_RETURN(Value mapped, GetPath(item, attribute, e.line));
        out.push_back(mapped.is_undefined() && a[1] ? *a[1] : mapped);
      }
      return MakeList(std::move(out));
    }
    if (f == "default" || f == "d") {
      ASSIGN_OR_RETURN(Bound a,
                       BindArgs(e, 1, {"default_value", "boolean"}, what));
      const bool boolean = a[1] && Truthy(*a[1]);
      if (v.is_undefined() || (boolean && !Truthy(v))) {
        return a[0] ? *a[0] : Str("");
      }
      return v;
    }
    if (f == "tojson") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"indent"}, what));
      int64_t indent = -1;
      if (a[0] && a[0]->kind != Value::Kind::kNone) {
        ASSIGN_OR_RETURN(indent, IntArg(a[0], what, e.line));
        indent = std::clamp<int64_t>(indent, 0, 16);
      }
      std::string out;
      absl::Status status = AppendJson(v, static_cast<int>(indent), 0, &out);
      if (!status.ok()) return Error(e.line, status.message());
      RETURN_IF_ERROR(CheckSize(out.size(), e.line));
      return Str(std::move(out));
    }
    if (f == "join") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"d"}, what));
      std::string sep;
      if (a[0]) {
        ASSIGN_OR_RETURN(sep, StringArg(a[0], what, e.line));
      }
      ASSIGN_OR_RETURN(List items, Iterate(v, e.line));
      std::string out;
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += sep;
        out += PyStr(items[k]);
        RETURN_IF_ERROR(CheckSize(out.size(), e.line));
      }
      return Str(std::move(out));
    }
    if (f == "replace") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"old", "new", "count"}, what));
      return Replace(PyStr(v), a, what, e.line);
    }
    if (f == "trim") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"chars"}, what));
      if (!a[0] || a[0]->kind == Value::Kind::kNone) {
        return Str(PyStrip(PyStr(v), nullptr, true, true));
      }
      ASSIGN_OR_RETURN(std::string chars, StringArg(a[0], what, e.line));
      const std::u32string set = Decode(chars);
      return Str(PyStrip(PyStr(v), &set, true, true));
    }
    if (f == "int" || f == "float") {
      ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {"default"}, what));
      return ToNumber(v, f == "int", a[0]);
    }
    ASSIGN_OR_RETURN(Bound a, BindArgs(e, 1, {}, what));
    if (f == "length" || f == "count") {
      switch (v.kind) {
        case Value::Kind::kUndefined:
          return Int(0);
        case Value::Kind::kString:
          return Int(static_cast<int64_t>(Decode(v.s).size()));
        case Value::Kind::kList:
          return Int(static_cast<int64_t>(v.list->size()));
        case Value::Kind::kDict:
          return Int(static_cast<int64_t>(v.dict->size()));
        default:
          return Error(e.line, absl::StrCat("object of type '", TypeName(v),
                                            "' has no len()"));
      }
    }
    if (f == "string") return Str(PyStr(v));
    if (f == "safe") return v;
    if (f == "upper" || f == "lower") {
      return Str(AsciiCase(PyStr(v), f == "upper"));
    }
    if (f == "capitalize") return Str(AsciiCapitalize(PyStr(v)));
    if (f == "title") return Str(AsciiTitle(PyStr(v), JinjaTitleSeparator));
    if (f == "abs") {
      if (v.kind == Value::Kind::kFloat) return Float(std::fabs(v.f));
      if (v.kind == Value::Kind::kInt || v.kind == Value::Kind::kBool) {
        if (v.AsInt() == std::numeric_limits<int64_t>::min()) {
          return Error(e.line, "integer overflow");
        }
        return Int(std::abs(v.AsInt()));
      }
      return Error(e.line, absl::StrCat("bad operand type for abs(): '",
                                        TypeName(v), "'"));
    }
    if (f == "items") {
      if (v.is_undefined()) return MakeList({});
      if (v.kind != Value::Kind::kDict) {
        return Error(e.line, "items filter expects a mapping");
      }
      List out;
      for (const auto& [key, item] : *v.dict) {
        out.push_back(MakeList({Str(key), item}));
      }
      return MakeList(std::move(out));
    }
    ASSIGN_OR_RETURN(List items, Iterate(v, e.line));
    if (f == "list") return MakeList(std::move(items));
    if (f == "reverse") {
      std::reverse(items.begin(), items.end());
      if (v.kind != Value::Kind::kString) return MakeList(std::move(items));
      std::string out;
      for (const Value& c : items) out += c.s;
      return Str(std::move(out));
    }
    // first, last
    if (items.empty()) return Undefined(absl::StrCat("|", f, " of nothing"));
    return f == "first" ? items.front() : items.back();
  }

  absl::StatusOr<Value> ToNumber(const Value& v, bool to_int,
                                 const std::optional<Value>& fallback) const {
    const Value otherwise = fallback ? *fallback : to_int ? Int(0) : Float(0);
    double d = 0;
    switch (v.kind) {
      case Value::Kind::kBool:
      case Value::Kind::kInt:
        return to_int ? Int(v.AsInt()) : Float(v.AsDouble());
      case Value::Kind::kFloat:
        d = v.f;
        break;
      case Value::Kind::kString: {
        const std::string text = PyStrip(v.s, nullptr, true, true);
        char* end = nullptr;
        errno = 0;
        if (to_int) {
          const long long i = std::strtoll(text.c_str(), &end, 10);
          if (!text.empty() && *end == '\0' && errno == 0) return Int(i);
        }
        d = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0') return otherwise;
        break;
      }
      default:
        return otherwise;
    }
    if (!to_int) return Float(d);
    if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return otherwise;
    return Int(static_cast<int64_t>(d));
  }

  absl::StatusOr<bool> ApplyTest(const std::string& t, const Value& v,
                                 const List& args, int line) const {
    using K = Value::Kind;
    static const std::set<std::string, std::less<>> kBinary = {
        "divisibleby", "eq", "equalto", "ge", "gt",
        "in",          "le", "lt",      "ne", "sameas"};
    const size_t arity = kBinary.count(t) ? 1 : 0;
    if (args.size() != arity) {
      return Error(line, absl::StrCat("test '", t, "' takes ", arity,
                                      " argument", arity == 1 ? "" : "s"));
    }
    if (arity == 1) return ApplyBinaryTest(t, v, args[0], line);
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.kind == K::kNone;
    if (t == "string") return v.kind == K::kString;
    if (t == "number") return v.is_number();
    if (t == "integer") return v.kind == K::kInt;
    if (t == "float") return v.kind == K::kFloat;
    if (t == "boolean") return v.kind == K::kBool;
    if (t == "true") return v.kind == K::kBool && v.b;
    if (t == "false") return v.kind == K::kBool && !v.b;
    if (t == "mapping") return v.kind == K::kDict;
    if (t == "iterable") {
      return v.kind == K::kString || v.kind == K::kList || v.kind == K::kDict ||
             v.is_undefined();
    }
    if (t == "sequence") {
      return v.kind == K::kString || v.kind == K::kList || v.kind == K::kDict;
    }
    if (t == "even" || t == "odd") {
      if (v.kind == K::kFloat) {
        double r = std::fmod(v.f, 2);  // Python's %: the divisor's sign
        if (r < 0) r += 2;
        return r == (t == "even" ? 0 : 1);
      }
      if (v.kind != K::kInt && v.kind != K::kBool) {
        return Error(line, absl::StrCat("test '", t, "' needs a number, not '",
                                        TypeName(v), "'"));
      }
      return (v.AsInt() % 2 == 0) == (t == "even");
    }
    // lower, upper: Jinja tests the value's str().
    return AsciiCasedAll(PyStr(v), t == "upper");
  }

  absl::StatusOr<bool> ApplyBinaryTest(const std::string& t, const Value& v,
                                       const Value& arg, int line) const {
    if (t == "eq" || t == "equalto") return Equal(v, arg);
    if (t == "ne") return !Equal(v, arg);
    if (t == "in") return Contains(arg, v, line);
    if (t == "sameas") {
      // Python's "is": only singletons compare reliably by identity.
      return v.kind == arg.kind &&
             (v.kind == Value::Kind::kNone ||
              (v.kind == Value::Kind::kBool && v.b == arg.b));
    }
    if (t == "divisibleby") {
      if (!v.is_number() || !arg.is_number() || arg.AsDouble() == 0) {
        return Error(line, "divisibleby needs a number and a non-zero divisor");
      }
      if (v.kind == Value::Kind::kFloat || arg.kind == Value::Kind::kFloat) {
        return std::fmod(v.AsDouble(), arg.AsDouble()) == 0;
      }
      return v.AsInt() % arg.AsInt() == 0;
    }
    const std::optional<int> c = Compare(v, arg);
    if (!c) {
      return Error(line,
                   absl::StrCat("test '", t, "' cannot compare '", TypeName(v),
                                "' and '", TypeName(arg), "'"));
    }
    return t == "lt"   ? *c < 0
           : t == "le" ? *c <= 0
           : t == "gt" ? *c > 0
                       : *c >= 0;
  }

  // Jinja's attribute getter: "a.b.0" looks up a, then b, then item 0.
  absl::StatusOr<Value> GetPath(const Value& object, const std::string& path,
                                int line) const {
    Value v = object;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string part = path.substr(start, dot - start);
      const bool index =
          !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
            return std::isdigit(static_cast<unsigned char>(c));
          });
      if (index) {
        ASSIGN_OR_RETURN(v, GetItem(v, Int(std::atoll(part.c_str())), line));
      } else {
        ASSIGN_OR_RETURN(v, GetAttr(v, part, line));
      }
      if (dot == std::string::npos) return v;
      start = dot + 1;
    }
  }

  // select, reject, selectattr, rejectattr: the items (or their attribute)
  // that pass the test (truthiness without one), or fail it for reject.
  absl::StatusOr<Value> FilterItems(const Expr& e, const Value& v) {
    const bool by_attribute = e.name == "selectattr" || e.name == "rejectattr";
    const bool keep_passing = e.name == "select" || e.name == "selectattr";
    if (!e.kwargs.empty()) {
      return Error(e.line, absl::StrCat("filter '", e.name,
                                        "' takes no keyword arguments"));
    }
    List args;
    for (size_t k = 1; k < e.args.size(); ++k) {
      ASSIGN_OR_RETURN(Value arg, Eval(*e.args[k]));
      args.push_back(std::move(arg));
    }
    std::string attribute;
    if (by_attribute) {
      if (args.empty() || args[0].kind != Value::Kind::kString) {
        return Error(e.line, absl::StrCat("filter '", e.name,
                                          "' needs an attribute name"));
      }
      attribute = args[0].s;
      args.erase(args.begin());
    }
    const std::string test = args.empty() ? "" : args[0].s;
    if (!args.empty()) args.erase(args.begin());
    ASSIGN_OR_RETURN(List items, Iterate(v, e.line));
    List out;
    for (Value& item : items) {
      Value subject = item;
      if (by_attribute) {
        ASSIGN_OR_RETURN(subject, GetPath(item, attribute, e.line));
      }
      bool passed = Truthy(subject);
      if (!test.empty()) {
        ASSIGN_OR_RETURN(passed, ApplyTest(test, subject, args, e.line));
      }
      if (passed == keep_passing) out.push_back(std::move(item));
    }
    return MakeList(std::move(out));
  }

  absl::StatusOr<Value> Binary(const Expr& e, const Value& a, const Value& b) {
    const std::string& op = e.name;
    if (op == "==") return Bool(Equal(a, b));
    if (op == "!=") return Bool(!Equal(a, b));
    if (op == "~") {
      std::string out = PyStr(a) + PyStr(b);
      RETURN_IF_ERROR(CheckSize(out.size(), e.line));
      return Str(std::move(out));
    }
    if (op == "in") {
      ASSIGN_OR_RETURN(bool found, Contains(b, a, e.line));
      return Bool(found != e.negated);
    }
    if (a.is_undefined()) return UndefinedError(e.line, a);
    if (b.is_undefined()) return UndefinedError(e.line, b);
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      const std::optional<int> c = Compare(a, b);
      if (!c) {
        return Error(e.line,
                     absl::StrCat("'", op, "' not supported between '",
                                  TypeName(a), "' and '", TypeName(b), "'"));
      }
      return Bool(op == "<"    ? *c < 0
                  : op == "<=" ? *c <= 0
                  : op == ">"  ? *c > 0
                               : *c >= 0);
    }
    if (op == "+" && a.kind == b.kind &&
        (a.kind == Value::Kind::kString || a.kind == Value::Kind::kList)) {
      if (a.kind == Value::Kind::kString) {
        RETURN_IF_ERROR(CheckSize(a.s.size() + b.s.size(), e.line));
        return Str(a.s + b.s);
      }
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return Built(MakeList(std::move(out)), e.line);
    }
    if (op == "*" &&
        (a.kind == Value::Kind::kString) != (b.kind == Value::Kind::kString)) {
      const Value& text = a.kind == Value::Kind::kString ? a : b;
      const Value& times = a.kind == Value::Kind::kString ? b : a;
      if (times.kind == Value::Kind::kInt || times.kind == Value::Kind::kBool) {
        const int64_t n = std::max<int64_t>(times.AsInt(), 0);
        if (n > 0 && text.s.size() > 0) {
          RETURN_IF_ERROR(
              CheckSize(n > static_cast<int64_t>(max_bytes_ / text.s.size())
                            ? max_bytes_ + 1
                            : n * text.s.size(),
                        e.line));
        }
        std::string out;
        for (int64_t k = 0; k < n; ++k) out += text.s;
        return Str(std::move(out));
      }
    }
    if (op == "*" &&
        (a.kind == Value::Kind::kList) != (b.kind == Value::Kind::kList)) {
      const Value& list = a.kind == Value::Kind::kList ? a : b;
      const Value& times = a.kind == Value::Kind::kList ? b : a;
      if (times.kind == Value::Kind::kInt || times.kind == Value::Kind::kBool) {
        const int64_t n = std::max<int64_t>(times.AsInt(), 0);
        const size_t item_bytes = Footprint(list, max_bytes_);
        RETURN_IF_ERROR(CheckSize(
            n > static_cast<int64_t>(max_bytes_ / item_bytes) ? max_bytes_ + 1
                                                              : n * item_bytes,
            e.line));
        List out;
        for (int64_t k = 0; k < n; ++k) {
          out.insert(out.end(), list.list->begin(), list.list->end());
        }
        return MakeList(std::move(out));
      }
    }
    if (!a.is_number() || !b.is_number()) {
      return TypeError(e.line, op, a, b);
    }
    return Arithmetic(e, a, b);
  }

  absl::StatusOr<Value> Arithmetic(const Expr& e, const Value& a,
                                   const Value& b) const {
    const std::string& op = e.name;
    const bool floats =
        a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat;
    const int64_t x = a.AsInt(), y = b.AsInt();
    const double fx = a.AsDouble(), fy = b.AsDouble();
    if ((op == "/" || op == "//" || op == "%") && (floats ? fy == 0 : y == 0)) {
      return Error(e.line, "division by zero");
    }
    if (op == "/") return Float(fx / fy);
    if (floats) {
      if (op == "+") return Float(fx + fy);
      if (op == "-") return Float(fx - fy);
      if (op == "*") return Float(fx * fy);
      if (op == "**") return Float(std::pow(fx, fy));
      const double q = std::floor(fx / fy);
      if (op == "//") return Float(q);
      double r = std::fmod(fx, fy);
      if (r != 0 && ((r < 0) != (fy < 0))) r += fy;
      return Float(r);  // %
    }
    int64_t r = 0;
    bool overflow = false;
    if (op == "+") {
      overflow = __builtin_add_overflow(x, y, &r);
    } else if (op == "-") {
      overflow = __builtin_sub_overflow(x, y, &r);
    } else if (op == "*") {
      overflow = __builtin_mul_overflow(x, y, &r);
    } else if (op == "**") {
      if (y < 0) return Float(std::pow(fx, fy));
      r = 1;
      for (int64_t k = 0; k < y && !overflow && r != 0 && !(r == 1 && x == 1);
           ++k) {
        overflow = __builtin_mul_overflow(r, x, &r);
      }
    } else {
      if (x == std::numeric_limits<int64_t>::min() && y == -1) {
        return Error(e.line, "integer overflow");
      }
      int64_t q = x / y;
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      r = op == "//" ? q : m;
    }
    if (overflow) return Error(e.line, "integer overflow");
    return Int(r);
  }

  absl::StatusOr<bool> Contains(const Value& container, const Value& item,
                                int line) const {
    switch (container.kind) {
      case Value::Kind::kUndefined:
        return false;
      case Value::Kind::kString:
        if (item.kind != Value::Kind::kString) {
          return Error(line, "'in <string>' requires a string on the left");
        }
        return container.s.find(item.s) != std::string::npos;
      case Value::Kind::kList:
        return std::any_of(container.list->begin(), container.list->end(),
                           [&](const Value& v) { return Equal(v, item); });
      case Value::Kind::kDict:
        return item.kind == Value::Kind::kString &&
               DictFind(*container.dict, item.s) != nullptr;
      default:
        return Error(line,
                     absl::StrCat("argument of type '", TypeName(container),
                                  "' is not iterable"));
    }
  }

  const size_t max_bytes_;
  std::vector<Scope> scopes_;
  Flow flow_ = Flow::kNormal;
  int64_t steps_ = 0;
  std::string out_;
};

}  // namespace
}  // namespace chat_template_internal

using chat_template_internal::Lexer;
using chat_template_internal::Parser;
using chat_template_internal::Program;
using chat_template_internal::Renderer;

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  if (source.size() > chat_template_internal::kMaxSourceBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("chat template larger than ",
                     chat_template_internal::kMaxSourceBytes, " bytes"));
  }
  ASSIGN_OR_RETURN(
      auto tokens,
      Lexer(absl::string_view(source.data(), source.size())).Run());
  auto program = std::make_shared<Program>();
  ASSIGN_OR_RETURN(program->body, Parser(std::move(tokens)).ParseTemplate());
  return ChatTemplate(std::move(program));
}

absl::StatusOr<std::string> ChatTemplate::Render(
    const ChatRenderInput& input) const {
  using chat_template_internal::Dict;
  using chat_template_internal::List;
  Renderer renderer(input.max_output_bytes);
  List messages;
  for (const ChatMessage& m : input.messages) {
    messages.push_back(chat_template_internal::MakeDict(
        Dict{{"role", chat_template_internal::Str(m.role)},
             {"content", chat_template_internal::Str(m.content)}}));
  }
  renderer.SetGlobal("messages",
                     chat_template_internal::MakeList(std::move(messages)));
  renderer.SetGlobal("add_generation_prompt",
                     chat_template_internal::Bool(input.add_generation_prompt));
  if (input.bos_token) {
    renderer.SetGlobal("bos_token",
                       chat_template_internal::Str(*input.bos_token));
  }
  if (input.eos_token) {
    renderer.SetGlobal("eos_token",
                       chat_template_internal::Str(*input.eos_token));
  }
  if (!input.extra_variables.is_object()) {
    return absl::InvalidArgumentError(
        "chat template extra variables must be a JSON object");
  }
  for (const auto& [name, value] : input.extra_variables.items()) {
    ASSIGN_OR_RETURN(auto v, chat_template_internal::FromJson(value, 0));
    renderer.SetGlobal(name, std::move(v));
  }
  RETURN_IF_ERROR(renderer.Exec(program_->body));
  return renderer.TakeOutput();
}

absl::StatusOr<ChatTemplate> ChatTemplateFromTokenizerConfig(
    const nlohmann::json& config, std::string_view name) {
  const std::string wanted = name.empty() ? "default" : std::string(name);
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) {
    return absl::NotFoundError("tokenizer_config.json has no chat_template");
  }
  if (it->is_string()) {
    if (wanted != "default") {
      return absl::NotFoundError(absl::StrCat(
          "tokenizer_config.json has a single chat_template, none named '",
          wanted, "'"));
    }
    return ChatTemplate::Parse(it->get<std::string>());
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        "chat_template must be a string or a list of {name, template}");
  }
  for (const auto& entry : *it) {
    if (!entry.is_object() || !entry.contains("name") ||
        !entry.contains("template") || !entry["name"].is_string() ||
        !entry["template"].is_string()) {
      return absl::InvalidArgumentError(
          "chat_template list entries must be {name, template} strings");
    }
    if (entry["name"].get<std::string>() == wanted) {
      auto parsed = ChatTemplate::Parse(entry["template"].get<std::string>());
      if (!parsed.ok()) {
        return absl::Status(parsed.status().code(),
                            absl::StrCat("chat template '", wanted,
                                         "': ", parsed.status().message()));
      }
      return parsed;
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "tokenizer_config.json has no chat template named '", wanted, "'"));
}

}  // namespace wq
