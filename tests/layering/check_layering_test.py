#!/usr/bin/env python3
"""Tests scripts/check-layering's rules on small fixture trees built in a temporary folder:
each rule's refusal (with file:line and the rule's text) and the includes it allows.

  tests/layering/check_layering_test.py      (run by ctest as `layering_rules`)
"""
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "check-layering")


def includes(*targets):
    return "".join('#include "%s"\n' % t for t in targets)


class LayeringTest(unittest.TestCase):
    def check(self, files):
        """Runs the checker on a tree holding `files` (path -> text) plus an empty common/."""
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "common"))
            for rel, text in files.items():
                path = os.path.join(root, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            run = subprocess.run([sys.executable, SCRIPT, "--root", root], capture_output=True,
                                 text=True)
        return run.returncode, run.stdout + run.stderr

    def assertAllowed(self, files):
        code, out = self.check(files)
        self.assertEqual(code, 0, out)
        self.assertIn("no forbidden include", out)

    def assertRefused(self, files, *expected):
        code, out = self.check(files)
        self.assertEqual(code, 1, out)
        for text in expected:
            self.assertIn(text, out)
        return out

    # ---- what the layers may include

    def test_every_layer_may_include_what_is_below_it(self):
        self.assertAllowed({
            "common/status.h": "#pragma once\n",
            "common/config.cc": includes("common/status.h") + "#include <vector>\n",
            "split/model.h": includes("common/status.h", "split/other.h"),
            "federated/strategy.h": includes("common/status.h", "split/model.h",
                                             "federated/weights.h"),
            "edge/fl_client.h": includes("common/status.h", "split/model.h",
                                         "federated/strategy.h", "edge/engine.h"),
            "cloud/tail.h": includes("common/status.h", "split/model.h", "cloud/batcher.h"),
            "tools/cleave_main.cc": includes("common/cli/app.h", "edge/fl_client.h",
                                             "cloud/tail.h", "federated/strategy.h"),
            # Headers outside the repository's layers are not layering's business.
            "edge/http.cc": includes("httplib.h", "torch/torch.h"),
        })

    def test_common_includes_only_common(self):
        out = self.assertRefused({"common/codec.h": "#pragma once\n" + includes("split/model.h")},
                                 'common/codec.h:2: #include "split/model.h"',
                                 "common is the bottom layer")
        self.assertIn("common may not include split/", out)

    def test_split_knows_no_daemon_and_no_rounds(self):
        for layer in ("federated", "edge", "cloud", "tools"):
            self.assertRefused({"split/model.cc": includes(layer + "/x.h")},
                               'split/model.cc:1: #include "%s/x.h"' % layer,
                               "split may not include %s/" % layer,
                               "split knows no daemon and no rounds")

    def test_federated_never_includes_edge_cloud_or_tools(self):
        for layer in ("edge", "cloud", "tools"):
            self.assertRefused({"federated/round.cc": includes(layer + "/x.h")},
                               "federated/round.cc:1",
                               "federated may not include %s/" % layer,
                               "federated never depends on edge/, cloud/ or tools/")

    def test_edge_and_cloud_never_include_each_other(self):
        self.assertRefused({"edge/router.cc": includes("common/a.h", "cloud/lm_service.h")},
                           'edge/router.cc:2: #include "cloud/lm_service.h"',
                           "edge may not include cloud/", "meet only on the wire")
        self.assertRefused({"cloud/tail.cc": includes("edge/engine.h")},
                           "cloud/tail.cc:1", "cloud may not include edge/")

    def test_cloud_is_not_a_federated_client(self):
        self.assertRefused({"cloud/tail.cc": includes("federated/weights.h")},
                           "cloud may not include federated/")

    def test_no_library_includes_tools(self):
        for layer in ("common", "edge", "cloud"):
            self.assertRefused({layer + "/a.cc": includes("tools/bench.h")},
                               "%s may not include tools/" % layer)

    def test_angle_bracket_includes_are_checked_too(self):
        self.assertRefused({"cloud/tail.cc": "#include <edge/engine.h>\n"},
                           'cloud/tail.cc:1: #include "edge/engine.h"',
                           "cloud may not include edge/")

    def test_include_paths_start_at_the_root(self):
        self.assertRefused({"common/a.cc": includes("../edge/engine.h")},
                           "common/a.cc:1", "no '..'")
        self.assertRefused({"edge/a.cc": includes("testing/tiny_bundle.h")},
                           "tests/testing/ helpers are for tests only")

    # ---- executables and common/cli/

    def test_only_executables_tools_and_tests_include_common_cli(self):
        self.assertAllowed({
            "edge/edge_main.cc": includes("common/cli/daemon.h", "edge/server.h"),
            "edge/cli/classify_command.cc": includes("common/cli/daemon.h", "edge/engine.h"),
            "common/cli/daemon.cc": includes("common/cli/daemon.h", "common/config.h"),
            "tools/train_command.cc": includes("common/cli/config_flags.h"),
            "tests/unit/common/cli_test.cc": includes("common/cli/daemon.h"),
        })
        self.assertRefused({"edge/server.cc": includes("common/cli/daemon.h")},
                           "edge/server.cc:1", "libraries parse no argv")
        self.assertRefused({"common/config.cc": includes("common/cli/config_flags.h")},
                           "common/config.cc:1", "libraries parse no argv")

    def test_a_main_follows_its_folders_rules(self):
        self.assertRefused({"cloud/cloud_main.cc": includes("common/cli/daemon.h",
                                                            "edge/engine.h")},
                           "cloud/cloud_main.cc:2", "cloud may not include edge/")
        self.assertRefused({"common/cli/daemon.cc": includes("split/model.h")},
                           "common/cli/daemon.cc:1", "common may not include split/")

    # ---- tests

    def test_unit_tests_follow_their_layers_rules(self):
        self.assertAllowed({"tests/unit/edge/fl_test.cc": includes(
            "edge/fl_client.h", "federated/weights.h", "unit/edge/harness.h",
            "testing/tiny_bundle.h"),
            "tests/unit/edge/harness.h": includes("edge/fl_client.h"),
            "tests/testing/tiny_bundle.h": includes("split/model.h")})
        self.assertRefused({"tests/unit/split/model_test.cc": includes("split/model.h",
                                                                       "edge/engine.h")},
                           "tests/unit/split/model_test.cc:2",
                           "split tests may not include edge/",
                           "tests/unit/split/ follows split's rules")
        self.assertRefused({"tests/unit/cloud/tail_test.cc": includes("edge/engine.h")},
                           "cloud tests may not include edge/")

    def test_shared_helpers_may_not_smuggle_a_layer_into_a_unit_test(self):
        out = self.assertRefused({
            "tests/unit/common/codec_test.cc": includes("common/a.h", "testing/tiny_bundle.h"),
            "tests/testing/tiny_bundle.h": includes("common/status.h", "split/vision_bundle.h"),
        }, 'tests/unit/common/codec_test.cc:2: #include "split/vision_bundle.h"',
            "(through tests/testing/tiny_bundle.h)", "common tests may not include split/")
        self.assertNotIn("common/status.h", out)

    def test_shared_helpers_do_not_mix_edge_and_cloud(self):
        self.assertAllowed({"tests/testing/fixture.h": includes("edge/launcher.h",
                                                                "federated/weights.h")})
        self.assertRefused({"tests/testing/fixture.h": includes("edge/launcher.h",
                                                                "cloud/tail.h")},
                           "tests/testing/fixture.h:2",
                           "may not also include cloud/")

    def test_integration_and_fuzz_tests_may_include_anything(self):
        self.assertAllowed({
            "tests/integration/system_test.cc": includes("edge/engine.h", "cloud/tail.h",
                                                         "tools/bench.h", "testing/fixture.h"),
            "tests/fuzz/codec_fuzz.cc": includes("common/tensor_codec.h", "split/model.h"),
            "tests/testing/fixture.h": includes("edge/launcher.h"),
        })

    # ---- commands and tests are held to their library's rules

    def test_a_command_in_a_library_folder_is_checked_as_that_library(self):
        # Commands live in tools/: one left in a library folder gets the library's rules.
        self.assertRefused({"split/new_command.cc": includes("edge/engine.h")},
                           "split/new_command.cc:1", "split may not include edge/")

    def test_an_edge_test_may_not_reach_into_the_cloud(self):
        # lm_router_test once ran the real cloud LM service in process; it now uses a test
        # double (tests/testing/fake_lm_cloud.h), and no edge test may include cloud/.
        self.assertRefused({"tests/unit/edge/lm_router_test.cc": includes("cloud/lm_service.h")},
                           "edge tests may not include cloud/")
        self.assertRefused({"tests/unit/cloud/server_test.cc": includes("edge/lm_router.h")},
                           "cloud tests may not include edge/")

    def test_every_violation_is_reported_not_just_the_first(self):
        out = self.assertRefused({"common/a.cc": includes("split/x.h", "edge/y.h"),
                                  "split/b.cc": includes("cloud/z.h")},
                                 "3 forbidden include(s)")
        for where in ("common/a.cc:1", "common/a.cc:2", "split/b.cc:1"):
            self.assertIn(where, out)

    def test_a_tree_without_common_is_refused(self):
        with tempfile.TemporaryDirectory() as root:
            run = subprocess.run([sys.executable, SCRIPT, "--root", root], capture_output=True,
                                 text=True)
        self.assertEqual(run.returncode, 2)
        self.assertIn("not a cleave tree", run.stderr)


if __name__ == "__main__":
    unittest.main()
