#include "cloud/cloud_config.h"

#include <map>
#include <string>

#include <gtest/gtest.h>

namespace cleave::cloud {
namespace {

// The cleave-cloud config of the schema's defaults plus `flags` (key -> flag text).
Config Load(const std::map<std::string, std::string>& flags) {
  Result<Config> config = Config::Load(CloudSchema(), "", flags);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  return std::move(config).value();
}

void ExpectInvalidNaming(const Status& status, const std::string& key) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.ToString().find(key), std::string::npos) << status.ToString();
}

TEST(CloudConfigTest, ExactlyOneOfBundleAndRepository) {
  EXPECT_TRUE(CheckCloudConfig(Load({{"cloud.bundle", "b"}})).ok());
  EXPECT_TRUE(CheckCloudConfig(Load({{"cloud.model_repository", "r"}})).ok());
  ExpectInvalidNaming(CheckCloudConfig(Load({})), "cloud.bundle");
  ExpectInvalidNaming(
      CheckCloudConfig(Load({{"cloud.bundle", "b"}, {"cloud.model_repository", "r"}})),
      "cloud.model_repository");
  ExpectInvalidNaming(
      CheckCloudConfig(Load({{"cloud.model_repository", "r"}, {"cloud.reload_interval_ms", "0"}})),
      "cloud.reload_interval_ms");
}

TEST(CloudConfigTest, WorkersMustBeBetweenOneAnd256) {
  EXPECT_EQ(*CloudWorkers(Load({{"cloud.workers", "1"}})), 1);
  EXPECT_EQ(*CloudWorkers(Load({{"cloud.workers", "256"}})), 256);
  ExpectInvalidNaming(CloudWorkers(Load({{"cloud.workers", "0"}})).status(), "cloud.workers");
  ExpectInvalidNaming(CloudWorkers(Load({{"cloud.workers", "257"}})).status(), "cloud.workers");
}

TEST(CloudConfigTest, PrecisionIsParsedOrRefusedNamingTheKey) {
  Result<split::CloudModel::Options> fp32 =
      CloudModelOptionsFromConfig(Load({{"cloud.precision", "fp32"}}));
  ASSERT_TRUE(fp32.ok()) << fp32.status().ToString();
  EXPECT_EQ(fp32->precision, split::TailPrecision::kFp32);
  EXPECT_TRUE(CloudModelOptionsFromConfig(Load({})).ok());  // the default, auto
  ExpectInvalidNaming(CloudModelOptionsFromConfig(Load({{"cloud.precision", "fp8"}})).status(),
                      "cloud.precision");
}

TEST(CloudConfigTest, TailServerOptionsReadEveryServingKey) {
  Result<TailServerOptions> options =
      TailServerOptionsFromConfig(Load({{"cloud.listen", "tcp://127.0.0.1:0"},
                                        {"cloud.max_batch", "16"},
                                        {"cloud.max_queue_delay_us", "500"},
                                        {"cloud.hold_when_idle", "true"},
                                        {"cloud.max_queue", "32"},
                                        {"cloud.max_queue_wait_us", "700"},
                                        {"cloud.workers", "3"},
                                        {"cloud.threads", "0"}}));
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->listen, "tcp://127.0.0.1:0");
  EXPECT_EQ(options->max_batch, 16);
  EXPECT_EQ(options->max_queue_delay_us, 500);
  EXPECT_TRUE(options->hold_when_idle);
  EXPECT_EQ(options->max_queue, 32u);
  EXPECT_EQ(options->max_queue_wait_us, 700);
  EXPECT_EQ(options->workers, 3);
  EXPECT_EQ(options->intra_op_threads, 1);  // at least one thread per worker
}

TEST(CloudConfigTest, TailServerOptionsRefuseAnEmptyQueueAndBadWorkers) {
  ExpectInvalidNaming(TailServerOptionsFromConfig(Load({{"cloud.max_queue", "0"}})).status(),
                      "cloud.max_queue");
  ExpectInvalidNaming(TailServerOptionsFromConfig(Load({{"cloud.workers", "0"}})).status(),
                      "cloud.workers");
}

}  // namespace
}  // namespace cleave::cloud
