#include "common/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <system_error>

#include "common/file_util.h"

extern char** environ;

namespace cleave {
namespace {

namespace fs = std::filesystem;

constexpr char kPngSignature[] = "\x89PNG\r\n\x1a\n";
constexpr size_t kMaxStderrInError = 2000;

// Removes a temporary directory tree when it goes out of scope.
class TempDir {
 public:
  static Result<TempDir> Create() {
    std::error_code ec;
    fs::path base = fs::temp_directory_path(ec);
    if (ec) base = "/tmp";
    std::string templ = (base / "cleave_plot_XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) {
      return Status::IoError("cannot create a temporary directory under '" + base.string() +
                             "': " + std::strerror(errno));
    }
    return TempDir(templ);
  }
  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  explicit TempDir(fs::path path) : path_(std::move(path)) {}
  fs::path path_;
};

// A gnuplot string literal holding `text` byte for byte. gnuplot runs backquote command
// substitution even inside double quotes and mishandles some quote doubling in single
// quotes, so every byte outside a small safe set is written as an octal escape ("\ooo"):
// the script line then contains no quote, backquote, '@', '$' or control character that
// could end the string or trigger substitution. UTF-8 passes through as escaped bytes.
std::string GnuplotQuote(const std::string& text) {
  static const std::string kSafe = " -_.,:;()+=/%";
  std::string out = "\"";
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) || kSafe.find(c) != std::string::npos) {
      out += c;
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\%03o", byte);
      out += escaped;
    }
  }
  return out + "\"";
}

Status ValidateSpec(const PlotSpec& spec) {
  if (spec.series.empty())
    return Status::InvalidArgument("plot '" + spec.title + "' has no series");
  for (const PlotSeries& s : spec.series) {
    if (s.x.size() != s.y.size()) {
      return Status::InvalidArgument("plot series '" + s.label + "' has " +
                                     std::to_string(s.x.size()) + " x values but " +
                                     std::to_string(s.y.size()) + " y values");
    }
    if (s.x.empty()) return Status::InvalidArgument("plot series '" + s.label + "' is empty");
    if (spec.log_x) {
      for (double x : s.x) {
        if (std::isfinite(x) && x <= 0) {
          return Status::InvalidArgument("plot series '" + s.label + "' has x = " +
                                         std::to_string(x) + " on a logarithmic x axis");
        }
      }
    }
  }
  return Status::Ok();
}

std::string FormatNumber(double v) {
  if (!std::isfinite(v)) return "?";  // `set datafile missing '?'`
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string BuildScript(const PlotSpec& spec, const std::string& terminal, const fs::path& dir,
                        const fs::path& out_png) {
  std::string s;
  s += "set terminal " + terminal + " noenhanced size 1024,640\n";
  s += "set output " + GnuplotQuote(out_png.string()) + "\n";
  s += "set datafile missing '?'\n";
  s += "set title " + GnuplotQuote(spec.title) + "\n";
  s += "set xlabel " + GnuplotQuote(spec.xlabel) + "\n";
  s += "set ylabel " + GnuplotQuote(spec.ylabel) + "\n";
  s += "set grid\nset key outside right top\n";
  if (spec.log_x) s += "set logscale x\n";
  s += "plot ";
  for (size_t i = 0; i < spec.series.size(); ++i) {
    const PlotSeries& series = spec.series[i];
    if (i > 0) s += ", \\\n     ";
    s += GnuplotQuote((dir / ("series_" + std::to_string(i) + ".dat")).string());
    s += " using 1:2 with " +
         std::string(series.points_only ? "points pt 7 ps 1" : "linespoints lw 2 pt 7 ps 0.6");
    s += " title " + GnuplotQuote(series.label);
  }
  return s + "\n";
}

// Runs `program -d script` with stdin/stdout on /dev/null and stderr to `stderr_path`.
// Returns the exit status, FailedPrecondition if the program does not exist.
Result<int> RunGnuplot(const std::string& program, const fs::path& script,
                       const fs::path& stderr_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  std::string arg0 = program, arg1 = "-d", arg2 = script.string();
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};
  pid_t pid = 0;
  int err = posix_spawnp(&pid, program.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err == ENOENT) {
    return Status::FailedPrecondition(
        "cannot draw plots: '" + program +
        "' was not found; install the Debian package gnuplot-nox (apt-get install gnuplot-nox)");
  }
  if (err != 0) {
    return Status::Internal("cannot start '" + program + "': " + std::strerror(err));
  }
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) return Status::Internal(std::string("waitpid: ") + std::strerror(errno));
  }
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  return 128 + (WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0);
}

// Renders the script `build(terminal, rendered_png)` makes into `png`, trying pngcairo and
// then libgd's png terminal.
Status Render(const TempDir& temp, const fs::path& png, const std::string& gnuplot_program,
              const std::function<std::string(const char*, const fs::path&)>& build) {
  const fs::path rendered = temp.path() / "plot.png";
  const fs::path script = temp.path() / "plot.gp";
  const fs::path errors = temp.path() / "gnuplot.err";
  std::string failures;
  for (const char* terminal : {"pngcairo", "png"}) {
    CLEAVE_RETURN_IF_ERROR(WriteFileDurable(script, build(terminal, rendered)));
    CLEAVE_ASSIGN_OR_RETURN(int exit_code, RunGnuplot(gnuplot_program, script, errors));
    Result<std::string> image = ReadFileToString(rendered);
    if (exit_code == 0 && image.ok() && image->size() > 8 &&
        image->compare(0, 8, kPngSignature, 8) == 0) {
      return WriteFileAtomic(png, *image).WithContext("writing plot");
    }
    std::string err_text = ReadFileToString(errors).value_or("");
    if (err_text.size() > kMaxStderrInError) err_text.resize(kMaxStderrInError);
    failures += std::string("\n[") + terminal + "] exit code " + std::to_string(exit_code) +
                (image.ok() ? "" : ", no PNG written") + ": " + err_text;
    std::error_code ec;
    fs::remove(rendered, ec);
  }
  return Status::Internal("gnuplot could not render '" + png.string() + "':" + failures);
}

std::string Tics(const std::vector<std::string>& labels, size_t count) {
  std::string s = "(";
  for (size_t i = 0; i < count; ++i) {
    if (i > 0) s += ", ";
    s += GnuplotQuote(labels.empty() ? std::to_string(i + 1) : labels[i]) + " " + std::to_string(i);
  }
  return s + ")";
}

}  // namespace

Status WritePlotPng(const PlotSpec& spec, const fs::path& png) {
  return WritePlotPng(spec, png, "gnuplot");
}

Status WritePlotPng(const PlotSpec& spec, const fs::path& png, const std::string& gnuplot_program) {
  CLEAVE_RETURN_IF_ERROR(ValidateSpec(spec));
  CLEAVE_ASSIGN_OR_RETURN(TempDir temp, TempDir::Create());
  for (size_t i = 0; i < spec.series.size(); ++i) {
    std::string data;
    const PlotSeries& series = spec.series[i];
    for (size_t j = 0; j < series.x.size(); ++j) {
      data += FormatNumber(series.x[j]) + " " + FormatNumber(series.y[j]) + "\n";
    }
    CLEAVE_RETURN_IF_ERROR(
        WriteFileDurable(temp.path() / ("series_" + std::to_string(i) + ".dat"), data));
  }
  return Render(temp, png, gnuplot_program, [&](const char* terminal, const fs::path& out) {
    return BuildScript(spec, terminal, temp.path(), out);
  });
}

Status WriteHeatmapPng(const HeatmapSpec& spec, const fs::path& png) {
  return WriteHeatmapPng(spec, png, "gnuplot");
}

Status WriteHeatmapPng(const HeatmapSpec& spec, const fs::path& png,
                       const std::string& gnuplot_program) {
  const size_t rows = spec.values.size();
  const size_t cols = rows > 0 ? spec.values[0].size() : 0;
  if (rows == 0 || cols == 0) {
    return Status::InvalidArgument("heat map '" + spec.title + "' has no values");
  }
  for (const auto& row : spec.values) {
    if (row.size() != cols) {
      return Status::InvalidArgument("heat map '" + spec.title + "' has rows of unequal length");
    }
  }
  if ((!spec.row_labels.empty() && spec.row_labels.size() != rows) ||
      (!spec.column_labels.empty() && spec.column_labels.size() != cols)) {
    return Status::InvalidArgument("heat map '" + spec.title +
                                   "' has a label count that differs from the matrix");
  }
  if (!std::isfinite(spec.min) || !std::isfinite(spec.max) || spec.min >= spec.max) {
    return Status::InvalidArgument("heat map '" + spec.title + "': min must be below max");
  }
  CLEAVE_ASSIGN_OR_RETURN(TempDir temp, TempDir::Create());
  std::string data;  // x y value label, one cell per line
  for (size_t i = 0; i < rows; ++i) {
    for (size_t j = 0; j < cols; ++j) {
      const double v = spec.values[i][j];
      // The cell's label: the value as a percentage with one decimal.
      char label[32] = "?";
      if (std::isfinite(v)) std::snprintf(label, sizeof(label), "%.1f", 100 * v);
      const std::string cell =
          std::to_string(j) + " " + std::to_string(i) + " " + FormatNumber(v) + " " + label + "\n";
      data += cell;
    }
  }
  const fs::path cells = temp.path() / "cells.dat";
  CLEAVE_RETURN_IF_ERROR(WriteFileDurable(cells, data));
  return Render(temp, png, gnuplot_program, [&](const char* terminal, const fs::path& out) {
    std::string s;
    s += "set terminal " + std::string(terminal) + " noenhanced size 900,760\n";
    s += "set output " + GnuplotQuote(out.string()) + "\n";
    s += "set datafile missing '?'\n";
    s += "set title " + GnuplotQuote(spec.title) + "\n";
    s += "set xlabel " + GnuplotQuote(spec.xlabel) + "\n";
    s += "set ylabel " + GnuplotQuote(spec.ylabel) + "\n";
    s += "set xrange [-0.5:" + std::to_string(cols - 0.5) + "]\n";
    s += "set yrange [" + std::to_string(rows - 0.5) + ":-0.5]\n";
    s += "set xtics " + Tics(spec.column_labels, cols) + "\n";
    s += "set ytics " + Tics(spec.row_labels, rows) + "\n";
    s += "set cbrange [" + FormatNumber(spec.min) + ":" + FormatNumber(spec.max) + "]\n";
    s += "set palette defined (0 '#f7fbff', 0.5 '#6baed6', 1 '#08306b')\n";
    s += "unset key\nset tics nomirror\n";
    s += "plot " + GnuplotQuote(cells.string()) + " using 1:2:3 with image, \\\n     " +
         GnuplotQuote(cells.string()) + " using 1:2:4 with labels font ',11'\n";
    return s;
  });
}

}  // namespace cleave
