#include "tools/bundle_command.h"

#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "common/curve.h"
#include "common/signing.h"
#include "split/bundle.h"
#include "tools/command_error.h"

namespace cleave::tools {
namespace {

using nlohmann::json;

template <typename T>
T OrFail(const std::string& command, Result<T> r) {
  if (!r.ok()) Fail(command, r.status());
  return std::move(*r);
}

struct KeysArgs {
  std::string out, type = "ed25519";
  bool force = false;
};

struct BundleArgs {
  std::string bundle, key, public_key;
};

void GenerateKeys(const KeysArgs& args) {
  const std::string command = "keys generate";
  if (args.type == "curve") {
    const CurveKeyPair pair = OrFail(command, GenerateCurveKeyPair());
    if (Status s = WriteCurveKeyFiles(pair, args.out, args.force); !s.ok()) Fail(command, s);
    std::cout << json{{"type", args.type},
                      {"secret_key", args.out + ".key"},
                      {"public_key", args.out + ".pub"},
                      {"public", pair.public_z85}}
                     .dump(2)
              << std::endl;
    return;
  }
  if (args.type != "ed25519") {
    Fail(command, Status::InvalidArgument(
                      "--type must be ed25519 (bundle signing) or curve (transport, CURVE)"));
  }
  const signing::Ed25519KeyPair pair = OrFail(command, signing::GenerateEd25519());
  if (Status s = signing::WriteEd25519KeyPair(pair, args.out, args.force); !s.ok()) {
    Fail(command, s);
  }
  std::cout << json{{"type", args.type},
                    {"secret_key", args.out + ".key"},
                    {"public_key", args.out + ".pub"},
                    {"fingerprint", OrFail(command, signing::Ed25519Fingerprint(pair.public_pem))}}
                   .dump(2)
            << std::endl;
}

void Sign(const BundleArgs& args) {
  const std::string command = "bundle sign";
  const std::string secret = OrFail(command, signing::ReadKeyFile(args.key, /*secret=*/true));
  if (Status s = SignBundle(args.bundle, secret); !s.ok()) Fail(command, s);
  std::cout << json{{"bundle", args.bundle},
                    {"signed_by", OrFail(command, signing::Ed25519Fingerprint(secret))}}
                   .dump(2)
            << std::endl;
}

void Verify(const BundleArgs& args) {
  const std::string command = "bundle verify";
  const std::string pub = OrFail(command, signing::ReadKeyFile(args.public_key, false));
  const Bundle bundle = OrFail(command, Bundle::Open(args.bundle, /*require_signature=*/false));
  if (Status s = VerifyBundleSignature(bundle, pub); !s.ok()) Fail(command, s);
  std::cout << json{{"bundle", args.bundle},
                    {"kind", bundle.kind()},
                    {"files", bundle.files().size()},
                    {"manifest_sha256", bundle.manifest_sha256()},
                    {"verified_with", OrFail(command, signing::Ed25519Fingerprint(pub))}}
                   .dump(2)
            << std::endl;
}

}  // namespace

void RegisterBundleCommands(CLI::App& app) {
  CLI::App* keys =
      app.add_subcommand("keys", "key pairs: bundle signing (Ed25519) and transport (CURVE)");
  keys->require_subcommand(1);
  auto keys_args = std::make_shared<KeysArgs>();
  CLI::App* generate = keys->add_subcommand(
      "generate", "write a key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub");
  generate->add_option("--out", keys_args->out, "path prefix of the two files")->required();
  generate
      ->add_option("--type", keys_args->type,
                   "ed25519 (bundle signing) or curve (ZeroMQ CURVE transport keys, Z85)")
      ->capture_default_str();
  generate->add_flag("--force", keys_args->force, "replace existing files");
  generate->callback([keys_args] { GenerateKeys(*keys_args); });

  CLI::App* bundle = app.add_subcommand("bundle", "sign and verify model bundles (Ed25519)");
  bundle->require_subcommand(1);
  auto sign_args = std::make_shared<BundleArgs>();
  CLI::App* sign = bundle->add_subcommand(
      "sign", "verify a bundle's files and sign its manifest (writes manifest.sig)");
  sign->add_option("--bundle", sign_args->bundle, "bundle directory")->required();
  sign->add_option("--key", sign_args->key, "Ed25519 secret key file (cleave keys generate)")
      ->required();
  sign->callback([sign_args] { Sign(*sign_args); });
  auto verify_args = std::make_shared<BundleArgs>();
  CLI::App* verify = bundle->add_subcommand(
      "verify", "check a bundle's files and its signature by a public key (exit 1 if not)");
  verify->add_option("--bundle", verify_args->bundle, "bundle directory")->required();
  verify->add_option("--public-key", verify_args->public_key, "Ed25519 public key file")
      ->required();
  verify->callback([verify_args] { Verify(*verify_args); });
}

}  // namespace cleave::tools
