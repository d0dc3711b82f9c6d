#include "federated/attack.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/config.h"
#include "federated/sim_config.h"
#include "federated/simulation.h"
#include "unit/federated/sim_test_data.h"
#include "unit/federated/strategy_test_helpers.h"

// Byzantine clients of `cleave sim` (federated/attack.h) and their wiring into the simulator
// and its configuration. Expected values are computed by hand in the comments.
namespace cleave::federated {
namespace {

using strategy_testing::T;

AttackOptions Attack(AttackKind kind, double fraction = 0.5, double scale = 10) {
  AttackOptions a;
  a.kind = kind;
  a.fraction = fraction;
  a.scale = scale;
  return a;
}

// ---- options

TEST(AttackOptionsTest, KindNamesRoundTripAndUnknownNamesAreRefused) {
  for (AttackKind kind : {AttackKind::kNone, AttackKind::kSignFlip, AttackKind::kScale,
                          AttackKind::kRandom, AttackKind::kLabelFlip}) {
    auto parsed = ParseAttackKind(AttackKindName(kind));
    ASSERT_TRUE(parsed.ok()) << AttackKindName(kind);
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_STREQ(AttackKindName(AttackKind::kSignFlip), "sign_flip");
  EXPECT_STREQ(AttackKindName(AttackKind::kLabelFlip), "label_flip");
  for (const std::string bad : {"", "signflip", "Scale", "none "}) {
    const Status s = ParseAttackKind(bad).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("attack.kind"), std::string::npos) << s.ToString();
  }
}

TEST(AttackOptionsTest, ValidateNamesTheOffendingKey) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(AttackOptions().Validate().ok());
  EXPECT_TRUE(Attack(AttackKind::kRandom, 0, 0.5).Validate().ok());
  EXPECT_TRUE(Attack(AttackKind::kSignFlip, 1, 1e3).Validate().ok());
  for (double fraction : {-0.1, 1.01, nan, inf}) {
    const Status s = Attack(AttackKind::kSignFlip, fraction).Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << fraction;
    EXPECT_NE(s.message().find("attack.fraction"), std::string::npos) << s.ToString();
  }
  for (double scale : {0.0, -1.0, nan, inf}) {
    const Status s = Attack(AttackKind::kScale, 0.1, scale).Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << scale;
    EXPECT_NE(s.message().find("attack.scale"), std::string::npos) << s.ToString();
  }
  const Status kind = Attack(static_cast<AttackKind>(42)).Validate();
  EXPECT_EQ(kind.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(kind.message().find("attack.kind"), std::string::npos);
}

TEST(AttackOptionsTest, JsonAndWhichKindsPoisonUpdates) {
  const nlohmann::json j = Attack(AttackKind::kRandom, 0.25, 3).ToJson();
  EXPECT_EQ(j, nlohmann::json({{"kind", "random"}, {"fraction", 0.25}, {"scale", 3.0}}));
  EXPECT_TRUE(Attack(AttackKind::kSignFlip).poisons_updates());
  EXPECT_TRUE(Attack(AttackKind::kScale).poisons_updates());
  EXPECT_TRUE(Attack(AttackKind::kRandom).poisons_updates());
  EXPECT_FALSE(Attack(AttackKind::kLabelFlip).poisons_updates());
  EXPECT_FALSE(Attack(AttackKind::kNone).poisons_updates());
}

// ---- the malicious set

int Count(const std::vector<bool>& v) {
  return static_cast<int>(std::count(v.begin(), v.end(), true));
}

TEST(MaliciousClientsTest, SizeIsFloorOfFractionTimesPopulation) {
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kSignFlip, 0.25), 20, 1)), 5);
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kSignFlip, 0.3), 10, 1)), 3);     // 3.0000..4
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kSignFlip, 0.29), 100, 1)), 29);  // 28.99..
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kScale, 0.19), 10, 1)), 1);
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kScale, 0.0), 10, 1)), 0);
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kLabelFlip, 1.0), 7, 1)), 7);
  EXPECT_EQ(MaliciousClients(Attack(AttackKind::kLabelFlip, 1.0), 7, 1).size(), 7u);
  // No attack, no attackers, whatever the fraction.
  EXPECT_EQ(Count(MaliciousClients(Attack(AttackKind::kNone, 0.5), 10, 1)), 0);
  EXPECT_TRUE(MaliciousClients(Attack(AttackKind::kScale, 0.5), 0, 1).empty());
}

TEST(MaliciousClientsTest, DeterministicFromTheSeedAndSpreadOverThePopulation) {
  const AttackOptions a = Attack(AttackKind::kSignFlip, 0.3);
  const std::vector<bool> first = MaliciousClients(a, 1000, 42);
  EXPECT_EQ(first, MaliciousClients(a, 1000, 42));
  // The kind does not change the set, the seed does.
  EXPECT_EQ(first, MaliciousClients(Attack(AttackKind::kLabelFlip, 0.3), 1000, 42));
  EXPECT_NE(first, MaliciousClients(a, 1000, 43));
  // Not simply the first or last clients: both halves hold a fair share of the 300.
  const int low = Count(std::vector<bool>(first.begin(), first.begin() + 500));
  EXPECT_GT(low, 100);
  EXPECT_LT(low, 200);
}

// ---- model poisoning

// Entry 0 is trainable, entry 1 is not. Honest delta (1, 2), norm sqrt(5).
Weights AttackGlobal() { return {T({1, 2}), T({5})}; }
const std::vector<bool> kAttackMask = {true, false};
Weights Honest() { return {T({2, 4}), T({7})}; }

void ExpectTensor(const torch::Tensor& t, const std::vector<float>& expected) {
  ASSERT_EQ(t.numel(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(t[i].item<float>(), expected[i], 1e-5) << i;
  }
}

TEST(PoisonUpdateTest, SignFlipAndScaleBoostTheDelta) {
  const Weights global = AttackGlobal();
  // sign_flip, scale 10: global - 10 (1, 2) = (1 - 10, 2 - 20).
  Weights flipped = Honest();
  const torch::Tensor original = flipped[0];
  ASSERT_TRUE(PoisonUpdate(Attack(AttackKind::kSignFlip), global, kAttackMask, 1, flipped).ok());
  ExpectTensor(flipped[0], {-9, -18});
  ExpectTensor(flipped[1], {7});   // untrained: as sent
  ExpectTensor(original, {2, 4});  // the honest tensor itself is not written
  // scale, scale 3: global + 3 (1, 2) = (4, 8).
  Weights scaled = Honest();
  ASSERT_TRUE(
      PoisonUpdate(Attack(AttackKind::kScale, 0.5, 3), global, kAttackMask, 1, scaled).ok());
  ExpectTensor(scaled[0], {4, 8});
  ExpectTensor(scaled[1], {7});
  ExpectTensor(global[0], {1, 2});
}

TEST(PoisonUpdateTest, RandomHasScaleTimesTheHonestNormAndDependsOnTheSeed) {
  const Weights global = AttackGlobal();
  const AttackOptions a = Attack(AttackKind::kRandom, 0.5, 10);
  Weights r1 = Honest(), r1_again = Honest(), r2 = Honest();
  ASSERT_TRUE(PoisonUpdate(a, global, kAttackMask, 11, r1).ok());
  ASSERT_TRUE(PoisonUpdate(a, global, kAttackMask, 11, r1_again).ok());
  ASSERT_TRUE(PoisonUpdate(a, global, kAttackMask, 12, r2).ok());
  EXPECT_NEAR((r1[0] - global[0]).norm().item<double>(), 10 * std::sqrt(5.0), 1e-4);
  EXPECT_NEAR((r2[0] - global[0]).norm().item<double>(), 10 * std::sqrt(5.0), 1e-4);
  EXPECT_TRUE(torch::equal(r1[0], r1_again[0]));
  EXPECT_FALSE(torch::equal(r1[0], r2[0]));
  ExpectTensor(r1[1], {7});
  // A client that did not move sends the global model back.
  Weights idle = AttackGlobal();
  ASSERT_TRUE(PoisonUpdate(a, global, kAttackMask, 11, idle).ok());
  ExpectTensor(idle[0], {1, 2});
}

TEST(PoisonUpdateTest, OtherKindsLeaveTheUpdateAloneAndBadLayoutsAreRefused) {
  const Weights global = AttackGlobal();
  for (AttackKind kind : {AttackKind::kNone, AttackKind::kLabelFlip}) {
    Weights w = Honest();
    ASSERT_TRUE(PoisonUpdate(Attack(kind), global, kAttackMask, 1, w).ok());
    ExpectTensor(w[0], {2, 4});
  }
  Weights short_update = {T({2, 4})};
  EXPECT_EQ(PoisonUpdate(Attack(AttackKind::kScale), global, kAttackMask, 1, short_update).code(),
            StatusCode::kInvalidArgument);
  Weights wrong_shape = {T({2, 4, 6}), T({7})};
  EXPECT_EQ(PoisonUpdate(Attack(AttackKind::kSignFlip), global, kAttackMask, 1, wrong_shape).code(),
            StatusCode::kInvalidArgument);
  Weights ok = Honest();
  EXPECT_EQ(PoisonUpdate(Attack(AttackKind::kRandom), global, {true}, 1, ok).code(),
            StatusCode::kInvalidArgument);
}

// ---- data poisoning

TEST(FlipLabelsTest, MapsYToNineMinusYWithoutWritingTheOriginal) {
  split::LabeledImages data{torch::zeros({10, 1, 2, 2}), torch::arange(10, torch::kLong)};
  const torch::Tensor original = data.labels;
  FlipLabels(data, 10);
  EXPECT_TRUE(torch::equal(data.labels, torch::arange(9, -1, -1, torch::kLong)));
  EXPECT_TRUE(torch::equal(original, torch::arange(10, torch::kLong)));
  EXPECT_EQ(data.labels.scalar_type(), torch::kLong);
  EXPECT_EQ(data.images.size(0), 10);
}

// ---- in the simulator

SimData TinyData() { return SyntheticSimData(120, 20, 11); }

SimOptions TinySim(AttackOptions attack) {
  SimOptions o;
  o.model = "tiny_split";
  o.num_clients = 8;
  o.partition = *PartitionSpec::Parse("iid");
  o.rounds = 2;
  o.engine.fraction = 0.5;  // 4 sampled
  o.engine.min_clients = 2;
  o.engine.fit.batch_size = 8;
  o.engine.fit.max_steps = 2;
  o.workers = 1;
  o.eval_every = 0;
  o.progress_out = nullptr;
  o.attack = attack;
  return o;
}

TEST(SimulationAttackTest, RecordsMaliciousClientsAmongTheSampled) {
  const SimData data = TinyData();
  auto honest = RunSimulation(TinySim(AttackOptions()), data);
  ASSERT_TRUE(honest.ok()) << honest.status().ToString();
  for (const auto& r : honest->history) EXPECT_FALSE(r.extra.contains("attack"));

  // Everyone malicious: every sampled client is counted, and the model differs.
  auto all = RunSimulation(TinySim(Attack(AttackKind::kSignFlip, 1.0)), data);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  for (const auto& r : all->history) {
    ASSERT_TRUE(r.extra.contains("attack"));
    EXPECT_EQ(r.extra.at("attack").get<int>(), r.sampled);
    EXPECT_EQ(r.sampled, 4);
  }
  EXPECT_FALSE(torch::equal(all->global[0], honest->global[0]));

  // The attack configured but nobody malicious: counted as 0 and identical to honest.
  auto none = RunSimulation(TinySim(Attack(AttackKind::kSignFlip, 0.0)), data);
  ASSERT_TRUE(none.ok());
  for (const auto& r : none->history) EXPECT_EQ(r.extra.at("attack").get<int>(), 0);
  for (size_t i = 0; i < honest->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(none->global[i], honest->global[i])) << i;
  }

  // Half of 8: between 0 and 4 of each round's 4 sampled; repeatable.
  auto half = RunSimulation(TinySim(Attack(AttackKind::kScale, 0.5)), data);
  auto half_again = RunSimulation(TinySim(Attack(AttackKind::kScale, 0.5)), data);
  ASSERT_TRUE(half.ok() && half_again.ok());
  for (size_t k = 0; k < half->history.size(); ++k) {
    const int n = half->history[k].extra.at("attack").get<int>();
    EXPECT_GE(n, 0);
    EXPECT_LE(n, 4);
    EXPECT_EQ(n, half_again->history[k].extra.at("attack").get<int>());
  }
  for (size_t i = 0; i < half->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(half->global[i], half_again->global[i])) << i;
  }
}

TEST(SimulationAttackTest, LabelFlipTrainsOnOtherLabels) {
  const SimData data = TinyData();
  auto honest = RunSimulation(TinySim(AttackOptions()), data);
  auto flipped = RunSimulation(TinySim(Attack(AttackKind::kLabelFlip, 1.0)), data);
  ASSERT_TRUE(honest.ok() && flipped.ok());
  bool differs = false;
  for (size_t i = 0; i < honest->global.size(); ++i) {
    differs = differs || !torch::equal(honest->global[i], flipped->global[i]);
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(flipped->history[0].extra.at("attack").get<int>(), 4);
}

TEST(SimulationAttackTest, OptionsValidateAndSerializeTheAttack) {
  SimOptions o = TinySim(Attack(AttackKind::kRandom, 0.25, 4));
  EXPECT_TRUE(o.Validate().ok());
  EXPECT_EQ(o.ToJson().at("attack"), o.attack.ToJson());
  o.attack.fraction = 2;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RunSimulation(o, TinyData()).status().code(), StatusCode::kInvalidArgument);
  // Norm bounding needs each update, which secure aggregation hides.
  SimOptions secure = TinySim(AttackOptions());
  secure.strategy.norm_bound = 1;
  EXPECT_TRUE(secure.Validate().ok());
  secure.engine.secure.enabled = true;
  const Status s = secure.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("norm_bound"), std::string::npos) << s.ToString();
}

Result<SimSetup> SetupFrom(const std::map<std::string, std::string>& flags) {
  CLEAVE_ASSIGN_OR_RETURN(Config config, Config::Load(SimSchema(), "", flags));
  return SimSetupFromConfig(config);
}

TEST(SimulationAttackTest, ConfigKeysReachTheOptionsAndBadValuesAreRefused) {
  auto defaults = SetupFrom({});
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_EQ(defaults->options.attack.kind, AttackKind::kNone);
  EXPECT_EQ(defaults->options.attack.scale, 10);
  EXPECT_EQ(defaults->options.strategy.norm_bound, 0);

  auto set = SetupFrom({{"attack.kind", "label_flip"},
                        {"attack.fraction", "0.2"},
                        {"attack.scale", "3"},
                        {"strategy.name", "bulyan"},
                        {"strategy.norm_bound", "2.5"}});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->options.attack.kind, AttackKind::kLabelFlip);
  EXPECT_EQ(set->options.attack.fraction, 0.2);
  EXPECT_EQ(set->options.attack.scale, 3);
  EXPECT_EQ(set->options.strategy.name, "bulyan");
  EXPECT_EQ(set->options.strategy.norm_bound, 2.5);

  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> bad = {
      {{{"attack.kind", "flip"}}, "attack.kind"},
      {{{"attack.fraction", "1.5"}}, "attack.fraction"},
      {{{"attack.fraction", "-0.5"}}, "attack.fraction"},
      {{{"attack.scale", "0"}}, "attack.scale"},
      {{{"strategy.norm_bound", "-1"}}, "norm_bound"},
  };
  for (const auto& [flags, key] : bad) {
    const Status s = SetupFrom(flags).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << key;
    EXPECT_NE(s.message().find(key), std::string::npos) << s.ToString();
  }
}

// ---- robust aggregation under each update-poisoning attack

// 11 updates, 2 of them poisoned by `kind` (federated/attack.h) from honest deltas spread
// around a common direction: every robust rule stays near the honest mean while FedAvg is
// pulled far off it (sign_flip, scale, random all boost the delta 10x).
TEST(RobustUnderAttackTest, EveryRobustRuleResistsEveryPoisoningAttack) {
  const int64_t dim = 64;
  const Weights global = {torch::zeros({dim})};
  const std::vector<bool> trainable = {true};
  torch::manual_seed(21);
  const torch::Tensor direction = torch::randn({dim});
  std::vector<Weights> honest;
  for (int k = 0; k < 11; ++k) honest.push_back({direction + 0.1f * torch::randn({dim})});
  torch::Tensor honest_mean = torch::zeros({dim});
  for (int k = 2; k < 11; ++k) honest_mean += honest[k][0];
  honest_mean /= 9;
  for (AttackKind kind : {AttackKind::kSignFlip, AttackKind::kScale, AttackKind::kRandom}) {
    AttackOptions attack;
    attack.kind = kind;
    attack.fraction = 0.2;
    attack.scale = 10;
    std::vector<ClientUpdate> updates;
    for (int k = 0; k < 11; ++k) {
      ClientUpdate u;
      u.client_id = "c" + std::to_string(k);
      u.num_examples = 10;
      u.weights = {honest[k][0].clone()};
      if (k < 2) {
        ASSERT_TRUE(PoisonUpdate(attack, global, trainable, 100 + k, u.weights).ok());
      }
      updates.push_back(std::move(u));
    }
    const auto error = [&](StrategyConfig config) {
      auto strategy = MakeStrategy(config);
      EXPECT_TRUE(strategy.ok());
      auto agg = (*strategy)->BeginRound(global, trainable);
      for (const auto& u : updates) EXPECT_TRUE(agg->Add(u).ok());
      auto out = agg->Finish();
      EXPECT_TRUE(out.ok()) << config.name << ": " << out.status().ToString();
      return out.ok() ? ((*out)[0] - honest_mean).norm().item<double>() : 1e9;
    };
    const double honest_norm = honest_mean.norm().item<double>();
    StrategyConfig fedavg;
    fedavg.name = "fedavg";
    const double fedavg_error = error(fedavg);
    EXPECT_GT(fedavg_error, 0.5 * honest_norm) << AttackKindName(kind);
    for (const char* name : {"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"}) {
      StrategyConfig c;
      c.name = name;
      c.trim_fraction = 0.2;
      c.byzantine = 2;
      const double e = error(c);
      EXPECT_LT(e, 0.15 * honest_norm) << name << " under " << AttackKindName(kind);
      EXPECT_LT(e, 0.2 * fedavg_error) << name << " under " << AttackKindName(kind);
    }
  }
}

}  // namespace
}  // namespace cleave::federated
