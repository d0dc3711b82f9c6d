#include "common/admin_http.h"

#include <httplib.h>

#include <gtest/gtest.h>
#include <prometheus/counter.h>

namespace cleave {
namespace {

TEST(AdminServerTest, ServesMetricsHealthAndReadiness) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& family = prometheus::BuildCounter()
                     .Name("cleave_test_requests_total")
                     .Help("requests seen by the test")
                     .Register(*registry);
  family.Add({{"outcome", "exit"}}).Increment(3);
  auto admin = AdminServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(admin.ok()) << admin.status().ToString();
  ASSERT_GT((*admin)->port(), 0);
  EXPECT_EQ((*admin)->url(), "http://127.0.0.1:" + std::to_string((*admin)->port()));

  httplib::Client client("127.0.0.1", (*admin)->port());
  auto health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  // Not ready until the daemon says so, with the reason.
  auto ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  (*admin)->SetReady(false, "loading bundle");
  ready = client.Get("/readyz");
  EXPECT_EQ(ready->status, 503);
  EXPECT_NE(ready->body.find("loading bundle"), std::string::npos) << ready->body;
  (*admin)->SetReady(true);
  EXPECT_TRUE((*admin)->ready());
  EXPECT_EQ(client.Get("/readyz")->status, 200);

  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("cleave_test_requests_total{outcome=\"exit\"} 3"), std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  EXPECT_EQ(client.Get("/nope")->status, 404);

  // The port is taken while the server lives; bad addresses are rejected.
  auto twice = AdminServer::Start("127.0.0.1:" + std::to_string((*admin)->port()), registry);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.status().code(), StatusCode::kIoError);
  for (const char* bad : {"nohost", ":80", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"}) {
    EXPECT_EQ(AdminServer::Start(bad, registry).status().code(), StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(AdminServer::Start("127.0.0.1:0", nullptr).status().code(),
            StatusCode::kInvalidArgument);
  admin->reset();  // stops promptly
  EXPECT_FALSE(client.Get("/healthz"));
}

TEST(AdminServerTest, DestroyedRightAfterStartStopsPromptly) {
  // httplib's stop() is a no-op until its accept loop runs; the destructor must still stop
  // (a daemon whose model fails to load destroys it at once).
  auto registry = std::make_shared<prometheus::Registry>();
  for (int i = 0; i < 20; ++i) {
    auto admin = AdminServer::Start("127.0.0.1:0", registry);
    ASSERT_TRUE(admin.ok()) << admin.status().ToString();
  }
}

TEST(AdminServerTest, DaemonWiringStartsNotReadyAndNamesTheKeyOnErrors) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto none = StartAdminServer("cloud", "cloud.admin_listen", "", registry);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr) << "an empty address means no admin port";

  auto admin = StartAdminServer("cloud", "cloud.admin_listen", "127.0.0.1:0", registry);
  ASSERT_TRUE(admin.ok()) << admin.status().ToString();
  ASSERT_NE(*admin, nullptr);
  EXPECT_FALSE((*admin)->ready());
  httplib::Client client("127.0.0.1", (*admin)->port());
  auto ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_NE(ready->body.find("loading"), std::string::npos) << ready->body;
  EXPECT_EQ(client.Get("/healthz")->status, 200) << "live while loading";

  auto taken = StartAdminServer("cloud", "cloud.admin_listen",
                                "127.0.0.1:" + std::to_string((*admin)->port()), registry);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), StatusCode::kIoError);
  EXPECT_NE(taken.status().message().find("cloud.admin_listen"), std::string::npos)
      << taken.status().ToString();
  auto malformed = StartAdminServer("edge", "edge.admin_listen", "localhost", registry);
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(malformed.status().message().find("edge.admin_listen"), std::string::npos);
  EXPECT_NE(malformed.status().message().find("host:port"), std::string::npos);
}

}  // namespace
}  // namespace cleave
