// Secure aggregation of federated rounds (federated/secure_round.h): parameters, the encoded
// contribution, the four stages driven by client id, dropout recovery that is exact, the
// engine refusing plain updates in a secure round and applying the FedAvg of the survivors, and
// `cleave sim` running secure rounds with the same code.
#include "federated/secure_round.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "federated/round_engine.h"
#include "federated/simulation.h"
#include "unit/federated/sim_test_data.h"

namespace cleave::federated {
namespace {

crypto::Key256 Seed(uint8_t b) {
  crypto::Key256 k{};
  k.fill(b);
  return k;
}

// A three-tensor model; the last entry is not trainable.
Weights Global() { return {torch::full({2, 3}, 0.5f), torch::full({4}, -1.0f), torch::ones({2})}; }
std::vector<bool> Trainable() { return {true, true, false}; }
constexpr int64_t kTrainableElements = 10;

Weights Trained(int k) {
  torch::manual_seed(100 + k);
  Weights w = Global();
  w[0] = w[0] + 0.1f * torch::randn({2, 3});
  w[1] = w[1] + 0.1f * torch::randn({4});
  w[2] = torch::full({2}, 99.0f);  // untrainable: must never reach the aggregate
  return w;
}

SecureRoundParams Params(uint32_t clients, SecureAggregationOptions o = {}) {
  o.enabled = true;
  auto p = MakeSecureRoundParams(o, clients, kTrainableElements, 7, Seed(3));
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? *p : SecureRoundParams{};
}

TEST(SecureAggregationOptionsTest, ValidateNamesTheKey) {
  SecureAggregationOptions o;
  EXPECT_TRUE(o.Validate().ok());
  const auto bad = [](SecureAggregationOptions x, const std::string& key) {
    Status s = x.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(key), std::string::npos) << s.message();
  };
  SecureAggregationOptions x = o;
  x.clip = 0;
  bad(x, "secure_aggregation.clip");
  x = o;
  x.clip = std::nan("");
  bad(x, "secure_aggregation.clip");
  x = o;
  x.example_scale = -1;
  bad(x, "secure_aggregation.example_scale");
  x = o;
  x.graph = "ring";
  bad(x, "secure_aggregation.graph");
  x = o;
  x.threshold = 1;
  bad(x, "secure_aggregation.threshold");
  auto round_trip = SecureAggregationOptions::FromJson(o.ToJson());
  ASSERT_TRUE(round_trip.ok());
  EXPECT_EQ(round_trip->ToJson(), o.ToJson());
  EXPECT_FALSE(SecureAggregationOptions::FromJson({{"clip", "big"}}).ok());
}

TEST(SecureAggregationOptionsTest, OnlyWeightedMeanStrategiesAreAllowed) {
  for (const char* ok : {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "dpfedavg"}) {
    EXPECT_TRUE(CheckSecureAggregationStrategy(ok).ok()) << ok;
  }
  for (const char* no : {"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"}) {
    Status s = CheckSecureAggregationStrategy(no);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << no;
    EXPECT_NE(s.message().find("every individual update"), std::string::npos) << s.message();
  }
  EXPECT_FALSE(CheckSecureAggregationStrategy("nonesuch").ok());
}

TEST(SecureRoundParamsTest, FractionalBitsKeepTheSumFromWrapping) {
  // 20 x ceil(64 x 2^20) = 1,342,177,280 <= 2^31 - 1; 2^21 would not fit.
  SecureRoundParams p = Params(20);
  EXPECT_EQ(p.fractional_bits, 20);
  EXPECT_EQ(p.secagg.vector_length, kTrainableElements + 2);
  EXPECT_EQ(p.secagg.threshold, 11u);  // complete graph: 20 holders, strict majority
  EXPECT_EQ(p.secagg.graph, secagg::GraphKind::kComplete);
  SecureAggregationOptions harary;
  harary.graph = "harary";
  SecureRoundParams h = Params(20, harary);
  EXPECT_EQ(h.secagg.degree, 10u);    // 2 ceil(log2 20)
  EXPECT_EQ(h.secagg.threshold, 6u);  // 11 holders
  SecureAggregationOptions o;
  EXPECT_EQ(MakeSecureRoundParams(o, 1, 10, 1, Seed(0)).status().code(),
            StatusCode::kInvalidArgument);  // one client has no one to hide among
  o.clip = 1e12;
  EXPECT_EQ(MakeSecureRoundParams(o, 4, 10, 1, Seed(0)).status().code(),
            StatusCode::kInvalidArgument);  // no headroom at all
  EXPECT_FALSE(MakeSecureRoundParams(SecureAggregationOptions{}, 4, 0, 1, Seed(0)).ok());
}

TEST(EncodeContributionTest, RejectsWhatCannotBeEncoded) {
  SecureRoundParams p = Params(4);
  const Weights g = Global();
  EXPECT_TRUE(EncodeContribution(p, g, Trained(0), Trainable(), 10, 0.5, Seed(1)).ok());
  EXPECT_FALSE(EncodeContribution(p, g, Trained(0), Trainable(), 0, 0.5, Seed(1)).ok());
  EXPECT_FALSE(EncodeContribution(p, g, Trained(0), Trainable(), 10, std::nan(""), Seed(1)).ok());
  Weights short_model = Trained(0);
  short_model.pop_back();
  EXPECT_FALSE(EncodeContribution(p, g, short_model, Trainable(), 10, 0.5, Seed(1)).ok());
  Weights wrong_shape = Trained(0);
  wrong_shape[1] = torch::zeros({5});
  EXPECT_FALSE(EncodeContribution(p, g, wrong_shape, Trainable(), 10, 0.5, Seed(1)).ok());
  Weights nan = Trained(0);
  nan[0][0][0] = std::nanf("");
  EXPECT_FALSE(EncodeContribution(p, g, nan, Trainable(), 10, 0.5, Seed(1)).ok());
  // All three entries trainable: 12 values, the round expects 10.
  EXPECT_FALSE(EncodeContribution(p, g, Trained(0), {true, true, true}, 10, 0.5, Seed(1)).ok());
}

// Distributed DP: every client weighs 1 and clips its whole delta to C before adding its
// share of the noise.
TEST(EncodeContributionTest, DistributedDpClipsToTheNormAndAddsTheNoise) {
  SecureRoundParams p = Params(2);
  p.dp_clip_norm = 0.05;
  p.dp_noise_stddev = 0;
  const Weights g = Global();
  Weights big = Trained(0);  // delta norm about 0.3
  auto encoded = EncodeContribution(p, g, big, Trainable(), 500, 0.25, Seed(1));
  ASSERT_TRUE(encoded.ok());
  secagg::AggregateResult one;
  one.sum = *encoded;
  one.contributors = {0};
  auto decoded = DecodeAggregate(p, one, g, Trainable());
  ASSERT_TRUE(decoded.ok());
  EXPECT_NEAR(decoded->weight_sum, 1.0, 1e-5);  // not 500 / example_scale
  EXPECT_NEAR(decoded->mean_loss, 0.25, 1e-5);
  const double norm = std::sqrt((decoded->aggregate[0] - g[0]).pow(2).sum().item<double>() +
                                (decoded->aggregate[1] - g[1]).pow(2).sum().item<double>());
  EXPECT_NEAR(norm, 0.05, 1e-4);
  // Noise: a zero delta comes back as noise of the configured stddev.
  Weights wide = {torch::zeros({400, 50}), torch::zeros({4}), torch::ones({2})};
  SecureAggregationOptions o;
  o.enabled = true;
  auto wp = MakeSecureRoundParams(o, 2, 400 * 50 + 4, 1, Seed(2));
  ASSERT_TRUE(wp.ok());
  wp->dp_clip_norm = 1.0;
  wp->dp_noise_stddev = 0.1;
  auto noisy = EncodeContribution(*wp, wide, wide, Trainable(), 10, 0.0, Seed(4));
  ASSERT_TRUE(noisy.ok());
  secagg::AggregateResult sum;
  sum.sum = *noisy;
  sum.contributors = {0};
  auto nd = DecodeAggregate(*wp, sum, wide, Trainable());
  ASSERT_TRUE(nd.ok());
  EXPECT_NEAR(nd->aggregate[0].std().item<double>(), 0.1, 0.005);
  EXPECT_NEAR(nd->aggregate[0].mean().item<double>(), 0.0, 0.005);
}

// Plays every client of a round in process. `drop` clients share keys and then never send a
// masked input (they drop "after masking": their pairwise masks are in the survivors' inputs).
struct Played {
  secagg::AggregateResult sum;
  std::vector<uint32_t> expected;  // the plain modular sum of the survivors' encodings
  Status status;
};

Played PlayRound(uint32_t n, const std::set<uint32_t>& drop, SecureAggregationOptions o = {}) {
  Played out;
  const SecureRoundParams p = Params(n, o);
  std::vector<std::string> roster;
  for (uint32_t u = 0; u < n; ++u) roster.push_back("edge-" + std::to_string(u));
  auto round = SecureRound::Create(p, roster);
  EXPECT_TRUE(round.ok());
  std::vector<SecureClientSession> clients;
  for (uint32_t u = 0; u < n; ++u) {
    auto c = SecureClientSession::Create(p, u);
    EXPECT_TRUE(c.ok());
    clients.push_back(std::move(*c));
    auto keys = clients.back().Advertise();
    EXPECT_TRUE(keys.ok());
    EXPECT_TRUE((*round)->HandleAdvertiseKeys(roster[u], *keys).ok());
  }
  auto directories = (*round)->CloseAdvertiseKeys();
  EXPECT_TRUE(directories.ok());
  for (uint32_t u = 0; u < n; ++u) {
    auto shares = clients[u].ShareSecrets(directories->at(roster[u]));
    EXPECT_TRUE(shares.ok());
    EXPECT_TRUE((*round)->HandleShareKeys(roster[u], *shares).ok());
  }
  auto forwarded = (*round)->CloseShareKeys();
  EXPECT_TRUE(forwarded.ok());
  out.expected.assign(p.secagg.vector_length, 0);
  for (uint32_t u = 0; u < n; ++u) {
    if (drop.count(u)) continue;
    const int64_t examples = 100 + 37 * u;
    auto encoded = EncodeContribution(p, Global(), Trained(u), Trainable(), examples, 0.1 * u,
                                      Seed(static_cast<uint8_t>(u)));
    EXPECT_TRUE(encoded.ok());
    for (size_t i = 0; i < encoded->size(); ++i) out.expected[i] += (*encoded)[i];
    auto masked = clients[u].MaskUpdate(forwarded->at(roster[u]), Global(), Trained(u), Trainable(),
                                        examples, 0.1 * u, Seed(static_cast<uint8_t>(u)));
    EXPECT_TRUE(masked.ok());
    EXPECT_NE(masked->masked, *encoded);  // what leaves the client is masked
    EXPECT_TRUE((*round)->HandleMaskedInput(roster[u], *masked).ok());
  }
  auto stage = (*round)->CloseMaskedInput();
  if (!stage.ok()) {
    out.status = stage.status();
    return out;
  }
  for (const std::string& id : stage->survivors) {
    const uint32_t u = static_cast<uint32_t>(std::stoul(id.substr(5)));
    auto reveal = clients[u].RevealShares(stage->request);
    EXPECT_TRUE(reveal.ok());
    EXPECT_TRUE((*round)->HandleUnmaskShares(id, *reveal).ok());
  }
  auto sum = (*round)->Finish();
  if (!sum.ok()) {
    out.status = sum.status();
    return out;
  }
  out.sum = *sum;
  return out;
}

TEST(SecureRoundTest, ThirtyPercentDroppingAfterMaskingStillYieldsTheExactSum) {
  const Played r = PlayRound(10, {1, 4, 8});
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.sum.sum, r.expected);  // bit for bit, modulo 2^32
  EXPECT_EQ(r.sum.contributors.size(), 7u);
  EXPECT_EQ(r.sum.recovered_dropouts, (std::vector<secagg::ClientIndex>{1, 4, 8}));
  SecureAggregationOptions harary;
  harary.graph = "harary";
  harary.degree = 4;
  const Played h = PlayRound(10, {0, 5}, harary);
  ASSERT_TRUE(h.status.ok()) << h.status.ToString();
  EXPECT_EQ(h.sum.sum, h.expected);
}

TEST(SecureRoundTest, TooFewSurvivorsFailTheRoundAndSayWhy) {
  // 6 of 10 drop: 4 survivors, below the threshold of 6.
  const Played r = PlayRound(10, {0, 1, 2, 3, 4, 5});
  EXPECT_EQ(r.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status.message().find("threshold"), std::string::npos) << r.status.message();
}

TEST(SecureRoundTest, DecodedAggregateIsTheExampleWeightedMeanOfTheSurvivors) {
  const uint32_t n = 6;
  const std::set<uint32_t> drop = {2};
  const Played r = PlayRound(n, drop);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  auto decoded = DecodeAggregate(Params(n), r.sum, Global(), Trainable());
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  Weights want = {torch::zeros({2, 3}), torch::zeros({4})};
  double examples = 0, loss = 0;
  for (uint32_t u = 0; u < n; ++u) {
    if (drop.count(u)) continue;
    const double e = 100 + 37 * u;
    Weights t = Trained(u);
    want[0] += e * t[0];
    want[1] += e * t[1];
    examples += e;
    loss += e * 0.1 * u;
  }
  EXPECT_TRUE(torch::allclose(decoded->aggregate[0], want[0] / examples, 0, 1e-5));
  EXPECT_TRUE(torch::allclose(decoded->aggregate[1], want[1] / examples, 0, 1e-5));
  EXPECT_TRUE(decoded->aggregate[2].is_same(Global()[2]) ||
              torch::equal(decoded->aggregate[2], Global()[2]));
  EXPECT_EQ(decoded->examples, static_cast<int64_t>(examples));
  EXPECT_NEAR(decoded->mean_loss, loss / examples, 1e-5);
  EXPECT_EQ(decoded->contributors, 5);
  EXPECT_EQ(decoded->recovered, 1);
  // A sum of the wrong length, or one without weight, is refused.
  secagg::AggregateResult wrong = r.sum;
  wrong.sum.pop_back();
  EXPECT_FALSE(DecodeAggregate(Params(n), wrong, Global(), Trainable()).ok());
  secagg::AggregateResult zero = r.sum;
  std::fill(zero.sum.begin(), zero.sum.end(), 0u);
  EXPECT_EQ(DecodeAggregate(Params(n), zero, Global(), Trainable()).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(SecureRoundTest, AClientCannotSpeakForAnotherOrJoinUninvited) {
  const SecureRoundParams p = Params(3);
  auto round = SecureRound::Create(p, {"a", "b", "c"});
  ASSERT_TRUE(round.ok());
  auto b = SecureClientSession::Create(p, 1);
  ASSERT_TRUE(b.ok());
  auto keys = b->Advertise();
  ASSERT_TRUE(keys.ok());
  // b's keys (sender 1) arriving on a's connection.
  Status forged = (*round)->HandleAdvertiseKeys("a", *keys);
  EXPECT_EQ(forged.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(forged.message().find("sent a message as client 1"), std::string::npos);
  EXPECT_EQ((*round)->HandleAdvertiseKeys("mallory", *keys).code(), StatusCode::kNotFound);
  EXPECT_TRUE((*round)->HandleAdvertiseKeys("b", *keys).ok());
  EXPECT_FALSE((*round)->HandleAdvertiseKeys("b", *keys).ok());  // replayed
  EXPECT_EQ((*round)->progress().advertised, 1u);
  EXPECT_FALSE(SecureRound::Create(p, {"a", "a", "c"}).ok());
  EXPECT_FALSE(SecureRound::Create(p, {"a", "b"}).ok());
}

// ---- The engine ----

WeightsLayout Layout() {
  WeightsLayout layout;
  layout.names = {"block0.conv.weight", "block0.conv.bias", "block1.fc.weight"};
  layout.shapes = {{2, 3}, {4}, {2}};
  return layout;
}

std::unique_ptr<RoundEngine> MakeEngine(FakeClock& clock, bool secure,
                                        const std::string& strategy = "fedavg") {
  EngineOptions o;
  o.fraction = 1.0;
  o.min_clients = 2;
  o.secure.enabled = secure;
  StrategyConfig config;
  config.name = strategy;
  auto s = MakeStrategy(config);
  EXPECT_TRUE(s.ok());
  auto engine = RoundEngine::Create(o, std::move(*s), Layout(), Global(), clock);
  if (!engine.ok()) return nullptr;
  return std::move(*engine);
}

TEST(SecureEngineTest, RefusesStrategiesThatNeedIndividualUpdates) {
  FakeClock clock;
  EngineOptions o;
  o.secure.enabled = true;
  StrategyConfig config;
  config.name = "krum";
  auto strategy = MakeStrategy(config);
  ASSERT_TRUE(strategy.ok());
  auto engine = RoundEngine::Create(o, std::move(strategy).value(), Layout(), Global(), clock);
  EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
}

TEST(SecureEngineTest, AppliesTheSurvivorsFedAvgAndNeverTakesAPlainUpdate) {
  FakeClock clock;
  auto secure = MakeEngine(clock, true);
  auto plain = MakeEngine(clock, false);
  ASSERT_TRUE(secure && plain);
  std::vector<ClientInfo> clients;
  for (int i = 0; i < 5; ++i) clients.push_back({"c" + std::to_string(i), 10});
  auto plan = secure->StartRound(clients);
  auto plain_plan = plain->StartRound(clients);
  ASSERT_TRUE(plan.ok() && plain_plan.ok());
  ASSERT_TRUE(plan->secure.has_value());
  EXPECT_FALSE(plain_plan->secure.has_value());
  EXPECT_EQ(plan->clients, plain_plan->clients);  // secure rounds sample the same clients
  const std::vector<bool> trainable(3, true);
  // A plain update is refused and does not count as the client's answer.
  ClientUpdate u;
  u.client_id = plan->clients[0];
  u.num_examples = 10;
  u.weights = Trained(0);
  std::string why;
  EXPECT_EQ(secure->Submit(plan->round, u, &why), UpdateVerdict::kMalformed);
  EXPECT_NE(why.find("only masked contributions"), std::string::npos) << why;
  EXPECT_EQ(plain->SubmitMasked(plain_plan->round, u.client_id, secagg::MaskedInput{}, &why),
            UpdateVerdict::kMalformed);
  EXPECT_NE(why.find("does not use secure aggregation"), std::string::npos) << why;

  SecureRound& server = *secure->secure_round();
  std::map<std::string, SecureClientSession> sessions;
  for (size_t i = 0; i < plan->clients.size(); ++i) {
    auto c = SecureClientSession::Create(*plan->secure, static_cast<uint32_t>(i));
    ASSERT_TRUE(c.ok());
    auto keys = c->Advertise();
    ASSERT_TRUE(server.HandleAdvertiseKeys(plan->clients[i], *keys).ok());
    sessions.emplace(plan->clients[i], std::move(*c));
  }
  auto dirs = server.CloseAdvertiseKeys();
  ASSERT_TRUE(dirs.ok());
  for (auto& [id, c] : sessions) {
    ASSERT_TRUE(server.HandleShareKeys(id, *c.ShareSecrets(dirs->at(id))).ok());
  }
  auto fwd = server.CloseShareKeys();
  ASSERT_TRUE(fwd.ok());
  // Client 4 drops after sharing keys; the others send masked inputs (and plain updates to the
  // plain engine, for comparison).
  for (size_t i = 0; i + 1 < plan->clients.size(); ++i) {
    const std::string& id = plan->clients[i];
    const int64_t examples = 10 + 5 * static_cast<int64_t>(i);
    Weights t = Trained(static_cast<int>(i));
    t[2] = Global()[2] + 0.01f * static_cast<float>(i);
    auto masked = sessions.at(id).MaskUpdate(fwd->at(id), secure->global(), t, trainable, examples,
                                             1.0, Seed(static_cast<uint8_t>(i)));
    ASSERT_TRUE(masked.ok()) << masked.status().ToString();
    EXPECT_EQ(secure->SubmitMasked(plan->round, id, *masked, &why), UpdateVerdict::kAccepted)
        << why;
    EXPECT_EQ(secure->SubmitMasked(plan->round, id, *masked), UpdateVerdict::kDuplicate);
    ClientUpdate pu;
    pu.client_id = id;
    pu.num_examples = examples;
    pu.weights = t;
    pu.train_loss = 1.0;
    ASSERT_EQ(plain->Submit(plain_plan->round, pu), UpdateVerdict::kAccepted);
  }
  plain->ReportFailure(plain_plan->round, plan->clients.back(), "dropped");
  auto stage = server.CloseMaskedInput();
  ASSERT_TRUE(stage.ok());
  EXPECT_EQ(stage->survivors.size(), 4u);
  for (const std::string& id : stage->survivors) {
    ASSERT_TRUE(server.HandleUnmaskShares(id, *sessions.at(id).RevealShares(stage->request)).ok());
  }
  auto record = secure->FinishRound();
  auto plain_record = plain->FinishRound();
  ASSERT_TRUE(record.ok() && plain_record.ok());
  EXPECT_TRUE(record->applied) << record->failure;
  EXPECT_EQ(record->succeeded, 4);
  EXPECT_EQ(record->examples, plain_record->examples);
  EXPECT_NEAR(record->train_loss, 1.0, 1e-5);
  EXPECT_EQ(record->extra.at("secure_aggregation").at("recovered_dropouts"), 1);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::allclose(secure->global()[i], plain->global()[i], 0, 1e-5)) << i;
  }
  EXPECT_EQ(secure->secure_round(), nullptr);  // the round's secrets are gone
}

TEST(SecureEngineTest, ARoundThatNeverReachesUnmaskingFailsCleanly) {
  FakeClock clock;
  auto engine = MakeEngine(clock, true);
  ASSERT_TRUE(engine);
  std::vector<ClientInfo> clients = {{"a", 10}, {"b", 10}, {"c", 10}};
  ASSERT_TRUE(engine->StartRound(clients).ok());
  const Weights before = CloneWeights(engine->global());
  auto record = engine->FinishRound();  // nobody advertised keys
  ASSERT_TRUE(record.ok());
  EXPECT_FALSE(record->applied);
  EXPECT_FALSE(record->failure.empty());
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_TRUE(torch::equal(before[i], engine->global()[i]));
  EXPECT_TRUE(engine->StartRound(clients).ok());  // the next round opens
}

// ---- cleave sim ----

SimData SecureSynthetic() { return SyntheticSimData(300, 60, 5); }

SimOptions SimSmall(bool secure) {
  SimOptions o;
  o.model = "tiny_split";
  o.num_clients = 12;
  o.partition = *PartitionSpec::Parse("dirichlet:0.5");
  o.rounds = 2;
  o.engine.fraction = 0.5;
  o.engine.min_clients = 2;
  o.engine.fit.batch_size = 8;
  o.engine.secure.enabled = secure;
  // About 25 examples per client: a weight w = n / 25 near 1 keeps the per-client resolution
  // of a delta near 2^-20 (with the default scale of 1000 it would be 40x coarser).
  o.engine.secure.example_scale = 25;
  o.workers = 2;
  o.progress_out = nullptr;
  return o;
}

TEST(SecureSimulationTest, SecureRoundsReachThePlainModelAndRecoverDropouts) {
  const SimData data = SecureSynthetic();
  auto plain = RunSimulation(SimSmall(false), data);
  auto secure = RunSimulation(SimSmall(true), data);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  ASSERT_TRUE(secure.ok()) << secure.status().ToString();
  ASSERT_EQ(secure->history.size(), 2u);
  for (size_t r = 0; r < 2; ++r) {
    const RoundRecord& rec = secure->history[r];
    EXPECT_TRUE(rec.applied) << rec.failure;
    EXPECT_EQ(rec.succeeded, plain->history[r].succeeded);
    EXPECT_EQ(rec.examples, plain->history[r].examples);
    EXPECT_GT(rec.extra.at("secure_client_seconds").get<double>(), 0.0);
    EXPECT_GT(rec.extra.at("bytes_up").get<int64_t>(), 0);
  }
  // The same model up to the fixed-point resolution (2^-20 per coordinate and client).
  for (size_t i = 0; i < plain->global.size(); ++i) {
    EXPECT_TRUE(torch::allclose(plain->global[i], secure->global[i], 1e-4, 1e-4))
        << i << " max diff " << (plain->global[i] - secure->global[i]).abs().max().item<float>()
        << " max " << plain->global[i].abs().max().item<float>();
  }
  SimOptions dropping = SimSmall(true);
  dropping.dropout = 0.3;
  dropping.seed = 3;
  auto dropped = RunSimulation(dropping, data);
  ASSERT_TRUE(dropped.ok()) << dropped.status().ToString();
  int recovered = 0;
  for (const RoundRecord& rec : dropped->history) {
    if (rec.applied)
      recovered += rec.extra.at("secure_aggregation").at("recovered_dropouts").get<int>();
  }
  EXPECT_GT(recovered, 0);
  // DP-FedAvg with distributed noise: accounted per round with the survivors' noise.
  SimOptions dp = SimSmall(true);
  dp.strategy.name = "dpfedavg";
  dp.strategy.dp.clip_norm = 0.5;
  dp.strategy.dp.noise_multiplier = 1.0;
  dp.strategy.dp.seed = 3;
  dp.dropout = 0.2;
  auto dp_run = RunSimulation(dp, data);
  ASSERT_TRUE(dp_run.ok()) << dp_run.status().ToString();
  double last_epsilon = 0;
  for (const RoundRecord& rec : dp_run->history) {
    if (!rec.applied) continue;
    const nlohmann::json& report = rec.extra.at("strategy").at("dp");
    EXPECT_TRUE(report.at("distributed_noise").get<bool>());
    const double k = report.at("contributors").get<double>();
    const double n = report.at("roster").get<double>();
    EXPECT_NEAR(report.at("effective_noise_multiplier").get<double>(), std::sqrt(k / n), 1e-9);
    EXPECT_GT(report.at("epsilon").get<double>(), last_epsilon);
    last_epsilon = report.at("epsilon").get<double>();
    EXPECT_EQ(rec.examples, 0);  // the weights count clients, not examples
  }
  EXPECT_GT(last_epsilon, 0);
  SimOptions adaptive = dp;
  adaptive.strategy.dp.adaptive_clip = true;
  EXPECT_EQ(RunSimulation(adaptive, data).status().code(), StatusCode::kInvalidArgument);
  SimOptions robust = SimSmall(true);
  robust.strategy.name = "fedmedian";
  EXPECT_EQ(RunSimulation(robust, data).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::federated
