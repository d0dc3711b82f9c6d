#include "common/plot.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

constexpr char kNoGnuplot[] =
    "gnuplot is not on PATH: install the Debian package gnuplot-nox (scripts/packages.txt; "
    "scripts/test installs it)";

bool GnuplotInstalled() {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    if (::access((dirs.substr(start, end - start) + "/gnuplot").c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

uint32_t BigEndian32(const std::string& s, size_t at) {
  return (uint32_t{static_cast<uint8_t>(s[at])} << 24) |
         (uint32_t{static_cast<uint8_t>(s[at + 1])} << 16) |
         (uint32_t{static_cast<uint8_t>(s[at + 2])} << 8) | static_cast<uint8_t>(s[at + 3]);
}

PlotSpec SimpleSpec() {
  PlotSpec spec;
  spec.title = "accuracy vs. bytes";
  spec.xlabel = "bytes sent";
  spec.ylabel = "accuracy";
  spec.series.push_back({"exit 1", {1, 10, 100}, {0.5, 0.7, 0.9}});
  return spec;
}

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_plot_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Asserts `path` is a PNG and returns its width and height.
  std::pair<uint32_t, uint32_t> PngSize(const fs::path& path) {
    std::string bytes = ReadFileToString(path).value_or("");
    EXPECT_GT(bytes.size(), 24u);
    if (bytes.size() <= 24) return {0, 0};
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_EQ(bytes.substr(12, 4), "IHDR");
    return {BigEndian32(bytes, 16), BigEndian32(bytes, 20)};
  }
  fs::path dir_;
};

TEST_F(PlotTest, RendersLinesScatterAndLogAxis) {
  if (!GnuplotInstalled()) GTEST_SKIP() << kNoGnuplot;
  PlotSpec spec = SimpleSpec();
  spec.log_x = true;
  spec.series.push_back({"scatter", {2, 20, 200, 2000}, {0.4, NAN, 0.8, 0.95}, true});
  const fs::path png = dir_ / "chart.png";
  Status s = WritePlotPng(spec, png);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(PngSize(png), (std::pair<uint32_t, uint32_t>{1024, 640}));
}

TEST_F(PlotTest, HostileTextCannotInjectCommands) {
  if (!GnuplotInstalled()) GTEST_SKIP() << kNoGnuplot;
  const fs::path marker = dir_ / "pwned";
  PlotSpec spec = SimpleSpec();
  spec.title = "it's \"quoted\" \\ back'\nsystem 'touch " + marker.string() + "'\n#";
  spec.xlabel = "x_{1}^2 @HOME & $HOME `touch " + marker.string() + "` \\ \"";
  spec.ylabel = "'; system('touch " + marker.string() + "'); '";
  spec.series[0].label = "a''b\r\n\xe2\x82\xac";  // ends in UTF-8 euro sign
  Status s = WritePlotPng(spec, dir_ / "chart.png");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(fs::exists(marker));
  PngSize(dir_ / "chart.png");
}

TEST_F(PlotTest, ReplacesExistingPngAndLeavesNoTemporaries) {
  if (!GnuplotInstalled()) GTEST_SKIP() << kNoGnuplot;
  const fs::path png = dir_ / "chart.png";
  ASSERT_TRUE(WriteFileAtomic(png, "not a png").ok());
  const fs::path tmp = dir_ / "tmp";
  ASSERT_TRUE(fs::create_directory(tmp));
  const char* old_tmpdir = std::getenv("TMPDIR");
  std::string saved = old_tmpdir ? old_tmpdir : "";
  ::setenv("TMPDIR", tmp.c_str(), 1);
  Status s = WritePlotPng(SimpleSpec(), png);
  if (old_tmpdir) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  ASSERT_TRUE(s.ok()) << s.ToString();
  PngSize(png);
  EXPECT_TRUE(fs::is_empty(tmp));  // the work directory was removed
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir_)) entries += e.path() != tmp;
  EXPECT_EQ(entries, 1u);  // only chart.png: no stray temporary file
}

TEST_F(PlotTest, InvalidSpecsAreRejected) {
  PlotSpec none = SimpleSpec();
  none.series.clear();
  EXPECT_EQ(WritePlotPng(none, dir_ / "a.png").code(), StatusCode::kInvalidArgument);

  PlotSpec empty = SimpleSpec();
  empty.series[0].x.clear();
  empty.series[0].y.clear();
  Status s = WritePlotPng(empty, dir_ / "a.png");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("exit 1"), std::string::npos);

  PlotSpec mismatch = SimpleSpec();
  mismatch.series[0].y.pop_back();
  s = WritePlotPng(mismatch, dir_ / "a.png");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("3 x values but 2 y values"), std::string::npos);

  PlotSpec log_zero = SimpleSpec();
  log_zero.log_x = true;
  log_zero.series[0].x[0] = 0;
  s = WritePlotPng(log_zero, dir_ / "a.png");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("logarithmic"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "a.png"));
}

TEST_F(PlotTest, MissingGnuplotNamesThePackage) {
  Status s = WritePlotPng(SimpleSpec(), dir_ / "a.png", (dir_ / "no-such-gnuplot").string());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("apt-get install gnuplot-nox"), std::string::npos) << s.ToString();
  EXPECT_FALSE(fs::exists(dir_ / "a.png"));
}

TEST_F(PlotTest, FailingGnuplotIsInternalWithDetails) {
  // A "gnuplot" that prints an error and fails, on both terminals tried.
  const fs::path fake = dir_ / "fake-gnuplot";
  ASSERT_TRUE(WriteFileAtomic(fake, "#!/bin/sh\necho 'boom: no terminal' >&2\nexit 3\n").ok());
  fs::permissions(fake, fs::perms::owner_all);
  Status s = WritePlotPng(SimpleSpec(), dir_ / "a.png", fake.string());
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("[pngcairo] exit code 3"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("[png] exit code 3"), std::string::npos);
  EXPECT_NE(s.message().find("boom: no terminal"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "a.png"));
}

TEST_F(PlotTest, FallsBackToPngTerminalWhenPngcairoFails) {
  if (!GnuplotInstalled()) GTEST_SKIP() << kNoGnuplot;
  // Wrapper that rejects scripts using pngcairo, like a gnuplot built without cairo.
  const fs::path fake = dir_ / "nocairo-gnuplot";
  ASSERT_TRUE(WriteFileAtomic(fake,
                              "#!/bin/sh\n"
                              "if grep -q pngcairo \"$2\"; then echo 'unknown terminal' >&2; "
                              "exit 1; fi\nexec gnuplot \"$@\"\n")
                  .ok());
  fs::permissions(fake, fs::perms::owner_all);
  Status s = WritePlotPng(SimpleSpec(), dir_ / "a.png", fake.string());
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(PngSize(dir_ / "a.png"), (std::pair<uint32_t, uint32_t>{1024, 640}));
}

TEST_F(PlotTest, MissingOutputDirectoryIsNotFound) {
  if (!GnuplotInstalled()) GTEST_SKIP() << kNoGnuplot;
  Status s = WritePlotPng(SimpleSpec(), dir_ / "missing" / "a.png");
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
}

HeatmapSpec Matrix3() {
  HeatmapSpec spec;
  spec.title = "accuracy matrix";
  spec.xlabel = "evaluated on";
  spec.ylabel = "after";
  spec.values = {{0.99, 0.0, 0.0}, {0.5, 0.97, 0.0}, {0.3, 0.4, 0.95}};
  return spec;
}

TEST_F(PlotTest, RendersAHeatMapWithLabelsAndBlankCells) {
  if (!GnuplotInstalled()) GTEST_SKIP() << kNoGnuplot;
  HeatmapSpec spec = Matrix3();
  spec.values[0][2] = std::nan("");
  spec.row_labels = {"exp 1", "exp 2", "exp 3 \"quoted\" `x`"};
  ASSERT_TRUE(WriteHeatmapPng(spec, dir_ / "m.png").ok());
  const auto [w, h] = PngSize(dir_ / "m.png");
  EXPECT_EQ(w, 900u);
  EXPECT_EQ(h, 760u);
}

TEST_F(PlotTest, InvalidHeatMapsAreRejected) {
  HeatmapSpec empty = Matrix3();
  empty.values.clear();
  EXPECT_EQ(WriteHeatmapPng(empty, dir_ / "m.png").code(), StatusCode::kInvalidArgument);
  HeatmapSpec ragged = Matrix3();
  ragged.values[1].pop_back();
  Status s = WriteHeatmapPng(ragged, dir_ / "m.png");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unequal"), std::string::npos) << s.ToString();
  HeatmapSpec labels = Matrix3();
  labels.column_labels = {"a", "b"};
  s = WriteHeatmapPng(labels, dir_ / "m.png");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("label count"), std::string::npos) << s.ToString();
  HeatmapSpec scale = Matrix3();
  scale.min = 1;
  scale.max = 1;
  EXPECT_EQ(WriteHeatmapPng(scale, dir_ / "m.png").code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_ / "m.png"));
}

TEST_F(PlotTest, HeatMapWithMissingGnuplotNamesThePackage) {
  Status s = WriteHeatmapPng(Matrix3(), dir_ / "m.png", (dir_ / "no-such-gnuplot").string());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("gnuplot-nox"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace cleave
