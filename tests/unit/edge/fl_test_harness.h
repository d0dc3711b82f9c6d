// Fixtures for the edge's federated-learning tests. TinyFederationTest: the tiny split model,
// its initial weights and layout, 64 random labelled rows and client options tuned for fast
// tests (the base of FederatedClientTest, which plays the aggregator itself).
// InProcessFederationTest adds an in-process federation: the real AggregatorService on
// loopback and real FederatedClients; fixtures derive from it and adjust AggregatorOptions
// (secure aggregation, compression, ...).
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/metrics.h"
#include "edge/fl_client.h"
#include "federated/aggregator_service.h"
#include "federated/weights.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {

class TinyFederationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_ = split::VisionModelSpec::TinySplit();
    torch::manual_seed(3);
    split::SplitVisionNet net(spec_);
    initial_ = federated::GetWeights(*net);
    layout_ = federated::LayoutOf(*net);
    data_.images = testing::RandomImages(64, 5);
    data_.labels = torch::randint(0, 10, {64}, torch::kLong);
    options_.model_name = "tiny";
    options_.poll_interval_ms = 20;
    options_.register_retry_ms = 50;
    options_.min_backoff_ms = 10;
    options_.max_backoff_ms = 100;
  }

  // Declared first in the base: destroyed after every client and socket of a fixture or test.
  TransportContext context_;
  split::VisionModelSpec spec_;
  federated::Weights initial_;
  federated::WeightsLayout layout_;
  split::LabeledImages data_;
  FederatedClientOptions options_;  // for the clients the test starts
};

class InProcessFederationTest : public TinyFederationTest {
 protected:
  void TearDown() override {
    clients_.clear();
    StopAggregator();
  }

  federated::AggregatorOptions AggregatorOptions(int rounds, int clients) {
    federated::AggregatorOptions o;
    o.listen = "tcp://127.0.0.1:0";
    o.rounds = rounds;
    o.wait_for_clients = clients;
    o.engine.min_clients = clients;
    o.engine.quorum = 2;
    o.engine.trainable = federated::TrainableSet::kAll;
    o.engine.fit.max_steps = 3;
    o.engine.fit.batch_size = 16;
    o.engine.deadline_micros = 60'000'000;
    o.poll_interval_ms = 20;
    o.client_timeout_ms = 10000;
    o.metrics = std::make_shared<Metrics>();
    return o;
  }

  void StartAggregator(federated::AggregatorOptions options) {
    federated::AggregatorModel model;
    model.spec = spec_;
    model.initial = initial_;
    model.model_name = "tiny";
    model.eval_data = eval_data_;
    auto service = federated::AggregatorService::Create(options, model, context_, SystemClock());
    ASSERT_TRUE(service.ok()) << service.status().ToString();
    service_ = std::move(service).value();
    thread_ = std::thread([this] {
      run_status_ = service_->Run([this] { return stop_.load(); });
      finished_ = true;
    });
  }
  // Waits for the service to end by itself (all rounds done), else stops it. Summary() is read
  // only after the service thread has ended.
  bool JoinAggregator(int64_t timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!finished_.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const bool done = finished_.load();
    StopAggregator();
    return done && run_status_.ok();
  }
  void StopAggregator() {
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
  }

  void StartClient(const std::string& id, uint32_t drop_round = 0) {
    FederatedClientOptions o = options_;
    o.aggregator = service_->endpoint();
    o.client_id = id;
    o.secure_drop_round = drop_round;
    auto client = FederatedClient::Start(context_, o, spec_, initial_, data_);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    clients_.push_back(std::move(client).value());
  }

  split::LabeledImages eval_data_;  // the aggregator's test set (empty = none)
  std::unique_ptr<federated::AggregatorService> service_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, finished_{false};
  Status run_status_ = Status::Internal("not run");
  std::vector<std::unique_ptr<FederatedClient>> clients_;
};

}  // namespace cleave::edge
