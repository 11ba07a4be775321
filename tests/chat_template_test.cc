#include "common/tokenizer/chat_template.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

using ::testing::HasSubstr;

constexpr char kTokenizers[] = "../shared/tokenizers/";

nlohmann::json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return nlohmann::json::parse(text.ok() ? *text : "null");
}

// Renders `source` with the variables of `vars_json` (a JSON object).
absl::StatusOr<std::string> RenderWith(const std::string& source,
                                       const std::string& vars_json,
                                       size_t max_output_bytes = 1 << 20) {
  auto parsed = ChatTemplate::Parse(source);
  if (!parsed.ok()) return parsed.status();
  ChatRenderInput input;
  input.extra_variables = nlohmann::ordered_json::parse(vars_json);
  input.max_output_bytes = max_output_bytes;
  return parsed->Render(input);
}

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(part));
  }
}

// Each family's goldens: conversations its tokenizer_config.json template
// renders under reference Jinja2 configured as transformers configures it.
class ChatGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatGoldenTest, RendersEveryConversationByteForByte) {
  const std::string dir = absl::StrCat(kTokenizers, GetParam(), "/");
  const nlohmann::json config = ReadJson(dir + "tokenizer_config.json");
  const nlohmann::json golden = ReadJson(dir + "chat_golden.json");
  ASSERT_EQ(golden["chat_template"], config["chat_template"]);
  auto chat_template = ChatTemplateFromTokenizerConfig(config, "");
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();

  ChatRenderInput base;
  for (const auto& [name, value] : golden["template_kwargs"].items()) {
    if (name == "bos_token" && value.is_string()) {
      base.bos_token = value.get<std::string>();
    } else if (name == "eos_token" && value.is_string()) {
      base.eos_token = value.get<std::string>();
    } else {
      base.extra_variables[name] = value;
    }
  }
  int passed = 0;
  const auto& conversations = golden["conversations"];
  ASSERT_FALSE(conversations.empty());
  for (const auto& conversation : conversations) {
    ChatRenderInput input = base;
    input.add_generation_prompt = conversation["add_generation_prompt"];
    for (const auto& m : conversation["messages"]) {
      input.messages.push_back({m["role"], m["content"]});
    }
    auto rendered = chat_template->Render(input);
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(*rendered, conversation["rendered"].get<std::string>());
    passed += *rendered == conversation["rendered"].get<std::string>();
  }
  EXPECT_EQ(passed, static_cast<int>(conversations.size()));
}

INSTANTIATE_TEST_SUITE_P(Families, ChatGoldenTest,
                         ::testing::Values("llama3", "qwen2", "phi3-mini"));

struct Case {
  const char* source;
  const char* vars;
  const char* expected;
};

// Expected renderings from Jinja2 3.1 with transformers' environment
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
// its tojson).
constexpr Case
    kReferenceCases
        [] =
            {
                {R"J(a  
  {% if true %}
  x
  {% endif %}  
b)J",
                 R"J({})J",
                 R"J(a  
  x
  
b)J"},
                {R"J(  {%- if true -%}  
 x 
  {%- endif %}

y)J",
                 R"J({})J",
                 R"J(x
y)J"},
                {R"J(<{{- ' a ' -}}>
<{{ 'b' }}>
)J",
                 R"J({})J",
                 R"J(< a >
<b>)J"},
                {R"J(  {%+ if true %}
x{% endif +%}
y)J",
                 R"J({})J",
                 R"J(  x
y)J"},
                {R"J(a
  {# note #}
b {#- c -#} d)J",
                 R"J({})J",
                 R"J(a
bd)J"},
                {R"J({% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }},{% endfor %})J",
                 R"J({"xs": ["a", "b", "c"]})J",
                 R"J(10TrueFalse33,21FalseFalse32,32FalseTrue31,)J"},
                {R"J({% for x in xs if x != 'b' %}{{ x }}{{ loop.index }}{% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %})J",
                 R"J({"xs": ["a", "b", "c"]})J", R"J(a1c2|empty)J"},
                {R"J({% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %})J",
                 R"J({"xs": [1, 2, 3, 4, 5]})J", R"J(13)J"},
                {R"J({% set x = 0 %}{% for i in range(3) %}{% if i == 1 %}{% set x = 5 %}{% endif %}{{ x }}{% endfor %}{{ x }})J",
                 R"J({})J", R"J(0500)J"},
                {R"J({% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %})J",
                 R"J({"d": {"b": 1, "a": [1, "x"]}})J",
                 R"J(b=1;a=[1, 'x'];ba)J"},
                {R"J({% set ns = namespace(n=0, s='') %}{% for m in ms %}{% set ns.n = ns.n + m %}{% set ns.s = ns.s ~ m %}{% endfor %}{{ ns.n }} {{ ns.s }})J",
                 R"J({"ms": [1, 2, 3]})J", R"J(6 123)J"},
                {R"J({{ xs[1:] }} {{ xs[::-1] }} {{ xs[-2:] }} {{ xs[:1] }} {{ s[1:3] }} {{ s[::-1] }} {{ s[-1] }} {{ xs[5] }}|{{ xs[0] }})J",
                 R"J({"xs": [1, 2, 3], "s": "héllo"})J",
                 R"J([2, 3] [3, 2, 1] [2, 3] [1] él olléh o |1)J"},
                {R"J([{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ 'xxhixx'.strip('x') }}]{{ s.split() }}{{ 'a,b,,c'.split(',') }}{{ 'a b c'.split(' ', 1) }})J",
                 R"J({"s": "  hi there\n"})J",
                 R"J([hi there][hi there
][  hi there][hi]['hi', 'there']['a', 'b', '', 'c']['a', 'b c'])J"},
                {R"J({{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith(('x', 'a')) }}{{ 'aXbX'.replace('X', '-') }}{{ 'Hello World'.upper() }}{{ 'Hello'.lower() }}{{ 'hello world'.title() }}{{ 'hELLO'.capitalize() }})J",
                 R"J({})J",
                 R"J(TrueTrueTruea-b-HELLO WORLDhelloHello WorldHello)J"},
                {R"J({% set c = '<think>\nreason\n</think>\n\nanswer' %}{{ c.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') }}|{{ c.split('</think>')[-1].lstrip('\n') }})J",
                 R"J({})J", R"J(reason|answer)J"},
                {R"J({{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ [] | tojson }}|{{ 'é"\n' | tojson }})J",
                 R"J({"d": {"name": "f", "args": {"x": 1.5, "y": [true, null, "ü"]}, "e": {}}})J",
                 R"J({"name": "f", "args": {"x": 1.5, "y": [true, null, "ü"]}, "e": {}}|{
  "name": "f",
  "args": {
    "x": 1.5,
    "y": [
      true,
      null,
      "ü"
    ]
  },
  "e": {}
}|[]|"é\"\n")J"},
                {R"J({{ xs | length }}{{ 'héllo' | length }}{{ missing | length }}{{ missing | default('dflt') }}{{ '' | default('e', true) }}{{ none | default('n') }}|{{ '  t  ' | trim }}|{{ 'ab' | upper }}{{ 'AB' | lower }}{{ 3 | string }}{{ xs | join(', ') }}{{ xs | first }}{{ xs | last }}{{ '42' | int + 1 }})J",
                 R"J({"xs": [1, 2, 3]})J",
                 R"J(350dflteNone|t|ABab31, 2, 31343)J"},
                {R"J({{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ n is none }}{{ x is string }}{{ 1 is string }}{{ n is not none }}{{ f is false }}{{ t is true }}{{ 1 is number }}{{ d is mapping }}{{ xs is iterable }})J",
                 R"J({"x": "s", "n": null, "f": false, "t": true, "d": {}, "xs": []})J",
                 R"J(TrueFalseTrueTrueTrueFalseFalseTrueTrueTrueTrueTrue)J"},
                {R"J({{ 'a' in 'cat' }}{{ 'z' not in 'cat' }}{{ 2 in xs }}{{ 'k' in d }}{{ 1 + 2 * 3 }}{{ 7 // 2 }}{{ -7 // 2 }}{{ -7 % 3 }}{{ 10 / 4 }}{{ 2 ** 8 }}{{ 'a' ~ 1 ~ none }}{{ 'x' * 3 }}{{ 1 < 2 }}{{ 'a' >= 'b' }}{{ (1 if false else 2) }}{{ 0 or 'alt' }}{{ 'v' and 'w' }}{{ not xs }})J",
                 R"J({"xs": [1, 2], "d": {"k": 1}})J",
                 R"J(TrueTrueTrueTrue73-422.5256a1NonexxxTrueFalse2altwFalse)J"},
                {R"J({{ none }}|{{ 1.0 }}|{{ 0.1 + 0.2 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ [1, 'a', none, true, 2.5] }}|{{ {'a': 'it\'s'} }}|{{ missing }}|{{ -3 | abs }})J",
                 R"J({})J",
                 R"J(None|1.0|0.30000000000000004|1e+20|1e-05|[1, 'a', None, True, 2.5]|{'a': "it's"}||3)J"},
                {R"J({% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}{% if not a and not b %}-{% endif %})J",
                 R"J({"c": 1})J", R"J(C-)J"},
                {R"J({{ messages[0]['role'] }}:{{ messages[0].content | trim }}{% for m in messages %}{{ m.role | upper }}{% endfor %})J",
                 R"J({"messages": [{"role": "user", "content": " hi "}]})J",
                 R"J(user:hiUSER)J"},
                {R"J({{ "dq \"x\" \u00e9\x41\t|" }}{{ 'a' 'b' }})J", R"J({})J",
                 R"J(dq "x" éA	|ab)J"},
                {R"J({{ tools | reject('equalto', 'code_interpreter') | join(', ') }}|{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}|{{ ms | rejectattr('role', 'eq', 'user') | list | length }}|{{ ms | selectattr('tool_calls') | list | length }}|{{ [0, 1, '', 'x'] | select | list }}|{{ ms | map(attribute='missing', default='-') | join }})J", R"J({"tools": ["code_interpreter", "brave_search", "wolfram"], "ms": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": [1]}, {"role": "user", "content": "c"}]})J",
                 R"J(brave_search, wolfram|['a', 'c']|1|1|[1, 'x']|---)J"},
                {R"J({{ 6 is divisibleby 3 }}{{ x is sameas false }}{{ 'a' is in ['a'] }}{{ 2 is gt 1 }}{{ 'u' is equalto 'u' }}{{ strftime_now is defined }}{{ nothing is defined }})J",
                 R"J({"x": false})J", R"J(TrueTrueTrueTrueTrueTrueFalse)J"},
                {R"J({% for x in 1, 2, 3 if x > 1 %}{{ x }}{% endfor %})J",
                 R"J({})J", R"J(23)J"},
                {R"J({{ 2.5 is odd }}{{ 3.0 is odd }}{{ -3.0 is odd }}{{ 4 is even }}{{ d is lower }}{{ xs * 2 }}{{ 2 * ['a'] }}{{ 'ab' * 2 }})J",
                 R"J({"d": {"k": "v"}, "xs": [1, 2]})J",
                 R"J(FalseTrueTrueTrueTrue[1, 2, 1, 2]['a', 'a']abab)J"},
};

TEST(ChatTemplateTest, MatchesReferenceJinja) {
  for (const Case& c : kReferenceCases) {
    auto rendered = RenderWith(c.source, c.vars);
    ASSERT_TRUE(rendered.ok()) << c.source << "\n" << rendered.status();
    EXPECT_EQ(*rendered, c.expected) << c.source;
  }
}

TEST(ChatTemplateTest, NormalizesNewlinesAndDropsOneTrailingNewline) {
  auto rendered =
      RenderWith("line1\r\nline2 {% if true %}\r\nz{% endif %}\n", "{}");
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered, "line1\nline2 z");
}

constexpr char kQwen3Tools[] =
    R"J([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])J";
constexpr char kQwen3WithTools[] =
    R"J(<|im_start|>system
Be brief.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
Let me check.<|im_end|>
<|im_start|>user
Thanks ünïcode<|im_end|>
<|im_start|>assistant
<think>

</think>

)J";
constexpr char kQwen3Thinking[] =
    R"J(<|im_start|>system
Be brief.<|im_end|>
<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<think>
Need the tool.
</think>

Let me check.<|im_end|>
)J";

absl::StatusOr<ChatTemplate> Qwen3Template() {
  return ChatTemplateFromTokenizerConfig(
      ReadJson(absl::StrCat(kTokenizers, "qwen2/qwen3_tokenizer_config.json")),
      "default");
}

// Qwen3's template (namespace, reverse slices, string methods, tool JSON,
// enable_thinking), against reference Jinja2 renderings.
TEST(ChatTemplateTest, Qwen3TemplateWithToolsAndThinking) {
  auto chat_template = Qwen3Template();
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  ChatRenderInput input;
  input.messages = {
      {"system", "Be brief."},
      {"user", "Weather in Paris?"},
      {"assistant", "<think>\nNeed the tool.\n</think>\n\nLet me check."},
      {"user", "Thanks \u00fcn\u00efcode"}};
  input.add_generation_prompt = true;
  input.extra_variables["tools"] = nlohmann::ordered_json::parse(kQwen3Tools);
  input.extra_variables["enable_thinking"] = false;
  auto rendered = chat_template->Render(input);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered, kQwen3WithTools);

  ChatRenderInput thinking;
  thinking.messages.assign(input.messages.begin(), input.messages.begin() + 3);
  rendered = chat_template->Render(thinking);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered, kQwen3Thinking);
}

// Qwen3's tool role (consecutive tool messages share one user turn),
// assistant tool_calls with object arguments, and reasoning_content, which
// the template prints as <think> only after the last user query.
constexpr char kQwen3ToolRoleMessages[] =
    R"J([{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "reasoning_content": "Need the tool.", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": "{\"temp_c\": 21}"}, {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "21 °C and sunny.", "reasoning_content": "Summarize."}])J";
// Debian python3-jinja2 3.1.6 configured as transformers configures it.
constexpr char kQwen3ToolRole[] = R"J(<|im_start|>user
Weather in Paris?<|im_end|>
<|im_start|>assistant
<think>
Need the tool.
</think>

<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{"temp_c": 21}
</tool_response>
<tool_response>
sunny
</tool_response><|im_end|>
<|im_start|>assistant
<think>
Summarize.
</think>

21 °C and sunny.<|im_end|>
)J";

TEST(ChatTemplateTest, Qwen3ToolRoleAndReasoningContent) {
  auto chat_template = Qwen3Template();
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  ChatRenderInput input;
  input.extra_variables["messages"] =
      nlohmann::ordered_json::parse(kQwen3ToolRoleMessages);
  input.eos_token = "<|im_end|>";
  auto rendered = chat_template->Render(input);
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered, kQwen3ToolRole);
}

TEST(ChatTemplateTest, UnsupportedConstructsFailAtParseWithNameAndLine) {
  const struct {
    const char* source;
    std::vector<std::string> parts;
  } kCases[] = {
      {"{% macro f() %}x{% endmacro %}", {"tag 'macro'", "line 1"}},
      {"a\nb\n{{ x | wordcount }}", {"filter 'wordcount'", "line 3"}},
      {"\n{% if x is callable %}{% endif %}", {"test 'callable'", "line 2"}},
      {"{{ xs | select('odd_looking') }}", {"test 'odd_looking'"}},
      {"{{ xs | map('upper') }}", {"map of a filter"}},
      {"{{ 'a'.zfill(3) }}", {"method 'zfill'", "line 1"}},
      {"{{ cycler(1) }}", {"function 'cycler'", "line 1"}},
      {"{% for x in xs recursive %}{% endfor %}", {"'recursive'"}},
      {"{% set x %}y{% endset %}", {"block assignment"}},
      {"{% include 'other.jinja' %}", {"tag 'include'"}},
  };
  for (const auto& c : kCases) {
    ExpectError(ChatTemplate::Parse(c.source).status(),
                absl::StatusCode::kUnimplemented, c.parts);
  }
}

TEST(ChatTemplateTest, SyntaxErrorsFailAtParse) {
  const struct {
    const char* source;
    std::vector<std::string> parts;
  } kCases[] = {
      {"{% for m in messages %}x", {"unterminated 'for'", "line 1"}},
      {"x\n{% if a %}{% for m in b %}{% endif %}",
       {"unexpected 'endif'", "'for' block opened at line 2", "'endfor'"}},
      {"{% if a %}x{% else %}y", {"unterminated 'if'", "endif"}},
      {"{{ x ", {"unterminated '{{'"}},
      {"\n\n{# note", {"unterminated comment", "line 3"}},
      {"{{ 'abc }}", {"unterminated string"}},
      {"{% endif %}", {"unexpected 'endif'"}},
      {"{% break %}", {"outside a loop"}},
      {"{{ (1 }}", {"unbalanced '}'"}},
      {"{{ 1 + }}", {"expected an expression"}},
      {"{{ x ? y }}", {"unexpected character '?'"}},
      {"{% if %}{% endif %}", {"expected an expression"}},
      // Jinja's conditions take no "x if c else y".
      {"{% if a if b else c %}{% endif %}", {"expected '%}', got 'if'"}},
  };
  for (const auto& c : kCases) {
    ExpectError(ChatTemplate::Parse(c.source).status(),
                absl::StatusCode::kInvalidArgument, c.parts);
  }
}

TEST(ChatTemplateTest, RaiseExceptionReturnsTheTemplatesMessage) {
  auto chat_template = ChatTemplate::Parse(
      "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == "
      "0) %}"
      "{{ raise_exception('Conversation roles must alternate "
      "user/assistant/user/assistant/...') }}{% endif %}{{ m.content }}"
      "{% endfor %}");
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  ChatRenderInput input;
  input.messages = {{"user", "a"}, {"assistant", "b"}};
  auto ok = chat_template->Render(input);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "ab");
  input.messages = {{"user", "a"}, {"user", "b"}};
  auto failed = chat_template->Render(input);
  EXPECT_EQ(failed.status(),
            absl::InvalidArgumentError("Conversation roles must alternate "
                                       "user/assistant/user/assistant/..."));
}

TEST(ChatTemplateTest, TypeErrorsFailTheRender) {
  ExpectError(RenderWith("{{ missing + 'x' }}", "{}").status(),
              absl::StatusCode::kInvalidArgument,
              {"'missing' is undefined", "line 1"});
  ExpectError(RenderWith("\n{{ 'a' + 1 }}", "{}").status(),
              absl::StatusCode::kInvalidArgument,
              {"unsupported operand types for +: 'str' and 'int'", "line 2"});
  ExpectError(RenderWith("{{ 'ab'.keys() }}", "{}").status(),
              absl::StatusCode::kInvalidArgument,
              {"'str' object has no attribute 'keys'"});
  ExpectError(RenderWith("{{ 'ab' is even }}", "{}").status(),
              absl::StatusCode::kInvalidArgument,
              {"test 'even' needs a number"});
  ExpectError(RenderWith("{{ 1 // 0 }}", "{}").status(),
              absl::StatusCode::kInvalidArgument, {"division by zero"});
  ExpectError(RenderWith("{% set x.y = 1 %}", R"({"x": {}})").status(),
              absl::StatusCode::kInvalidArgument, {"not a namespace"});
}

// transformers' {% generation %} only marks assistant text for masks.
TEST(ChatTemplateTest, GenerationBlockPrintsItsBody) {
  auto rendered = RenderWith(
      "{% for m in ms %}{% generation %}{{ m }}{% endgeneration %}{% endfor %}",
      R"({"ms": ["a", "b"]})");
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered, "ab");
}

TEST(ChatTemplateTest, StrftimeNowFormatsTheCurrentDate) {
  auto rendered = RenderWith("{{ strftime_now('%Y') | length }}", "{}");
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  EXPECT_EQ(*rendered, "4");
}

TEST(ChatTemplateTest, BoundsNestingOutputAndWork) {
  const std::string deep_parens =
      "{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}";
  ExpectError(ChatTemplate::Parse(deep_parens).status(),
              absl::StatusCode::kResourceExhausted, {"nested too deeply"});
  std::string deep_ifs;
  for (int k = 0; k < 500; ++k) deep_ifs += "{% if true %}";
  for (int k = 0; k < 500; ++k) deep_ifs += "{% endif %}";
  ExpectError(ChatTemplate::Parse(deep_ifs).status(),
              absl::StatusCode::kResourceExhausted, {"nested too deeply"});
  ExpectError(ChatTemplate::Parse(std::string(2 << 20, 'x')).status(),
              absl::StatusCode::kResourceExhausted, {"larger than"});

  ExpectError(
      RenderWith("{% for i in range(1000) %}0123456789{% endfor %}", "{}", 100)
          .status(),
      absl::StatusCode::kResourceExhausted, {"exceeds 100 bytes"});
  ExpectError(RenderWith("{% set x = 'x' * 1000000000000 %}", "{}").status(),
              absl::StatusCode::kResourceExhausted, {"bytes"});
  ExpectError(RenderWith("{% set ns = namespace(s='x') %}"
                         "{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
                         "{% endfor %}",
                         "{}")
                  .status(),
              absl::StatusCode::kResourceExhausted, {"bytes"});
  ExpectError(RenderWith("{% set ns = namespace(l=['x' * 1000]) %}"
                         "{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}"
                         "{% endfor %}",
                         "{}")
                  .status(),
              absl::StatusCode::kResourceExhausted, {"bytes"});
  // Shared parts count at each use: printing this would cost 16 copies.
  ExpectError(RenderWith("{% set l = ['x' * 1000] %}{% set l = [l, l] %}"
                         "{% set l = [l, l] %}{% set l = [l, l] %}"
                         "{% set l = [l, l] %}",
                         "{}", 10000)
                  .status(),
              absl::StatusCode::kResourceExhausted, {"bytes"});
  ExpectError(RenderWith("{% set x = [1] * 1000000000000 %}", "{}").status(),
              absl::StatusCode::kResourceExhausted, {"bytes"});
  ExpectError(
      RenderWith("{{ ('x' * 1000).replace('', 'yyyy') }}", "{}", 4000).status(),
      absl::StatusCode::kResourceExhausted, {"bytes"});
  // A namespace holding itself would recurse forever when printed.
  for (const char* cycle :
       {"{% set ns = namespace() %}{% set ns.me = ns %}{{ ns.me }}",
        "{% set ns = namespace() %}{% set ns.l = [ns] %}{{ ns.l }}",
        "{% set ns = namespace() %}{% set d = {'n': ns} %}"}) {
    ExpectError(RenderWith(cycle, "{}").status(),
                absl::StatusCode::kInvalidArgument,
                {"namespace cannot be stored"});
  }
  ExpectError(RenderWith("{% for i in range(100000) %}"
                         "{% for j in range(100000) %}{% endfor %}{% endfor %}",
                         "{}")
                  .status(),
              absl::StatusCode::kResourceExhausted, {"steps"});
  ExpectError(RenderWith("{{ range(1000000000) | length }}", "{}").status(),
              absl::StatusCode::kResourceExhausted, {"range()"});
  nlohmann::ordered_json deep = 1;
  for (int k = 0; k < 1000; ++k) deep = nlohmann::ordered_json::array({deep});
  ChatRenderInput input;
  input.extra_variables["deep"] = deep;
  ExpectError(ChatTemplate::Parse("x")->Render(input).status(),
              absl::StatusCode::kInvalidArgument, {"nested too deeply"});
}

TEST(ChatTemplateTest, PicksTheNamedTemplateOfAList) {
  const nlohmann::json config = {
      {"chat_template",
       {{{"name", "default"}, {"template", "D{{ messages | length }}"}},
        {{"name", "tool_use"}, {"template", "T"}}}}};
  ChatRenderInput input;
  input.messages = {{"user", "hi"}};
  auto by_default = ChatTemplateFromTokenizerConfig(config, "");
  ASSERT_TRUE(by_default.ok()) << by_default.status();
  EXPECT_EQ(*by_default->Render(input), "D1");
  auto tool_use = ChatTemplateFromTokenizerConfig(config, "tool_use");
  ASSERT_TRUE(tool_use.ok()) << tool_use.status();
  EXPECT_EQ(*tool_use->Render(input), "T");
  EXPECT_EQ(ChatTemplateFromTokenizerConfig(config, "rag").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ChatTemplateFromTokenizerConfig({{"bos_token", "<s>"}}, "")
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  const nlohmann::json broken = {
      {"chat_template",
       {{{"name", "default"},
         {"template", "{% filter upper %}x{% endfilter %}"}}}}};
  ExpectError(ChatTemplateFromTokenizerConfig(broken, "").status(),
              absl::StatusCode::kUnimplemented,
              {"chat template 'default'", "tag 'filter'"});
}

}  // namespace
}  // namespace wq
