#include "tools/kernel_link.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/logging.h"

namespace cleave::tools {
namespace {

std::string Join(const std::vector<std::string>& argv) {
  std::string s;
  for (const std::string& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// "tc tbf rate" in bits per second, with a bucket of at least one full packet plus 10 ms of
// the rate, and a queue of a few seconds of the rate (at least 64 KiB) so a burst waits in the
// qdisc, as at a real narrow link's buffer, rather than being dropped at once.
std::vector<std::string> TbfArgs(const std::string& tc, const std::string& dev,
                                 double bandwidth_bps) {
  const auto rate = static_cast<uint64_t>(std::max(8.0, bandwidth_bps));
  const uint64_t burst = std::max<uint64_t>(3200, rate / 8 / 100);
  const uint64_t limit = std::max<uint64_t>(65536, rate / 8 * 3);
  return {tc,
          "qdisc",
          "replace",
          "dev",
          dev,
          "root",
          "tbf",
          "rate",
          std::to_string(rate) + "bit",
          "burst",
          std::to_string(burst),
          "limit",
          std::to_string(limit)};
}

// `name` found in PATH (or /usr/sbin, /sbin, where iproute2 lives), as an absolute path.
Result<std::string> FindProgram(const std::string& name) {
  std::string path = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
  path += ":/usr/sbin:/sbin";
  size_t begin = 0;
  while (begin <= path.size()) {
    const size_t end = std::min(path.find(':', begin), path.size());
    const std::string dir = path.substr(begin, end - begin);
    if (!dir.empty()) {
      const std::string candidate = dir + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    begin = end + 1;
  }
  return Status::NotFound("`" + name + "` is not installed (Debian package iproute2)");
}

int NextLinkIndex() {
  static std::atomic<int> n{0};
  return n.fetch_add(1) % 50;
}

}  // namespace

Result<std::string> RunCommand(const std::vector<std::string>& argv) {
  const std::filesystem::path log =
      std::filesystem::temp_directory_path() / ("cleave-cmd-" + UniqueSuffix() + ".log");
  Result<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(argv, log.string());
  if (!child.ok()) return child.status();
  Result<int> code = (*child)->Wait(10000);
  std::string output = ReadFileToString(log).value_or("");
  std::error_code ec;
  std::filesystem::remove(log, ec);
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
  if (!code.ok()) {
    (void)(*child)->Stop(1000);
    return Status::Unavailable("`" + Join(argv) + "` did not finish: " + code.status().message());
  }
  if (*code != 0) {
    return Status::Unavailable("`" + Join(argv) + "` failed (exit " + std::to_string(*code) +
                               "): " + output);
  }
  return output;
}

Status KernelLink::Probe() {
  if (::geteuid() != 0) return Status::FailedPrecondition("not root (netns and tc need it)");
  Result<std::unique_ptr<KernelLink>> link = Create(1e6);
  return link.ok() ? Status::Ok() : link.status();
}

Result<std::unique_ptr<KernelLink>> KernelLink::Create(double bandwidth_bps) {
  std::unique_ptr<KernelLink> link(new KernelLink());
  CLEAVE_ASSIGN_OR_RETURN(link->ip_, FindProgram("ip"));
  CLEAVE_ASSIGN_OR_RETURN(link->tc_, FindProgram("tc"));
  const int n = NextLinkIndex();
  const int pid = static_cast<int>(::getpid());
  const std::string ns = "cleave-" + std::to_string(pid) + "-" + std::to_string(n);
  const std::string stem = "clv" + std::to_string(pid % 100000) + std::to_string(n);
  link->veth_outer_ = stem + "a";
  link->veth_inner_ = stem + "b";
  const std::string net = "10." + std::to_string(200 + n) + "." + std::to_string(pid % 250) + ".";
  link->outer_ = net + "1";
  link->inner_ = net + "2";
  CLEAVE_RETURN_IF_ERROR(RunCommand({link->ip_, "netns", "add", ns}).status());
  link->ns_ = ns;
  // From here the destructor removes the namespace (and the veth end moved into it).
  const std::vector<std::vector<std::string>> setup = {
      {link->ip_, "link", "add", link->veth_outer_, "type", "veth", "peer", "name",
       link->veth_inner_},
      {link->ip_, "link", "set", link->veth_inner_, "netns", link->ns_},
      {link->ip_, "addr", "add", link->outer_ + "/24", "dev", link->veth_outer_},
      {link->ip_, "link", "set", link->veth_outer_, "up"},
      {link->ip_, "netns", "exec", link->ns_, link->ip_, "addr", "add", link->inner_ + "/24", "dev",
       link->veth_inner_},
      {link->ip_, "netns", "exec", link->ns_, link->ip_, "link", "set", link->veth_inner_, "up"},
      {link->ip_, "netns", "exec", link->ns_, link->ip_, "link", "set", "lo", "up"},
  };
  for (const auto& argv : setup) {
    Result<std::string> r = RunCommand(argv);
    if (!r.ok()) {
      // A veth made before the failure is not in the namespace yet: remove it here.
      (void)RunCommand({link->ip_, "link", "del", link->veth_outer_});
      return r.status();
    }
  }
  CLEAVE_RETURN_IF_ERROR(link->SetBandwidth(bandwidth_bps));
  return link;
}

KernelLink::~KernelLink() {
  StopFollowing();
  if (!ns_.empty()) {
    Result<std::string> r = RunCommand({ip_, "netns", "del", ns_});
    if (!r.ok()) {
      GetLogger("bench")->warn("kernel link: {} (remove it with `ip netns del {}`)",
                               r.status().ToString(), ns_);
    }
    (void)RunCommand({ip_, "link", "del", veth_outer_});  // gone with the namespace, usually
  }
}

std::vector<std::string> KernelLink::Wrap(const std::vector<std::string>& argv) const {
  std::vector<std::string> out = {ip_, "netns", "exec", ns_};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

Status KernelLink::SetBandwidth(double bandwidth_bps) {
  if (!(bandwidth_bps > 0)) return Status::InvalidArgument("the bandwidth must be > 0");
  return RunCommand(TbfArgs(tc_, veth_outer_, bandwidth_bps)).status();
}

void KernelLink::Follow(LinkTrace trace, const ::cleave::Clock& clock, int64_t start_us) {
  StopFollowing();
  stop_ = false;
  follower_ = std::thread([this, trace = std::move(trace), &clock, start_us] {
    size_t applied = static_cast<size_t>(-1);
    while (!stop_.load()) {
      const double t = static_cast<double>(clock.NowMicros() - start_us) * 1e-6;
      const size_t index = trace.IndexAt(t);
      if (index != applied) {
        Status s = SetBandwidth(trace.steps()[index].bandwidth_bps);
        if (!s.ok()) {
          GetLogger("bench")->warn("kernel link: {}", s.ToString());
          MutexLock lock(&mu_);
          follow_status_ = s;
        }
        applied = index;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
}

Status KernelLink::follow_status() const {
  MutexLock lock(&mu_);
  return follow_status_;
}

Result<std::string> KernelLink::Describe() const {
  return RunCommand({tc_, "qdisc", "show", "dev", veth_outer_});
}

void KernelLink::StopFollowing() {
  stop_ = true;
  if (follower_.joinable()) follower_.join();
}

}  // namespace cleave::tools
