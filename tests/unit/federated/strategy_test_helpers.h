// Helpers shared by the strategy tests (strategy_test.cc, fedopt_test.cc,
// robust_aggregation_test.cc): small 1-D tensors, updates, and one whole round.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "federated/strategy.h"

namespace cleave::federated::strategy_testing {

inline torch::Tensor T(std::vector<float> values) { return torch::tensor(values, torch::kFloat32); }

inline ClientUpdate Update(const std::string& id, int64_t n, Weights w) {
  ClientUpdate u;
  u.client_id = id;
  u.num_examples = n;
  u.weights = std::move(w);
  return u;
}

inline std::unique_ptr<Strategy> Make(StrategyConfig config) {
  auto s = MakeStrategy(config);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

inline std::unique_ptr<Strategy> Make(const std::string& name) {
  StrategyConfig c;
  c.name = name;
  return Make(c);
}

// BeginRound + Add each + Finish + Apply: the next global model.
inline Result<Weights> Round(Strategy& strategy, const Weights& global,
                             const std::vector<bool>& mask,
                             const std::vector<ClientUpdate>& updates) {
  auto agg = strategy.BeginRound(global, mask);
  for (const auto& u : updates) CLEAVE_RETURN_IF_ERROR(agg->Add(u));
  CLEAVE_ASSIGN_OR_RETURN(Weights aggregate, agg->Finish());
  return strategy.Apply(global, aggregate, mask);
}

inline void ExpectValues(const torch::Tensor& t, const std::vector<float>& expected,
                         double tol = 1e-6) {
  ASSERT_EQ(t.numel(), static_cast<int64_t>(expected.size()));
  const torch::Tensor flat = t.reshape({-1});
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(flat[i].item<float>(), expected[i], tol) << "coordinate " << i;
  }
}

}  // namespace cleave::federated::strategy_testing
