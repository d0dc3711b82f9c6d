#include "split/input_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/jpeg_image.h"
#include "common/png_image.h"
#include "split/dataset.h"
#include "split/split_runtime.h"
#include "split/vision_bundle.h"
#include "split/vision_model.h"

namespace cleave::split {
namespace {

using ::testing::HasSubstr;

InputSpec RgbInput(int size, int classes) {
  InputSpec s;
  s.channels = 3;
  s.height = s.width = size;
  for (int i = 0; i < classes; ++i) s.class_names.push_back("class" + std::to_string(i));
  s.data = "folder:/somewhere";
  return s;
}

PixelImage Gradient(int channels, int height, int width) {
  PixelImage image;
  image.channels = static_cast<uint32_t>(channels);
  image.height = static_cast<uint32_t>(height);
  image.width = static_cast<uint32_t>(width);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        image.pixels.push_back(static_cast<uint8_t>((y * 13 + x * 7 + c * 50) % 256));
      }
    }
  }
  return image;
}

TEST(InputSpecTest, JsonRoundTrip) {
  InputSpec s = RgbInput(32, 4);
  s.resize_height = 36;
  s.resize_width = 40;
  auto back = InputSpec::FromJson(nlohmann::json::parse(s.ToJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), s.ToJson());
  EXPECT_EQ(back->resize_width, 40);
  EXPECT_EQ(back->class_names[3], "class3");
}

TEST(InputSpecTest, EveryRejection) {
  const std::vector<std::pair<const char*, std::function<void(InputSpec&)>>> breakages = {
      {"channels", [](InputSpec& s) { s.channels = 2; }},
      {"height", [](InputSpec& s) { s.height = 0; }},
      {"width", [](InputSpec& s) { s.width = 5000; }},
      {"resize", [](InputSpec& s) { s.resize_height = s.resize_width = 16; }},
      {"resize", [](InputSpec& s) { s.resize_height = 40; }},
      {"class_names", [](InputSpec& s) { s.class_names.resize(1); }},
      {"class_names[1]", [](InputSpec& s) { s.class_names[1].clear(); }},
      {"class_names[2]", [](InputSpec& s) { s.class_names[2] = std::string(300, 'x'); }},
  };
  for (const auto& [fragment, breakage] : breakages) {
    InputSpec s = RgbInput(32, 4);
    breakage(s);
    const Status status = s.Validate();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << fragment;
    EXPECT_THAT(status.message(), HasSubstr(fragment));
    EXPECT_FALSE(InputSpec::FromJson(s.ToJson()).ok()) << fragment;
  }
  for (const char* key : {"channels", "height", "width", "resize", "class_names"}) {
    nlohmann::json j = RgbInput(32, 4).ToJson();
    j.erase(key);
    EXPECT_FALSE(InputSpec::FromJson(j).ok()) << key;
  }
  nlohmann::json bad_resize = RgbInput(32, 4).ToJson();
  bad_resize["resize"] = {40};
  EXPECT_FALSE(InputSpec::FromJson(bad_resize).ok());
  EXPECT_FALSE(InputSpec::FromJson(nlohmann::json::array()).ok());
}

TEST(InputSpecTest, LegacyDescribesFashionMnistModels) {
  const InputSpec fashion = InputSpec::Legacy(VisionModelSpec::DefaultSplit());
  EXPECT_EQ(fashion.channels, 1);
  EXPECT_EQ(fashion.height, 28);
  EXPECT_EQ(fashion.class_names, FashionMnistClassNames());
  ASSERT_TRUE(fashion.Validate().ok());
  EXPECT_TRUE(fashion.CheckMatches(VisionModelSpec::DefaultSplit()).ok());

  auto rgb = VisionModelSpec::DefaultSplit().ForInput(3, 32, 5, {0.5f}, {0.25f});
  ASSERT_TRUE(rgb.ok());
  const InputSpec numbered = InputSpec::Legacy(*rgb);
  EXPECT_EQ(numbered.class_names, (std::vector<std::string>{"0", "1", "2", "3", "4"}));
  EXPECT_EQ(numbered.channels, 3);
  const Status mismatch = fashion.CheckMatches(*rgb);
  EXPECT_EQ(mismatch.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.message(), HasSubstr("does not match the network"));
}

TEST(InputSpecTest, PrepareConvertsChannelsAndSize) {
  const InputSpec rgb = RgbInput(8, 2);
  std::vector<uint8_t> out(static_cast<size_t>(rgb.bytes()));

  // Same shape: HWC -> CHW, nothing else.
  const PixelImage same = Gradient(3, 8, 8);
  ASSERT_TRUE(rgb.Prepare(same, out.data()).ok());
  EXPECT_EQ(out[0], same.pixels[0]);                   // channel 0, pixel 0
  EXPECT_EQ(out[64], same.pixels[1]);                  // channel 1, pixel 0
  EXPECT_EQ(out[2 * 64 + 9], same.pixels[9 * 3 + 2]);  // channel 2, pixel (1, 1)

  // Gray -> RGB replicates the plane; a larger image is resized to 8x8.
  ASSERT_TRUE(rgb.Prepare(Gradient(1, 16, 16), out.data()).ok());
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(out[i], out[64 + i]);
    EXPECT_EQ(out[i], out[128 + i]);
  }

  // RGB -> gray: BT.601 luma of (200, 100, 50) = (59800 + 58700 + 5700 + 500) / 1000 = 124.
  InputSpec gray = rgb;
  gray.channels = 1;
  PixelImage one_color = Gradient(3, 8, 8);
  for (size_t i = 0; i < one_color.pixels.size(); i += 3) {
    one_color.pixels[i] = 200;
    one_color.pixels[i + 1] = 100;
    one_color.pixels[i + 2] = 50;
  }
  std::vector<uint8_t> gray_out(64);
  ASSERT_TRUE(gray.Prepare(one_color, gray_out.data()).ok());
  EXPECT_EQ(gray_out[0], 124);
  EXPECT_EQ(gray_out[63], 124);

  // Resize then center-crop: a 4x4 image scaled to 10x10 and cropped to 8x8 equals the
  // middle of the 10x10 resize.
  InputSpec cropped = rgb;
  cropped.resize_height = cropped.resize_width = 10;
  const PixelImage small = Gradient(3, 4, 4);
  ASSERT_TRUE(cropped.Prepare(small, out.data()).ok());
  InputSpec full = rgb;
  full.height = full.width = 10;
  std::vector<uint8_t> full_out(static_cast<size_t>(full.bytes()));
  ASSERT_TRUE(full.Prepare(small, full_out.data()).ok());
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 8; ++y) {
      for (int x = 0; x < 8; ++x) {
        ASSERT_EQ(out[c * 64 + y * 8 + x], full_out[c * 100 + (y + 1) * 10 + (x + 1)]);
      }
    }
  }
}

TEST(InputSpecTest, PrepareRefusesWhatItCannotConvert) {
  const InputSpec rgb = RgbInput(8, 2);
  std::vector<uint8_t> out(static_cast<size_t>(rgb.bytes()));
  PixelImage four = Gradient(3, 8, 8);
  four.channels = 4;
  four.pixels.resize(8 * 8 * 4);
  EXPECT_THAT(rgb.Prepare(four, out.data()).message(), HasSubstr("4 channels"));
  PixelImage short_pixels = Gradient(3, 8, 8);
  short_pixels.pixels.resize(10);
  EXPECT_EQ(rgb.Prepare(short_pixels, out.data()).code(), StatusCode::kInvalidArgument);
  PixelImage empty;
  empty.channels = 3;
  EXPECT_EQ(rgb.Prepare(empty, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(rgb.PrepareChw(out.data(), 0, 8, 8, out.data()).code(), StatusCode::kInvalidArgument);
}

TEST(InputSpecTest, PrepareChwMatchesPrepare) {
  InputSpec rgb = RgbInput(8, 2);
  rgb.resize_height = rgb.resize_width = 12;
  const PixelImage image = Gradient(3, 20, 14);
  std::vector<uint8_t> chw(image.pixels.size());
  const size_t plane = 20 * 14;
  for (size_t i = 0; i < plane; ++i) {
    for (size_t c = 0; c < 3; ++c) chw[c * plane + i] = image.pixels[i * 3 + c];
  }
  std::vector<uint8_t> a(static_cast<size_t>(rgb.bytes())), b(a.size());
  ASSERT_TRUE(rgb.Prepare(image, a.data()).ok());
  ASSERT_TRUE(rgb.PrepareChw(chw.data(), 3, 20, 14, b.data()).ok());
  EXPECT_EQ(a, b);
}

TEST(VisionModelSpecForInputTest, EveryPresetFitsRgb32With100Classes) {
  for (const VisionModelSpec& preset :
       {VisionModelSpec::DefaultSplit(), VisionModelSpec::TinySplit(), VisionModelSpec::SimpleCnn(),
        VisionModelSpec::DefaultTeacher(), VisionModelSpec::ResidualSplit()}) {
    auto spec = preset.ForInput(3, 32, 100, {0.1f, 0.2f, 0.3f}, {0.5f, 0.6f, 0.7f});
    ASSERT_TRUE(spec.ok()) << spec.status().ToString();
    EXPECT_EQ(spec->blocks[0].in_channels, 3);
    EXPECT_EQ(spec->blocks.back().out_channels, 100);
    SplitVisionNet net(*spec);
    net->eval();
    torch::NoGradGuard no_grad;
    EXPECT_EQ(net->forward(torch::rand({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 100}));
  }
  // SimpleCnn's first linear layer takes the new flattened size: 16 x 5 x 5 at 32x32.
  auto cnn = VisionModelSpec::SimpleCnn().ForInput(3, 32, 10, {0.5f}, {0.25f});
  ASSERT_TRUE(cnn.ok());
  EXPECT_EQ(cnn->blocks[4].in_channels, 16 * 5 * 5);
}

TEST(VisionModelSpecForInputTest, RefusesInputsTooSmallOrBadNormalization) {
  auto tiny = VisionModelSpec::SimpleCnn().ForInput(1, 8, 10, {0.5f}, {0.25f});
  ASSERT_FALSE(tiny.ok());
  EXPECT_THAT(tiny.status().message(), HasSubstr("1x8x8 inputs"));
  EXPECT_FALSE(VisionModelSpec::DefaultSplit().ForInput(3, 32, 10, {0.5f, 0.5f}, {0.25f}).ok());
  EXPECT_FALSE(VisionModelSpec::DefaultSplit().ForInput(3, 32, 1, {0.5f}, {0.25f}).ok());
}

TEST(VisionModelSpecForInputTest, NormalizesPerChannel) {
  auto spec =
      VisionModelSpec::TinySplit().ForInput(3, 28, 10, {0.0f, 0.5f, 1.0f}, {1.0f, 0.5f, 0.25f});
  ASSERT_TRUE(spec.ok());
  SplitVisionNet net(*spec);
  const torch::Tensor ones = torch::ones({1, 3, 2, 2});
  const torch::Tensor x = net->Preprocess(ones);
  EXPECT_FLOAT_EQ(x[0][0][0][0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(x[0][1][0][0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(x[0][2][0][0].item<float>(), 0.0f);
  // JSON: arrays for per-channel values, a number for one value (older manifests).
  EXPECT_TRUE(spec->ToJson()["input_mean"].is_array());
  EXPECT_TRUE(VisionModelSpec::TinySplit().ToJson()["input_mean"].is_number());
  auto back = VisionModelSpec::FromJson(spec->ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->input_std, spec->input_std);
}

// A fixture with a folder dataset of RGB images of another size than the network's.
class RgbFolderDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cleave_input_spec_" + UniqueSuffix());
    for (const char* split : {"train", "test"}) {
      for (int c = 0; c < 3; ++c) {
        const std::filesystem::path folder = dir_ / split / ("kind" + std::to_string(c));
        std::filesystem::create_directories(folder);
        for (int i = 0; i < 4; ++i) {
          PixelImage image = Gradient(3, 20, 20);
          for (auto& p : image.pixels) p = static_cast<uint8_t>(p + 40 * c + 9 * i);
          const bool jpeg = i % 2 == 1;
          const std::string bytes = jpeg ? *EncodeJpegPixels(image, 95) : *EncodePngPixels(image);
          ASSERT_TRUE(WriteFileAtomic(
                          (folder / (std::to_string(i) + (jpeg ? ".jpg" : ".png"))).string(), bytes)
                          .ok());
          files_.push_back(bytes);
        }
      }
    }
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::filesystem::path dir_;
  std::vector<std::string> files_;  // train then test, in dataset order
};

// Preprocessing equality: what training loads from the dataset equals what the edge makes of
// the same file sent as a request (DecodeImageTensor, the edge and cloud path).
TEST_F(RgbFolderDataTest, TrainingAndEdgeSeeTheSameTensors) {
  DatasetOptions options;
  options.image_size = 16;
  auto loaded = LoadDataset("folder:" + dir_.string(), options);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->input.channels, 3);
  EXPECT_EQ(loaded->input.height, 16);
  EXPECT_EQ(loaded->input.class_names, (std::vector<std::string>{"kind0", "kind1", "kind2"}));
  ASSERT_EQ(loaded->train.size(), 12);
  ASSERT_EQ(loaded->test.size(), 12);
  EXPECT_EQ(loaded->train.images.sizes(), (std::vector<int64_t>{12, 3, 16, 16}));
  for (int64_t i = 0; i < 12; ++i) {
    auto edge = DecodeImageTensor(files_[static_cast<size_t>(i)], loaded->input);
    ASSERT_TRUE(edge.ok()) << edge.status().ToString();
    EXPECT_TRUE(torch::equal(*edge, loaded->train.images.narrow(0, i, 1))) << i;
    EXPECT_EQ(loaded->train.labels[i].item<int64_t>(), i / 4);
  }
  auto [mean, std] = NormalizationFor("folder:" + dir_.string(), loaded->train);
  EXPECT_EQ(mean.size(), 3u);
  EXPECT_GT(std[0], 0.0f);
}

TEST_F(RgbFolderDataTest, NonSquareOrMismatchedDataIsRefused) {
  // 20x20 images without --image-size are fine (square); a model with 5 classes is not.
  auto loaded = LoadDataset("folder:" + dir_.string(), DatasetOptions());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->input.height, 20);
  InputSpec five = RgbInput(16, 5);
  auto mismatch = LoadSplitFor("folder:" + dir_.string(), DatasetSplit::kTest, five, 0);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(mismatch.status().message(), HasSubstr("has 3 classes but the model has 5"));
  auto missing = LoadDataset("folder:" + (dir_ / "nope").string(), DatasetOptions());
  EXPECT_FALSE(missing.ok());
  auto unknown = LoadDataset("tarball:" + dir_.string(), DatasetOptions());
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
}

TEST(VisionBundleInputTest, WrittenAndReadBackAndCheckedAgainstTheSpec) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("cleave_input_bundle_" + UniqueSuffix());
  auto spec = VisionModelSpec::TinySplit().ForInput(3, 28, 3, {0.5f}, {0.25f});
  ASSERT_TRUE(spec.ok());
  VisionSplitModel model;
  model.spec = *spec;
  model.input = RgbInput(28, 3);
  model.net = SplitVisionNet(model.spec);
  model.net->eval();
  auto shape = FeatureShape(model.spec);
  ASSERT_TRUE(shape.ok());
  model.wire_quant.scale.assign((*shape)[0], 0.1f);
  model.wire_quant.zero_point.assign((*shape)[0], 0);
  model.exit_policy = ExitPolicy(ExitCriterion::kMaxSoftmax, {0.9f});
  ASSERT_TRUE(WriteVisionBundle(dir, model).ok());
  auto bundle = Bundle::Open(dir);
  ASSERT_TRUE(bundle.ok());
  auto read = ReadVisionBundle(*bundle, VisionBundleParts());
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(read->input.ToJson(), model.input.ToJson());

  // An input that does not fit the spec is refused on write.
  VisionSplitModel wrong = model;
  wrong.input = RgbInput(32, 3);
  const Status refused = WriteVisionBundle(dir.string() + "-wrong", wrong);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace cleave::split
