// FrameSource: each kind delivers frames in order with their stream, and turns bad input
// (oversized, not an image, malformed messages or framing) into counted bad frames rather than
// errors; the directory never reads a file still being written; specs and formats that make
// no sense are refused with the accepted forms.
#include "edge/frame_source.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "common/png_image.h"
#include "testing/tiny_bundle.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;

// A small gray PNG whose pixels are all `value`.
std::string SourceTestPng(uint8_t value) {
  GrayImage image;
  image.width = image.height = 4;
  image.pixels.assign(16, value);
  Result<std::string> png = EncodePngGray8(image);
  EXPECT_TRUE(png.ok());
  return png.value_or("");
}

// Polls and reads `source` until it has delivered `n` inputs or `timeout_ms` passed.
std::vector<SourceFrame> ReadSourceFrames(FrameSource& source, size_t n, int timeout_ms = 3000) {
  std::vector<SourceFrame> frames;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (frames.size() < n && std::chrono::steady_clock::now() < until) {
    zmq_pollitem_t item = source.poll_item();
    zmq_poll(&item, 1, 20);
    Status read = source.Read(n - frames.size(), &frames);
    EXPECT_TRUE(read.ok()) << read.ToString();
    if (!read.ok()) break;
  }
  return frames;
}

// A frame as the stdin framing carries it.
std::string Framed(const std::string& bytes) {
  const uint32_t n = static_cast<uint32_t>(bytes.size());
  std::string out = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                     static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  return out + bytes;
}

void WriteAll(int fd, const std::string& bytes) {
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
}

TEST(FrameSourceTest, SpecsParseAndUnknownSchemesAreRefused) {
  auto pull = ParseSourceSpec("zmq-pull://tcp://127.0.0.1:5600");
  ASSERT_TRUE(pull.ok());
  EXPECT_EQ(pull->kind, SourceSpec::Kind::kZmqPull);
  EXPECT_TRUE(pull->bind);
  EXPECT_EQ(pull->endpoint, "tcp://127.0.0.1:5600");
  auto pull_connect = ParseSourceSpec("zmq-pull://>tcp://cam:5600");
  ASSERT_TRUE(pull_connect.ok());
  EXPECT_FALSE(pull_connect->bind);
  EXPECT_EQ(pull_connect->endpoint, "tcp://cam:5600");
  auto sub = ParseSourceSpec("zmq-sub://tcp://cam:5601");
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(sub->kind, SourceSpec::Kind::kZmqSub);
  EXPECT_FALSE(sub->bind);
  auto sub_bind = ParseSourceSpec("zmq-sub://@ipc:///tmp/frames");
  ASSERT_TRUE(sub_bind.ok());
  EXPECT_TRUE(sub_bind->bind);
  auto dir = ParseSourceSpec("dir:/var/spool/cam");
  ASSERT_TRUE(dir.ok());
  EXPECT_EQ(dir->kind, SourceSpec::Kind::kDirectory);
  EXPECT_EQ(dir->path, "/var/spool/cam");
  auto in = ParseSourceSpec("stdin");
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(in->kind, SourceSpec::Kind::kStdin);

  for (const char* bad : {"http://x", "zmq-push://tcp://x:1", "zmq-pull://", "zmq-sub://@nothing",
                          "dir:", "stdin2", ""}) {
    auto refused = ParseSourceSpec(bad);
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseSourceSpec("camera:0").status().message().find("zmq-pull://ENDPOINT"),
            std::string::npos);
}

TEST(FrameSourceTest, FormatsAfterActionsAndStreamIds) {
  auto gray = ParseFrameFormat("gray8:28x14");
  ASSERT_TRUE(gray.ok());
  EXPECT_EQ(gray->kind, FrameFormat::Kind::kGray8);
  EXPECT_EQ(gray->width, 28u);
  EXPECT_EQ(gray->height, 14u);
  EXPECT_TRUE(ParseFrameFormat("rgb8:640x480").ok());
  EXPECT_TRUE(ParseFrameFormat("auto").ok());
  for (const char* bad : {"gray8:28", "gray8:0x5", "rgb8:5000x1", "png", "gray8:ax2"}) {
    EXPECT_FALSE(ParseFrameFormat(bad).ok()) << bad;
  }
  auto move = ParseDirAfter("move:/done");
  ASSERT_TRUE(move.ok());
  EXPECT_EQ(move->kind, DirAfter::Kind::kMove);
  EXPECT_EQ(move->move_to, "/done");
  EXPECT_TRUE(ParseDirAfter("delete").ok());
  EXPECT_FALSE(ParseDirAfter("move:").ok());
  EXPECT_FALSE(ParseDirAfter("shred").ok());

  EXPECT_TRUE(CheckStreamId("cam-1/front_door:2@site.a").ok());
  EXPECT_FALSE(CheckStreamId("").ok());
  EXPECT_FALSE(CheckStreamId(std::string(129, 'a')).ok());
  EXPECT_FALSE(CheckStreamId("has space").ok());
  EXPECT_FALSE(CheckStreamId(std::string("nul\0byte", 8)).ok());
  EXPECT_FALSE(CheckStreamId(kOtherStream).ok());
}

TEST(FrameSourceTest, RawFramesMustHaveTheirSize) {
  FrameFormat format;
  format.kind = FrameFormat::Kind::kGray8;
  format.width = 4;
  format.height = 2;
  SourceFrame good;
  FillSourceFrame(format, 1024, std::string(8, 'x'), &good);
  ASSERT_TRUE(good.status.ok());
  EXPECT_EQ(good.kind, edge_api::ImageKind::kGray8);
  EXPECT_EQ(good.width, 4u);
  SourceFrame short_frame;
  FillSourceFrame(format, 1024, std::string(7, 'x'), &short_frame);
  EXPECT_FALSE(short_frame.status.ok());
  SourceFrame jpeg;
  FillSourceFrame(FrameFormat{}, 1024, "\xff\xd8\xff\xe0 rest", &jpeg);
  ASSERT_TRUE(jpeg.status.ok());
  EXPECT_EQ(jpeg.kind, edge_api::ImageKind::kJpeg);
}

TEST(FrameSourceTest, PullTakesOneAndTwoPartMessagesAndCountsBadOnes) {
  TransportContext context;
  FrameSourceOptions options;
  options.max_frame_bytes = 1000;
  auto spec = ParseSourceSpec("zmq-pull://inproc://frames-pull");
  ASSERT_TRUE(spec.ok());
  auto source = OpenZmqFrameSource(context, *spec, options);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  EXPECT_NE((*source)->description().find("inproc://frames-pull (bound)"), std::string::npos);
  zmq::socket_t push(context.raw(), zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect("inproc://frames-pull");
  const std::string png = SourceTestPng(7);
  push.send(zmq::buffer(png));
  push.send(zmq::buffer(std::string("cam1")), zmq::send_flags::sndmore);
  push.send(zmq::buffer(png));
  push.send(zmq::buffer(std::string("a")), zmq::send_flags::sndmore);  // three parts
  push.send(zmq::buffer(std::string("b")), zmq::send_flags::sndmore);
  push.send(zmq::buffer(png));
  push.send(zmq::buffer(std::string(2000, 'x')));  // oversized
  push.send(zmq::buffer(std::string("not an image")));

  std::vector<SourceFrame> frames = ReadSourceFrames(**source, 5);
  ASSERT_EQ(frames.size(), 5u);
  EXPECT_EQ(frames[0].stream, "");
  ASSERT_TRUE(frames[0].status.ok()) << frames[0].status.ToString();
  EXPECT_EQ(frames[0].kind, edge_api::ImageKind::kPng);
  EXPECT_EQ(frames[0].bytes, png);
  EXPECT_GT(frames[0].arrival_us, 0);
  EXPECT_EQ(frames[1].stream, "cam1");
  EXPECT_TRUE(frames[1].status.ok());
  EXPECT_FALSE(frames[2].status.ok());
  EXPECT_NE(frames[2].status.message().find("more than 2 parts"), std::string::npos);
  EXPECT_NE(frames[3].status.message().find("exceeds edge.source_max_bytes"), std::string::npos);
  EXPECT_NE(frames[4].status.message().find("not a PNG or JPEG"), std::string::npos);
  EXPECT_FALSE((*source)->finished());
}

TEST(FrameSourceTest, SubTakesItsTopicsExactly) {
  TransportContext context;
  FrameSourceOptions options;
  options.topics = {"cam1"};
  auto spec = ParseSourceSpec("zmq-sub://@inproc://frames-sub");
  ASSERT_TRUE(spec.ok());
  auto source = OpenZmqFrameSource(context, *spec, options);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  zmq::socket_t pub(context.raw(), zmq::socket_type::pub);
  pub.set(zmq::sockopt::linger, 0);
  pub.connect("inproc://frames-sub");
  const std::string png = SourceTestPng(1);
  const auto publish = [&](const std::string& topic, const std::string& bytes) {
    pub.send(zmq::buffer(topic), zmq::send_flags::sndmore);
    pub.send(zmq::buffer(bytes));
  };
  // A subscription reaches the publisher asynchronously: publish until one frame arrives.
  std::vector<SourceFrame> first;
  for (int i = 0; i < 200 && first.empty(); ++i) {
    publish("cam1", png);
    first = ReadSourceFrames(**source, 1, 20);
  }
  ASSERT_EQ(first.size(), 1u);
  for (auto& rest : ReadSourceFrames(**source, 1000, 100)) EXPECT_EQ(rest.stream, "cam1");
  // "cam10" passes ZeroMQ's prefix filter for "cam1" but is another stream.
  publish("cam10", png);
  publish("cam2", png);
  publish("cam1", SourceTestPng(2));
  std::vector<SourceFrame> frames = ReadSourceFrames(**source, 1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].stream, "cam1");
  EXPECT_EQ(frames[0].bytes, SourceTestPng(2));
  EXPECT_TRUE(ReadSourceFrames(**source, 1, 100).empty());

  FrameSourceOptions bad_topic;
  bad_topic.topics = {"no spaces"};
  EXPECT_FALSE(OpenZmqFrameSource(context, *spec, bad_topic).ok());
}

class FrameSourceDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempPath("frames_dir");
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Written to a scratch name, then renamed into place: what producers should do.
  void WriteAtomically(const std::string& name, const std::string& bytes) {
    ASSERT_TRUE(WriteFileAtomic(dir_ / ("." + name + ".tmp"), bytes).ok());
    fs::rename(dir_ / ("." + name + ".tmp"), dir_ / name);
  }

  fs::path dir_;
};

TEST_F(FrameSourceDirectoryTest, FilesAlreadyThereAreTakenByNameScratchNamesNever) {
  ASSERT_TRUE(WriteFileAtomic(dir_ / "b.png", SourceTestPng(2)).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ / "a.png", SourceTestPng(1)).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ / ".hidden.png", SourceTestPng(3)).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ / "c.png.part", SourceTestPng(4)).ok());
  fs::create_directories(dir_ / "sub");
  auto source = OpenDirectoryFrameSource(dir_.string(), {});
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  std::vector<SourceFrame> frames = ReadSourceFrames(**source, 10, 300);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].origin, "a.png");
  EXPECT_EQ(frames[0].bytes, SourceTestPng(1));
  EXPECT_EQ(frames[1].origin, "b.png");
  EXPECT_EQ(frames[0].stream, "");
  // `keep` leaves them, and they are not taken twice.
  EXPECT_TRUE(fs::exists(dir_ / "a.png"));
  EXPECT_TRUE(ReadSourceFrames(**source, 1, 100).empty());
}

TEST_F(FrameSourceDirectoryTest, HalfWrittenFilesWaitUntilClosedRenamedOnesComeAtOnce) {
  auto source = OpenDirectoryFrameSource(dir_.string(), {});
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  const std::string png = SourceTestPng(9);
  const int half = ::open((dir_ / "half.png").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(half, 0);
  WriteAll(half, png.substr(0, png.size() / 2));
  WriteAtomically("whole.png", SourceTestPng(5));
  std::vector<SourceFrame> frames = ReadSourceFrames(**source, 2, 300);
  ASSERT_EQ(frames.size(), 1u) << "a half-written file was read";
  EXPECT_EQ(frames[0].origin, "whole.png");
  EXPECT_TRUE(frames[0].status.ok());
  WriteAll(half, png.substr(png.size() / 2));
  ::close(half);
  frames = ReadSourceFrames(**source, 1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].origin, "half.png");
  ASSERT_TRUE(frames[0].status.ok()) << frames[0].status.ToString();
  EXPECT_EQ(frames[0].bytes, png);
}

TEST_F(FrameSourceDirectoryTest, TakenFilesAreDeletedOrMovedBadOnesCounted) {
  FrameSourceOptions options;
  options.max_frame_bytes = 200;
  options.after.kind = DirAfter::Kind::kDelete;
  auto deleting = OpenDirectoryFrameSource(dir_.string(), options);
  ASSERT_TRUE(deleting.ok());
  WriteAtomically("1.png", SourceTestPng(1));
  WriteAtomically("2.png", std::string(500, 'x'));  // oversized
  WriteAtomically("3.png", "text, not an image");
  std::vector<SourceFrame> frames = ReadSourceFrames(**deleting, 3);
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_TRUE(frames[0].status.ok());
  EXPECT_NE(frames[1].status.message().find("exceeds edge.source_max_bytes"), std::string::npos);
  EXPECT_NE(frames[2].status.message().find("not a PNG or JPEG"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir_)) << "taken files should be deleted";
  deleting->reset();

  const fs::path done = testing::TempPath("frames_done");
  fs::create_directories(done);
  options.after = *ParseDirAfter("move:" + done.string());
  auto moving = OpenDirectoryFrameSource(dir_.string(), options);
  ASSERT_TRUE(moving.ok()) << moving.status().ToString();
  WriteAtomically("4.png", SourceTestPng(4));
  ASSERT_EQ(ReadSourceFrames(**moving, 1).size(), 1u);
  EXPECT_FALSE(fs::exists(dir_ / "4.png"));
  EXPECT_TRUE(fs::exists(done / "4.png"));
  fs::remove_all(done);

  options.after = *ParseDirAfter("move:" + dir_.string());
  EXPECT_EQ(OpenDirectoryFrameSource(dir_.string(), options).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenDirectoryFrameSource((dir_ / "missing").string(), {}).status().code(),
            StatusCode::kNotFound);
}

TEST_F(FrameSourceDirectoryTest, RemovedDirectoryFailsTheSource) {
  auto source = OpenDirectoryFrameSource(dir_.string(), {});
  ASSERT_TRUE(source.ok());
  fs::remove_all(dir_);
  std::vector<SourceFrame> frames;
  Status read;
  for (int i = 0; i < 100 && read.ok(); ++i) {
    zmq_pollitem_t item = (*source)->poll_item();
    zmq_poll(&item, 1, 20);
    read = (*source)->Read(10, &frames);
  }
  EXPECT_EQ(read.code(), StatusCode::kNotFound);
  EXPECT_NE(read.message().find("was removed"), std::string::npos) << read.ToString();
}

class FrameSourceFdTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::pipe(fds_), 0); }
  void TearDown() override {
    source_.reset();
    CloseWriter();
    ::close(fds_[0]);
  }
  void Open(uint64_t max_frame_bytes = 4096) {
    FrameSourceOptions options;
    options.max_frame_bytes = max_frame_bytes;
    source_ = OpenFdFrameSource(fds_[0], "stdin", options);
  }
  void CloseWriter() {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
  }

  int fds_[2] = {-1, -1};
  std::unique_ptr<FrameSource> source_;
};

TEST_F(FrameSourceFdTest, LengthPrefixedFramesInOrderThenTheEnd) {
  Open();
  WriteAll(fds_[1], Framed(SourceTestPng(1)) + Framed(SourceTestPng(2)));
  // A frame split across writes is put together.
  const std::string third = Framed(SourceTestPng(3));
  WriteAll(fds_[1], third.substr(0, 6));
  std::vector<SourceFrame> frames = ReadSourceFrames(*source_, 3, 300);
  ASSERT_EQ(frames.size(), 2u);
  WriteAll(fds_[1], third.substr(6));
  CloseWriter();
  for (auto& f : ReadSourceFrames(*source_, 1)) frames.push_back(std::move(f));
  ASSERT_EQ(frames.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(frames[i].status.ok()) << frames[i].status.ToString();
    EXPECT_EQ(frames[i].bytes, SourceTestPng(static_cast<uint8_t>(i + 1)));
  }
  std::vector<SourceFrame> none;
  EXPECT_TRUE(source_->Read(10, &none).ok());
  EXPECT_TRUE(none.empty());
  EXPECT_TRUE(source_->finished());
}

TEST_F(FrameSourceFdTest, OversizedAndEmptyFramesAreSkippedAndCounted) {
  Open(/*max_frame_bytes=*/100);
  WriteAll(fds_[1], Framed(std::string(1000, 'x')) + Framed("") + Framed(SourceTestPng(4)));
  CloseWriter();
  std::vector<SourceFrame> frames = ReadSourceFrames(*source_, 3);
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_NE(frames[0].status.message().find("exceeds edge.source_max_bytes (100)"),
            std::string::npos)
      << frames[0].status.ToString();
  EXPECT_NE(frames[1].status.message().find("empty"), std::string::npos);
  ASSERT_TRUE(frames[2].status.ok()) << frames[2].status.ToString();
  EXPECT_EQ(frames[2].bytes, SourceTestPng(4));
}

TEST_F(FrameSourceFdTest, InputEndingInsideAFrameIsABadFrame) {
  Open();
  const std::string framed = Framed(SourceTestPng(1));
  WriteAll(fds_[1], framed.substr(0, framed.size() - 3));
  CloseWriter();
  std::vector<SourceFrame> frames = ReadSourceFrames(*source_, 1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_NE(frames[0].status.message().find("ended inside a frame"), std::string::npos)
      << frames[0].status.ToString();
  EXPECT_TRUE(source_->finished());
}

TEST_F(FrameSourceFdTest, UnframedPngIsRefusedWithTheFraming) {
  Open();
  WriteAll(fds_[1], SourceTestPng(1));
  Status read;
  std::vector<SourceFrame> frames;
  for (int i = 0; i < 100 && read.ok() && !source_->finished(); ++i) {
    read = source_->Read(10, &frames);
  }
  EXPECT_EQ(read.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(read.message().find("not length-prefixed"), std::string::npos) << read.ToString();
  EXPECT_NE(read.message().find("4-byte little-endian length"), std::string::npos);
  EXPECT_TRUE(frames.empty());
  EXPECT_TRUE(source_->finished());
}

}  // namespace
}  // namespace cleave::edge
