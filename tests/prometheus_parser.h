// Reads Prometheus text exposition with the reference client's parser
// (prometheus_client, Debian's python3-prometheus-client, through
// tests/prometheus_parse.py), so that tests check wq's /metrics against an
// implementation other than wq's own. Tests using it carry
// "prometheus_parse.py" in their data.
#ifndef WQ_TESTS_PROMETHEUS_PARSER_H_
#define WQ_TESTS_PROMETHEUS_PARSER_H_

#include <map>
#include <optional>
#include <string>

#include "nlohmann/json.hpp"

namespace wq {

// {"families": [{"name", "type", "documentation", "samples": [{"name",
// "labels", "value"}]}]}; null (and a test failure) when it does not parse.
nlohmann::json ParseWithPrometheusClient(const std::string& text);

// The value of the sample with this name and exactly these labels.
std::optional<double> SampleValue(const nlohmann::json& parsed, const std::string& sample_name,
                                  const std::map<std::string, std::string>& labels = {});

}  // namespace wq

#endif  // WQ_TESTS_PROMETHEUS_PARSER_H_
