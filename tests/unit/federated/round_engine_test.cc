#include "federated/round_engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>

namespace cleave::federated {
namespace {

// A two-tensor "model": a head entry (block0) and a tail entry (block1).
WeightsLayout TinyLayout() {
  WeightsLayout layout;
  layout.names = {"block0.conv.weight", "block1.fc.weight"};
  layout.shapes = {{2}, {3}};
  return layout;
}

Weights Filled(float head, float tail) { return {torch::full({2}, head), torch::full({3}, tail)}; }

std::vector<ClientInfo> Clients(int n, int64_t examples = 10) {
  std::vector<ClientInfo> clients;
  for (int i = 0; i < n; ++i) clients.push_back({"c" + std::to_string(i), examples});
  return clients;
}

ClientUpdate Update(const std::string& id, int64_t examples, float head, float tail) {
  ClientUpdate u;
  u.client_id = id;
  u.num_examples = examples;
  u.weights = Filled(head, tail);
  u.train_loss = 1.0;
  return u;
}

class RoundEngineTest : public ::testing::Test {
 protected:
  std::unique_ptr<RoundEngine> Make(EngineOptions options, const std::string& strategy = "fedavg") {
    StrategyConfig config;
    config.name = strategy;
    auto s = MakeStrategy(config);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    auto engine = RoundEngine::Create(options, std::move(*s), TinyLayout(), Filled(0, 0), clock_);
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    return engine.ok() ? std::move(*engine) : nullptr;
  }
  FakeClock clock_;
};

TEST_F(RoundEngineTest, SamplesFractionWithMinimumAndOvercommit) {
  EngineOptions o;
  o.fraction = 0.3;
  o.min_clients = 2;
  o.overcommit = 0.5;
  auto engine = Make(o);
  auto plan = engine->StartRound(Clients(10));
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->target, 3);           // ceil(0.3 * 10)
  EXPECT_EQ(plan->clients.size(), 5u);  // ceil(3 * 1.5)
  EXPECT_EQ(plan->round, 1);
  std::set<std::string> unique(plan->clients.begin(), plan->clients.end());
  EXPECT_EQ(unique.size(), 5u);

  EngineOptions small;
  small.fraction = 0.1;
  small.min_clients = 4;
  auto engine2 = Make(small);
  auto plan2 = engine2->StartRound(Clients(10));
  ASSERT_TRUE(plan2.ok());
  EXPECT_EQ(plan2->target, 4);  // min_clients wins over ceil(0.1 * 10) = 1
}

TEST_F(RoundEngineTest, SamplingIsDeterministicAndIgnoresArrivalOrder) {
  EngineOptions o;
  o.fraction = 0.5;
  auto a = Make(o);
  auto b = Make(o);
  auto clients = Clients(20);
  auto reversed = clients;
  std::reverse(reversed.begin(), reversed.end());
  auto pa = a->StartRound(clients);
  auto pb = b->StartRound(reversed);
  ASSERT_TRUE(pa.ok() && pb.ok());
  EXPECT_EQ(pa->clients, pb->clients);
}

TEST_F(RoundEngineTest, ClientPoolKeepsEachIdWithDataOnceInIdOrder) {
  std::vector<ClientInfo> listed = {{"c3", 5}, {"c1", 0}, {"c2", 7}, {"c3", 9}, {"c0", 1}};
  const ClientPool pool(listed);
  ASSERT_EQ(pool.size(), 3u);  // c1 has no data; c3's second entry is ignored
  EXPECT_EQ(pool[0].id, "c0");
  EXPECT_EQ(pool[1].id, "c2");
  EXPECT_EQ(pool[2].id, "c3");
  EXPECT_EQ(pool[2].num_examples, 5);  // the first entry of an id counts
  EXPECT_EQ(ClientPool(std::vector<ClientInfo>{}).size(), 0u);
}

TEST_F(RoundEngineTest, SamplingFromAPoolMatchesTheListAndIsUniform) {
  EngineOptions o;
  o.fraction = 0.1;
  o.seed = 7;
  auto from_list = Make(o);
  auto from_pool = Make(o);
  const auto clients = Clients(500);
  const ClientPool pool(clients);
  std::map<std::string, int> picked;
  for (int round = 0; round < 200; ++round) {
    auto a = from_list->StartRound(clients);
    auto b = from_pool->StartRound(pool);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->clients, b->clients);
    ASSERT_EQ(b->clients.size(), 50u);
    ASSERT_EQ(std::set<std::string>(b->clients.begin(), b->clients.end()).size(), 50u);
    for (const auto& id : b->clients) ++picked[id];
    ASSERT_TRUE(from_list->FinishRound().ok());
    ASSERT_TRUE(from_pool->FinishRound().ok());
  }
  // 200 rounds x 10%: every client expects 20 picks; a binomial(200, 0.1) stays well
  // inside [3, 45] (more than 6 standard deviations) for all 500 clients.
  ASSERT_EQ(picked.size(), 500u);
  for (const auto& [id, n] : picked) {
    EXPECT_GE(n, 3) << id;
    EXPECT_LE(n, 45) << id;
  }
}

TEST_F(RoundEngineTest, RefusesToStartWithTooFewClientsOrTwice) {
  EngineOptions o;
  o.min_clients = 3;
  o.quorum = 2;
  auto engine = Make(o);
  auto clients = Clients(3);
  clients[0].num_examples = 0;  // clients without data are not sampled
  auto too_few = engine->StartRound(clients);
  EXPECT_EQ(too_few.status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine->StartRound(Clients(3)).ok());
  EXPECT_EQ(engine->StartRound(Clients(3)).status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(RoundEngineTest, WeightedFedAvgRound) {
  EngineOptions o;
  o.min_clients = 2;
  o.quorum = 2;
  auto engine = Make(o);
  auto plan = engine->StartRound(Clients(2));
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(engine->Submit(1, Update("c0", 10, 1, 2)), UpdateVerdict::kAccepted);
  EXPECT_FALSE(engine->RoundDone());
  EXPECT_EQ(engine->Submit(1, Update("c1", 30, 5, 6)), UpdateVerdict::kAccepted);
  EXPECT_TRUE(engine->RoundDone());
  clock_.Advance(2'500'000);
  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  EXPECT_TRUE(record->applied);
  EXPECT_EQ(record->succeeded, 2);
  EXPECT_EQ(record->examples, 40);
  EXPECT_DOUBLE_EQ(record->seconds, 2.5);
  // (10 * 1 + 30 * 5) / 40 = 4; (10 * 2 + 30 * 6) / 40 = 5.
  EXPECT_TRUE(torch::allclose(engine->global()[0], torch::full({2}, 4.0f)));
  EXPECT_TRUE(torch::allclose(engine->global()[1], torch::full({3}, 5.0f)));
  EXPECT_EQ(engine->rounds_completed(), 1);
  EXPECT_EQ(engine->history().size(), 1u);
}

// The strategy learns each round's sampling rate and its report lands in the round record
// (DP-FedAvg: the rate its accountant used and the epsilon spent so far).
TEST_F(RoundEngineTest, StrategyReportGoesIntoTheRoundRecord) {
  EngineOptions o;
  o.fraction = 0.25;
  o.min_clients = 2;
  o.quorum = 2;
  auto engine = Make(o, "dpfedavg");
  auto plan = engine->StartRound(Clients(8));
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->clients.size(), 2u);  // ceil(0.25 * 8)
  for (const std::string& id : plan->clients) {
    EXPECT_EQ(engine->Submit(1, Update(id, 10, 0.1f, 0.1f)), UpdateVerdict::kAccepted);
  }
  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  ASSERT_TRUE(record->applied) << record->failure;
  ASSERT_TRUE(record->extra.contains("strategy")) << record->extra;
  const auto& dp = record->extra["strategy"]["dp"];
  EXPECT_DOUBLE_EQ(dp["sampling_rate"].get<double>(), 0.25);
  EXPECT_GT(dp["epsilon"].get<double>(), 0.0);
  EXPECT_EQ(dp["accounted_rounds"].get<int>(), 1);
  // Plain FedAvg has nothing to report.
  auto plain = Make(o);
  ASSERT_TRUE(plain->StartRound(Clients(2)).ok());
  EXPECT_EQ(plain->Submit(1, Update("c0", 10, 1, 1)), UpdateVerdict::kAccepted);
  EXPECT_EQ(plain->Submit(1, Update("c1", 10, 1, 1)), UpdateVerdict::kAccepted);
  auto plain_record = plain->FinishRound();
  ASSERT_TRUE(plain_record.ok());
  EXPECT_FALSE(plain_record->extra.contains("strategy"));
}

TEST_F(RoundEngineTest, RejectsStaleUnsampledDuplicateAndMalformedUpdates) {
  EngineOptions o;
  o.fraction = 0.5;
  o.min_clients = 2;
  o.quorum = 1;
  auto engine = Make(o);
  EXPECT_EQ(engine->Submit(1, Update("c0", 10, 1, 1)), UpdateVerdict::kNoRound);
  auto plan = engine->StartRound(Clients(4));
  ASSERT_TRUE(plan.ok());
  const std::string in = plan->clients[0];
  std::string out;
  for (const auto& c : Clients(4)) {
    if (std::find(plan->clients.begin(), plan->clients.end(), c.id) == plan->clients.end()) {
      out = c.id;
    }
  }
  std::string why;
  EXPECT_EQ(engine->Submit(0, Update(in, 10, 1, 1), &why), UpdateVerdict::kStaleRound);
  EXPECT_NE(why.find("open round is 1"), std::string::npos);
  EXPECT_EQ(engine->Submit(2, Update(in, 10, 1, 1)), UpdateVerdict::kStaleRound);
  EXPECT_EQ(engine->Submit(1, Update(out, 10, 1, 1)), UpdateVerdict::kNotSampled);

  ClientUpdate nan = Update(in, 10, 1, 1);
  nan.weights[1][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(engine->Submit(1, nan, &why), UpdateVerdict::kMalformed);
  EXPECT_EQ(engine->Submit(1, Update(in, 10, 1, 1)), UpdateVerdict::kDuplicate);

  const std::string other = plan->clients[1];
  ClientUpdate shape = Update(other, 10, 1, 1);
  shape.weights[1] = torch::zeros({4});
  EXPECT_EQ(engine->Submit(1, shape), UpdateVerdict::kMalformed);

  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  EXPECT_FALSE(record->applied);
  EXPECT_NE(record->failure.find("quorum"), std::string::npos);
  EXPECT_EQ(record->rejected, 6);  // stale x2, not sampled, NaN, duplicate, shape
  EXPECT_EQ(record->rejected_by_reason.at("stale_round"), 2);
  EXPECT_EQ(record->rejected_by_reason.at("malformed"), 2);
  EXPECT_EQ(record->rejected_by_reason.at("not_sampled"), 1);
  EXPECT_EQ(record->rejected_by_reason.at("duplicate"), 1);
  EXPECT_TRUE(torch::equal(engine->global()[0], torch::zeros({2})));  // unchanged
}

TEST_F(RoundEngineTest, MalformedExampleCountsAndLossesAreRejected) {
  EngineOptions o;
  o.min_clients = 3;
  auto engine = Make(o);
  ASSERT_TRUE(engine->StartRound(Clients(3)).ok());
  EXPECT_EQ(engine->Submit(1, Update("c0", 0, 1, 1)), UpdateVerdict::kMalformed);
  ClientUpdate inf = Update("c1", 10, 1, 1);
  inf.train_loss = std::numeric_limits<double>::infinity();
  EXPECT_EQ(engine->Submit(1, inf), UpdateVerdict::kMalformed);
  ClientUpdate missing = Update("c2", 10, 1, 1);
  missing.weights.pop_back();
  EXPECT_EQ(engine->Submit(1, missing), UpdateVerdict::kMalformed);
  EXPECT_TRUE(engine->RoundDone());  // everyone answered (badly)
}

TEST_F(RoundEngineTest, DeadlineClosesTheRoundAndLateUpdatesAreCounted) {
  EngineOptions o;
  o.min_clients = 3;
  o.quorum = 1;
  o.deadline_micros = 10'000'000;
  auto engine = Make(o);
  ASSERT_TRUE(engine->StartRound(Clients(3)).ok());
  EXPECT_EQ(engine->MicrosUntilDeadline(), 10'000'000);
  EXPECT_EQ(engine->Submit(1, Update("c0", 10, 1, 1)), UpdateVerdict::kAccepted);
  engine->ReportFailure(1, "c1", "out of memory");
  EXPECT_FALSE(engine->RoundDone());
  EXPECT_EQ(engine->Pending(), std::vector<std::string>{"c2"});
  clock_.Advance(10'000'001);
  EXPECT_TRUE(engine->RoundDone());
  EXPECT_EQ(engine->MicrosUntilDeadline(), 0);
  EXPECT_EQ(engine->Submit(1, Update("c2", 10, 9, 9)), UpdateVerdict::kLate);
  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  EXPECT_TRUE(record->applied);
  EXPECT_EQ(record->succeeded, 1);
  EXPECT_EQ(record->failed, 1);
  EXPECT_EQ(record->late, 1);
  EXPECT_EQ(record->missing, 0);
  EXPECT_TRUE(torch::allclose(engine->global()[0], torch::full({2}, 1.0f)));
}

TEST_F(RoundEngineTest, FailureReasonsAreCountedBoundedAndNamedWhenTheQuorumFails) {
  EngineOptions o;
  o.min_clients = 4;
  o.quorum = 2;
  auto engine = Make(o);
  ASSERT_TRUE(engine->StartRound(Clients(4)).ok());
  engine->ReportFailure(1, "c0", "out of memory");
  engine->ReportFailure(1, "c1", "out of memory");
  engine->ReportFailure(1, "c1", "counted once per client");  // already answered
  engine->ReportFailure(1, "nobody", "not sampled");          // ignored
  // A peer's text: cut to 200 characters of printable ASCII.
  engine->ReportFailure(1, "c2", "left: \xff\x01" + std::string(500, 'x'));
  EXPECT_EQ(engine->Submit(1, Update("c3", 10, 1, 1)), UpdateVerdict::kAccepted);
  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  EXPECT_FALSE(record->applied);
  EXPECT_EQ(record->failed, 3);
  const nlohmann::json& reasons = record->extra.at("failure_reasons");
  ASSERT_EQ(reasons.size(), 2u) << reasons.dump();
  EXPECT_EQ(reasons.at("out of memory").get<int>(), 2);
  const std::string peer = std::next(reasons.begin()).key() == "out of memory"
                               ? reasons.begin().key()
                               : std::next(reasons.begin()).key();
  EXPECT_EQ(peer.size(), 200u);
  EXPECT_EQ(peer.substr(0, 8), "left: ??");
  EXPECT_NO_THROW(reasons.dump());
  EXPECT_NE(record->failure.find("a client failed with: "), std::string::npos) << record->failure;
}

TEST_F(RoundEngineTest, OvercommittedStragglersAreLateOnceTheTargetIsMet) {
  EngineOptions o;
  o.fraction = 0.5;
  o.min_clients = 2;
  o.overcommit = 1.0;  // sample 4 for a target of 2
  auto engine = Make(o);
  auto plan = engine->StartRound(Clients(4));
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->clients.size(), 4u);
  EXPECT_EQ(engine->Submit(1, Update(plan->clients[0], 10, 2, 2)), UpdateVerdict::kAccepted);
  EXPECT_EQ(engine->Submit(1, Update(plan->clients[1], 10, 4, 4)), UpdateVerdict::kAccepted);
  EXPECT_TRUE(engine->RoundDone());
  EXPECT_EQ(engine->Submit(1, Update(plan->clients[2], 10, 100, 100)), UpdateVerdict::kLate);
  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->late, 1);
  EXPECT_EQ(record->missing, 1);
  EXPECT_TRUE(torch::allclose(engine->global()[0], torch::full({2}, 3.0f)));
}

TEST_F(RoundEngineTest, UntrainableEntriesKeepTheGlobalValues) {
  EngineOptions o;
  o.min_clients = 1;
  o.trainable = TrainableSet::kHeadAndExits;
  o.split_after = 0;  // block0 is the head
  auto engine = Make(o);
  auto plan = engine->StartRound(Clients(1));
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->trainable, (std::vector<bool>{true, false}));
  EXPECT_EQ(engine->Submit(1, Update("c0", 10, 7, 7)), UpdateVerdict::kAccepted);
  ASSERT_TRUE(engine->FinishRound().ok());
  EXPECT_TRUE(torch::allclose(engine->global()[0], torch::full({2}, 7.0f)));
  EXPECT_TRUE(torch::equal(engine->global()[1], torch::zeros({3})));  // the tail stays
}

TEST_F(RoundEngineTest, EvaluatorRunsAfterEachRound) {
  EngineOptions o;
  auto engine = Make(o);
  engine->set_evaluator([](const Weights& w) -> Result<Evaluation> {
    return Evaluation{w[0][0].item<double>() / 10, 0.5};
  });
  ASSERT_TRUE(engine->StartRound(Clients(1)).ok());
  ASSERT_EQ(engine->Submit(1, Update("c0", 10, 8, 8)), UpdateVerdict::kAccepted);
  auto record = engine->FinishRound();
  ASSERT_TRUE(record.ok());
  ASSERT_TRUE(record->eval_accuracy.has_value());
  EXPECT_NEAR(*record->eval_accuracy, 0.8, 1e-6);
  EXPECT_DOUBLE_EQ(record->ToJson().at("loss").get<double>(), 0.5);
}

TEST_F(RoundEngineTest, RejectsInvalidOptionsAndInitialWeights) {
  StrategyConfig config;
  const auto make = [&](EngineOptions o, Weights w) {
    auto strategy = MakeStrategy(config);
    return RoundEngine::Create(o, std::move(*strategy), TinyLayout(), std::move(w), clock_)
        .status()
        .code();
  };
  EngineOptions bad;
  bad.fraction = 0;
  EXPECT_EQ(make(bad, Filled(0, 0)), StatusCode::kInvalidArgument);
  bad = {};
  bad.quorum = 2;  // above min_clients = 1
  EXPECT_EQ(make(bad, Filled(0, 0)), StatusCode::kInvalidArgument);
  bad = {};
  bad.deadline_micros = 0;
  EXPECT_EQ(make(bad, Filled(0, 0)), StatusCode::kInvalidArgument);
  bad = {};
  bad.fit.batch_size = 0;
  EXPECT_EQ(make(bad, Filled(0, 0)), StatusCode::kInvalidArgument);
  Weights wrong = Filled(0, 0);
  wrong[0] = torch::zeros({5});
  EXPECT_EQ(make({}, wrong), StatusCode::kInvalidArgument);
  EngineOptions head_only;
  head_only.trainable = TrainableSet::kHeadAndExits;
  head_only.split_after = -1;  // no head and no exits: nothing to train
  EXPECT_EQ(make(head_only, Filled(0, 0)), StatusCode::kInvalidArgument);
}

// Runs `rounds` FedAvg rounds where every sampled client returns global + its index.
void RunRounds(RoundEngine& engine, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    auto plan = engine.StartRound(Clients(6));
    ASSERT_TRUE(plan.ok());
    for (const auto& id : plan->clients) {
      const float shift = static_cast<float>(std::stoi(id.substr(1)));
      ClientUpdate u;
      u.client_id = id;
      u.num_examples = 1 + std::stoi(id.substr(1));
      u.weights = {engine.global()[0] + shift, engine.global()[1] - shift};
      ASSERT_EQ(engine.Submit(plan->round, u), UpdateVerdict::kAccepted);
    }
    ASSERT_TRUE(engine.FinishRound().ok());
  }
}

TEST_F(RoundEngineTest, ResumedRunEndsWhereAnUninterruptedRunEnds) {
  for (const std::string strategy : {"fedavg", "fedadam"}) {
    EngineOptions o;
    o.fraction = 0.5;
    o.min_clients = 2;
    auto straight = Make(o, strategy);
    RunRounds(*straight, 4);

    auto first = Make(o, strategy);
    RunRounds(*first, 2);
    auto snapshot = first->Save();
    ASSERT_TRUE(snapshot.ok());
    first.reset();  // "crash"
    auto resumed = Make(o, strategy);
    ASSERT_TRUE(resumed->Restore(*snapshot).ok());
    EXPECT_EQ(resumed->rounds_completed(), 2);
    RunRounds(*resumed, 2);
    EXPECT_EQ(resumed->rounds_completed(), 4);
    ASSERT_EQ(resumed->history().size(), 4u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_TRUE(torch::equal(resumed->global()[i], straight->global()[i])) << strategy;
    }
  }
}

TEST_F(RoundEngineTest, RestoreRejectsAnotherStrategyOrLayout) {
  EngineOptions o;
  auto a = Make(o, "fedavg");
  auto snapshot = a->Save();
  ASSERT_TRUE(snapshot.ok());
  auto b = Make(o, "fedmedian");
  EXPECT_EQ(b->Restore(*snapshot).code(), StatusCode::kInvalidArgument);
  auto tampered = *snapshot;
  tampered.engine["layout"]["shapes"][0] = {7};
  auto c = Make(o, "fedavg");
  EXPECT_EQ(c->Restore(tampered).code(), StatusCode::kInvalidArgument);
  auto garbage = *snapshot;
  garbage.engine.erase("sampler");
  EXPECT_EQ(c->Restore(garbage).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(c->StartRound(Clients(1)).ok());
  EXPECT_EQ(c->Save().status().code(), StatusCode::kFailedPrecondition);  // mid-round
}

}  // namespace
}  // namespace cleave::federated
