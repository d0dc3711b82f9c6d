#include "edge/cli/classify_command.h"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/curve.h"
#include "common/datasets.h"
#include "common/image_codec.h"
#include "common/png_image.h"
#include "common/transport.h"
#include "edge/edge_config.h"
#include "edge/edge_engine.h"
#include "edge/offload_client.h"
#include "split/split_runtime.h"

namespace cleave::edge {
namespace {

// Reads images from PNG, JPEG or PGM files, or IDX files (.gz or raw), at their own size and
// colour: the engine converts each to what the bundle declares.
Result<std::vector<std::pair<std::string, PixelImage>>> ReadInputs(
    const std::vector<std::string>& paths) {
  std::vector<std::pair<std::string, PixelImage>> images;
  for (const std::string& path : paths) {
    const bool idx =
        path.find("idx") != std::string::npos || path.find("ubyte") != std::string::npos;
    if (idx) {
      CLEAVE_ASSIGN_OR_RETURN(ImageDataset data, LoadIdxImagesOnly(path));
      const size_t area = size_t{data.rows} * data.cols;
      for (size_t i = 0; i < data.size(); ++i) {
        PixelImage image;
        image.width = data.cols;
        image.height = data.rows;
        image.channels = 1;
        image.pixels.assign(data.images.begin() + i * area, data.images.begin() + (i + 1) * area);
        images.emplace_back(path + "[" + std::to_string(i) + "]", std::move(image));
      }
      continue;
    }
    Result<PixelImage> decoded = ReadImagePixelsFile(path, 0);
    if (!decoded.ok()) {
      // Binary PGM, which the PNG/JPEG reader does not take.
      Result<GrayImage> gray = ReadImageFile(path);
      if (!gray.ok()) return decoded.status();
      PixelImage image;
      image.width = gray->width;
      image.height = gray->height;
      image.channels = 1;
      image.pixels = std::move(gray->pixels);
      decoded = std::move(image);
    }
    images.emplace_back(path, *std::move(decoded));
  }
  return images;
}

}  // namespace

Status Classify(const Config& config, const ClassifyArgs& args) {
  CLEAVE_ASSIGN_OR_RETURN(ServableEngine loaded, LoadConfiguredEngine(config, nullptr));
  EdgeEngine& engine = *loaded.engine;
  auto inputs = ReadInputs(args.paths);
  if (!inputs.ok()) return inputs.status();
  if (args.limit > 0 && static_cast<int>(inputs->size()) > args.limit) {
    inputs->resize(args.limit);
  }

  TransportContext context;
  std::unique_ptr<OffloadClient> cloud;
  const std::string endpoint = config.GetString("edge.cloud");
  if (!endpoint.empty()) {
    SocketOptions socket;
    if (Status s = SetUpCurveClient(config.GetString("edge.curve_secret_key"),
                                    config.GetString("edge.cloud_curve_public_key"), socket);
        !s.ok()) {
      return s.WithContext("edge.cloud_curve_public_key");
    }
    auto client = OffloadClient::Connect(context, endpoint, socket);
    if (!client.ok()) return client.status();
    cloud = std::move(client).value();
  }
  const int deadline_ms = static_cast<int>(config.GetInt("edge.deadline_ms"));
  const size_t batch = std::max<int64_t>(1, config.GetInt("edge.max_batch"));
  const split::InputSpec& input = engine.model().info().input;
  uint64_t next_id = 1;
  for (size_t start = 0; start < inputs->size(); start += batch) {
    const size_t n = std::min(batch, inputs->size() - start);
    std::vector<torch::Tensor> rows;
    std::vector<uint64_t> ids;
    for (size_t i = 0; i < n; ++i) {
      const auto& [name, image] = (*inputs)[start + i];
      Result<torch::Tensor> row = split::PrepareImageTensor(image, input);
      if (!row.ok()) return row.status().WithContext(name);
      rows.push_back(*std::move(row));
      ids.push_back(next_id++);
    }
    torch::Tensor images = torch::cat(rows, 0);
    auto decisions = engine.Decide(images, ids, std::vector<float>(n, -1.0f),
                                   std::vector<uint32_t>(n, deadline_ms));
    if (!decisions.ok()) return decisions.status();
    std::vector<std::pair<uint64_t, std::string>> offload;
    for (size_t i = 0; i < n; ++i) {
      if ((*decisions)[i].exit_index < 0 && cloud) {
        offload.emplace_back(ids[i], (*decisions)[i].offload_request);
      }
    }
    std::map<uint64_t, wire::InferReply> replies;
    if (!offload.empty()) {
      auto exchanged = cloud->Exchange(offload, deadline_ms);
      if (exchanged.ok()) replies = std::move(exchanged).value();
    }
    for (size_t i = 0; i < n; ++i) {
      const auto& d = (*decisions)[i];
      std::string source = "edge_exit";
      int32_t cls = d.best_class;
      if (d.exit_index < 0) {
        auto it = replies.find(ids[i]);
        if (it != replies.end() && it->second.status == wire::ReplyStatus::kOk) {
          source = "cloud";
          cls = ArgMax(it->second.scores);
        } else {
          source = "degraded";
        }
      }
      std::string label = engine.ClassName(cls);
      if (label.empty()) label = "?";
      if (args.json) {
        nlohmann::json line = {{"input", (*inputs)[start + i].first},
                               {"class", cls},
                               {"label", label},
                               {"source", source},
                               {"confidence", d.best_confidence}};
        std::cout << line.dump() << "\n";
      } else {
        std::printf("%-40s %2d %-12s %-9s conf=%.3f\n", (*inputs)[start + i].first.c_str(), cls,
                    label.c_str(), source.c_str(), d.best_confidence);
      }
    }
  }
  return Status::Ok();
}

void AddClassifyCommand(cli::DaemonCli& cli, const ConfigSchema& schema) {
  auto args = std::make_shared<ClassifyArgs>();
  CLI::App* classify = cli.app().add_subcommand(
      "classify", "classify image files (PNG, PGM) or IDX files (.gz or raw) once and exit");
  classify->add_option("inputs", args->paths, "image or IDX files")->required();
  classify->add_flag("--json", args->json, "print one JSON object per input");
  classify->add_option("--limit", args->limit, "classify at most this many images (0 = all)");
  cli.AddConfigCommand(*classify, schema,
                       [args](const Config& config) { return Classify(config, *args); });
}

}  // namespace cleave::edge
