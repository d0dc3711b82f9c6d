// PNG line and scatter charts and heat maps rendered by gnuplot (Debian package gnuplot-nox).
//
// The chart data and a generated gnuplot script go to a private temporary directory;
// gnuplot runs as a child process (no shell, stdin from /dev/null, default settings so a
// user's ~/.gnuplot cannot interfere), and the finished PNG is checked and then moved
// into place atomically. Text (titles, labels, legends) is shown literally: quotes,
// backquotes, backslashes, '@' macros and enhanced-text markup cannot break out of the
// script's strings or run commands (newlines become line breaks). Safe to call from several threads
// at once (each call has its own directory).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"

namespace cleave {

struct PlotSeries {
  std::string label;
  std::vector<double> x, y;  // same length; NaN/inf values are left out as gaps
  bool points_only = false;  // scatter instead of a line with points
};

struct PlotSpec {
  std::string title, xlabel, ylabel;
  std::vector<PlotSeries> series;
  bool log_x = false;  // logarithmic x axis: every finite x must be > 0
};

// Renders `spec` to `png` (replaced atomically; its directory must exist). Tries the
// pngcairo terminal and falls back to the libgd png terminal. Errors: InvalidArgument
// (no series, an empty series, x/y length mismatch, x <= 0 with log_x),
// FailedPrecondition (gnuplot is not installed: names the package), Internal (gnuplot
// failed: includes its stderr), IoError / NotFound (writing files).
Status WritePlotPng(const PlotSpec& spec, const std::filesystem::path& png);

// As above, running `gnuplot_program` (a name looked up in PATH, or a path) instead of
// "gnuplot".
Status WritePlotPng(const PlotSpec& spec, const std::filesystem::path& png,
                    const std::string& gnuplot_program);

// A heat map of a matrix (e.g. continual learning's accuracy matrix R[i][j]): cell (i, j) is
// drawn at column j, row i (row 0 on top) with its value printed in it. NaN cells are blank.
struct HeatmapSpec {
  std::string title, xlabel, ylabel;
  std::vector<std::vector<double>> values;             // rows x columns, every row as long
  std::vector<std::string> row_labels, column_labels;  // empty = 1, 2, ...
  double min = 0, max = 1;                             // the colour scale
};
// Errors as WritePlotPng (InvalidArgument for an empty or ragged matrix or labels of the
// wrong count, or min >= max).
Status WriteHeatmapPng(const HeatmapSpec& spec, const std::filesystem::path& png);
Status WriteHeatmapPng(const HeatmapSpec& spec, const std::filesystem::path& png,
                       const std::string& gnuplot_program);

}  // namespace cleave
