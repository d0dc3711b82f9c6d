#include "common/fl_secagg_messages.h"

#include <string>
#include <vector>

#include "common/fl_wire_internal.h"
#include "common/shamir.h"

namespace cleave::wire::fl::internal {
namespace {

// The secret a revealed share belongs to is a 32-byte key or seed.
constexpr size_t kRevealedShareElements = shamir::ElementsFor(crypto::kKeyBytes);

Status CheckIndex(uint32_t index, const std::string& field) {
  return CheckUint(index, field, 0, secagg::kMaxClients - 1);
}

Status CheckSealedShares(const std::vector<secagg::EncryptedShare>& shares,
                         const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(shares.size(), kMaxSecAggEntries, field, "shares"));
  const size_t sealed = secagg::SealedShareBytes();
  for (size_t i = 0; i < shares.size(); ++i) {
    const std::string item = Indexed(field, i);
    CLEAVE_RETURN_IF_ERROR(CheckIndex(shares[i].sender, item + ".sender"));
    CLEAVE_RETURN_IF_ERROR(CheckIndex(shares[i].recipient, item + ".recipient"));
    if (shares[i].ciphertext.size() != sealed) {
      return Status::InvalidArgument(
          item + ".ciphertext has " + std::to_string(shares[i].ciphertext.size()) +
          " bytes; a sealed share has exactly " + std::to_string(sealed));
    }
  }
  return Status::Ok();
}

Status CheckRevealedShares(const std::vector<secagg::RevealedShare>& shares,
                           const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(shares.size(), kMaxSecAggEntries, field, "shares"));
  for (size_t i = 0; i < shares.size(); ++i) {
    const std::string item = Indexed(field, i);
    CLEAVE_RETURN_IF_ERROR(CheckIndex(shares[i].owner, item + ".owner"));
    CLEAVE_RETURN_IF_ERROR(CheckUint(shares[i].share.x, item + ".x", 1, secagg::kMaxClients));
    const std::vector<uint64_t>& y = shares[i].share.y;
    if (y.size() != kRevealedShareElements) {
      return Status::InvalidArgument(item + ".y has " + std::to_string(y.size()) +
                                     " field elements; a share of a 32-byte secret has " +
                                     std::to_string(kRevealedShareElements));
    }
    for (size_t k = 0; k < y.size(); ++k) {
      if (y[k] >= shamir::kPrime) {
        return Status::InvalidArgument(Indexed(item + ".y", k) +
                                       " is not a field element (>= 2^61 - 1)");
      }
    }
  }
  return Status::Ok();
}

Status CheckSecAggClient(uint32_t round, const std::string& client_id, uint32_t sender,
                         const char* what) {
  const std::string name = what;
  CLEAVE_RETURN_IF_ERROR(CheckUint(round, name + ".round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(ValidateClientId(client_id).WithContext(name + ".client_id"));
  return CheckIndex(sender, name + ".sender");
}

Result<std::vector<secagg::EncryptedShare>> ReadSealedShares(
    capnp::List<schema::SecAggEncryptedShare>::Reader in, const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(in.size(), kMaxSecAggEntries, field, "shares"));
  const size_t sealed = secagg::SealedShareBytes();
  std::vector<secagg::EncryptedShare> out;
  out.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    secagg::EncryptedShare share;
    share.sender = in[i].getSender();
    share.recipient = in[i].getRecipient();
    const auto ciphertext = in[i].getCiphertext();
    if (ciphertext.size() != sealed) {
      return Status::InvalidArgument(
          Indexed(field, i) + ".ciphertext has " + std::to_string(ciphertext.size()) +
          " bytes; a sealed share has exactly " + std::to_string(sealed));
    }
    share.ciphertext.assign(ciphertext.begin(), ciphertext.end());
    out.push_back(std::move(share));
  }
  return out;
}

Result<std::vector<secagg::RevealedShare>> ReadRevealedShares(
    capnp::List<schema::SecAggRevealedShare>::Reader in, const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(in.size(), kMaxSecAggEntries, field, "shares"));
  std::vector<secagg::RevealedShare> out;
  out.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    secagg::RevealedShare share;
    share.owner = in[i].getOwner();
    share.share.x = in[i].getX();
    const auto y = in[i].getY();
    CLEAVE_RETURN_IF_ERROR(
        CheckListLength(y.size(), kRevealedShareElements, Indexed(field, i) + ".y", "elements"));
    CopyList(y, &share.share.y);
    out.push_back(std::move(share));
  }
  return out;
}

constexpr size_t kKeyWords = 1 + kSecAggKeyBytes / 8;
size_t SealedWords(const std::vector<secagg::EncryptedShare>& shares) {
  size_t words = 1;
  for (const auto& s : shares) words += 3 + WordsFor(s.ciphertext.size());
  return words;
}
size_t RevealedWords(const std::vector<secagg::RevealedShare>& shares) {
  size_t words = 1;
  for (const auto& s : shares) words += 4 + s.share.y.size();
  return words;
}

capnp::Data::Reader KeyData(const crypto::Key256& key) {
  return capnp::Data::Reader(key.data(), key.size());
}

void WriteSealedShares(const std::vector<secagg::EncryptedShare>& shares,
                       capnp::List<schema::SecAggEncryptedShare>::Builder out) {
  for (unsigned i = 0; i < out.size(); ++i) {
    out[i].setSender(shares[i].sender);
    out[i].setRecipient(shares[i].recipient);
    out[i].setCiphertext(
        capnp::Data::Reader(shares[i].ciphertext.data(), shares[i].ciphertext.size()));
  }
}

void WriteRevealedShares(const std::vector<secagg::RevealedShare>& shares,
                         capnp::List<schema::SecAggRevealedShare>::Builder out) {
  for (unsigned i = 0; i < out.size(); ++i) {
    out[i].setOwner(shares[i].owner);
    out[i].setX(shares[i].share.x);
    auto y = out[i].initY(static_cast<unsigned>(shares[i].share.y.size()));
    for (unsigned k = 0; k < y.size(); ++k) y.set(k, shares[i].share.y[k]);
  }
}

}  // namespace

Status Check(const SecAggKeys& m) {
  return CheckSecAggClient(m.round, m.client_id, m.keys.sender, "SecAggKeys");
}

Status Check(const SecAggKeyDirectory& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "SecAggKeyDirectory.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(CheckIndex(m.directory.recipient, "SecAggKeyDirectory.recipient"));
  const auto& keys = m.directory.keys;
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(keys.size(), kMaxSecAggEntries, "SecAggKeyDirectory.keys", "entries"));
  for (size_t i = 0; i < keys.size(); ++i) {
    CLEAVE_RETURN_IF_ERROR(
        CheckIndex(keys[i].client, Indexed("SecAggKeyDirectory.keys", i) + ".client"));
  }
  return Status::Ok();
}

Status Check(const SecAggShareKeys& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckSecAggClient(m.round, m.client_id, m.shares.sender, "SecAggShareKeys"));
  return CheckSealedShares(m.shares.shares, "SecAggShareKeys.shares");
}

Status Check(const SecAggForwardedShares& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "SecAggForwardedShares.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(CheckIndex(m.forwarded.recipient, "SecAggForwardedShares.recipient"));
  return CheckSealedShares(m.forwarded.shares, "SecAggForwardedShares.shares");
}

Status Check(const SecAggMaskedInput& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckSecAggClient(m.round, m.client_id, m.input.sender, "SecAggMaskedInput"));
  if (m.input.masked.empty()) return Status::InvalidArgument("SecAggMaskedInput.masked is empty");
  return CheckListLength(m.input.masked.size(), kMaxSecAggVectorWords, "SecAggMaskedInput.masked",
                         "words");
}

Status Check(const SecAggUnmaskRequest& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "SecAggUnmaskRequest.round", 1, UINT32_MAX));
  const auto& survivors = m.request.survivors;
  CLEAVE_RETURN_IF_ERROR(CheckListLength(survivors.size(), kMaxSecAggEntries,
                                         "SecAggUnmaskRequest.survivors", "entries"));
  for (size_t i = 0; i < survivors.size(); ++i) {
    const std::string item = Indexed("SecAggUnmaskRequest.survivors", i);
    CLEAVE_RETURN_IF_ERROR(CheckIndex(survivors[i], item));
    if (i > 0 && survivors[i] <= survivors[i - 1]) {
      return Status::InvalidArgument(item + " = " + std::to_string(survivors[i]) +
                                     " does not increase strictly");
    }
  }
  return Status::Ok();
}

Status Check(const SecAggUnmaskShares& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckSecAggClient(m.round, m.client_id, m.shares.sender, "SecAggUnmaskShares"));
  CLEAVE_RETURN_IF_ERROR(
      CheckRevealedShares(m.shares.self_mask_shares, "SecAggUnmaskShares.self_mask_shares"));
  return CheckRevealedShares(m.shares.mask_key_shares, "SecAggUnmaskShares.mask_key_shares");
}

Result<SecAggKeys> ReadBody(schema::SecAggKeys::Reader in) {
  SecAggKeys out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.keys.round_id = in.getRoundId();
  out.keys.sender = in.getSender();
  CLEAVE_ASSIGN_OR_RETURN(out.keys.cipher_public_key,
                          ReadKey(in.getCipherPublicKey(), "SecAggKeys.cipher_public_key"));
  CLEAVE_ASSIGN_OR_RETURN(out.keys.mask_public_key,
                          ReadKey(in.getMaskPublicKey(), "SecAggKeys.mask_public_key"));
  return out;
}

Result<SecAggKeyDirectory> ReadBody(schema::SecAggKeyDirectory::Reader in) {
  SecAggKeyDirectory out;
  out.round = in.getRound();
  out.directory.round_id = in.getRoundId();
  out.directory.recipient = in.getRecipient();
  const auto keys = in.getKeys();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(keys.size(), kMaxSecAggEntries, "SecAggKeyDirectory.keys", "entries"));
  out.directory.keys.reserve(keys.size());
  for (unsigned i = 0; i < keys.size(); ++i) {
    const std::string field = Indexed("SecAggKeyDirectory.keys", i);
    secagg::PublicKeys entry;
    entry.client = keys[i].getClient();
    CLEAVE_ASSIGN_OR_RETURN(entry.cipher_public_key,
                            ReadKey(keys[i].getCipherPublicKey(), field + ".cipher_public_key"));
    CLEAVE_ASSIGN_OR_RETURN(entry.mask_public_key,
                            ReadKey(keys[i].getMaskPublicKey(), field + ".mask_public_key"));
    out.directory.keys.push_back(entry);
  }
  return out;
}

Result<SecAggShareKeys> ReadBody(schema::SecAggShareKeys::Reader in) {
  SecAggShareKeys out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.shares.round_id = in.getRoundId();
  out.shares.sender = in.getSender();
  CLEAVE_ASSIGN_OR_RETURN(out.shares.shares,
                          ReadSealedShares(in.getShares(), "SecAggShareKeys.shares"));
  return out;
}

Result<SecAggForwardedShares> ReadBody(schema::SecAggForwardedShares::Reader in) {
  SecAggForwardedShares out;
  out.round = in.getRound();
  out.forwarded.round_id = in.getRoundId();
  out.forwarded.recipient = in.getRecipient();
  CLEAVE_ASSIGN_OR_RETURN(out.forwarded.shares,
                          ReadSealedShares(in.getShares(), "SecAggForwardedShares.shares"));
  return out;
}

Result<SecAggMaskedInput> ReadBody(schema::SecAggMaskedInput::Reader in) {
  SecAggMaskedInput out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.input.round_id = in.getRoundId();
  out.input.sender = in.getSender();
  const auto masked = in.getMasked();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(masked.size(), kMaxSecAggVectorWords, "SecAggMaskedInput.masked", "words"));
  CopyList(masked, &out.input.masked);
  return out;
}

Result<SecAggUnmaskRequest> ReadBody(schema::SecAggUnmaskRequest::Reader in) {
  SecAggUnmaskRequest out;
  out.round = in.getRound();
  out.request.round_id = in.getRoundId();
  const auto survivors = in.getSurvivors();
  CLEAVE_RETURN_IF_ERROR(CheckListLength(survivors.size(), kMaxSecAggEntries,
                                         "SecAggUnmaskRequest.survivors", "entries"));
  CopyList(survivors, &out.request.survivors);
  return out;
}

Result<SecAggUnmaskShares> ReadBody(schema::SecAggUnmaskShares::Reader in) {
  SecAggUnmaskShares out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.shares.round_id = in.getRoundId();
  out.shares.sender = in.getSender();
  CLEAVE_ASSIGN_OR_RETURN(
      out.shares.self_mask_shares,
      ReadRevealedShares(in.getSelfMaskShares(), "SecAggUnmaskShares.self_mask_shares"));
  CLEAVE_ASSIGN_OR_RETURN(
      out.shares.mask_key_shares,
      ReadRevealedShares(in.getMaskKeyShares(), "SecAggUnmaskShares.mask_key_shares"));
  return out;
}

size_t BodyWords(const SecAggKeys& m) { return 8 + TextWords(m.client_id) + 2 * kKeyWords; }
size_t BodyWords(const SecAggKeyDirectory& m) {
  return 8 + m.directory.keys.size() * (2 + 2 * kKeyWords);
}
size_t BodyWords(const SecAggShareKeys& m) {
  return 8 + TextWords(m.client_id) + SealedWords(m.shares.shares);
}
size_t BodyWords(const SecAggForwardedShares& m) { return 8 + SealedWords(m.forwarded.shares); }
size_t BodyWords(const SecAggMaskedInput& m) {
  return 8 + TextWords(m.client_id) + WordsFor(m.input.masked.size() * 4);
}
size_t BodyWords(const SecAggUnmaskRequest& m) {
  return 8 + WordsFor(m.request.survivors.size() * 4);
}
size_t BodyWords(const SecAggUnmaskShares& m) {
  return 8 + TextWords(m.client_id) + RevealedWords(m.shares.self_mask_shares) +
         RevealedWords(m.shares.mask_key_shares);
}

void WriteBody(const SecAggKeys& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggKeys();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.keys.round_id);
  out.setSender(m.keys.sender);
  out.setCipherPublicKey(KeyData(m.keys.cipher_public_key));
  out.setMaskPublicKey(KeyData(m.keys.mask_public_key));
}

void WriteBody(const SecAggKeyDirectory& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggKeyDirectory();
  out.setRound(m.round);
  out.setRoundId(m.directory.round_id);
  out.setRecipient(m.directory.recipient);
  auto keys = out.initKeys(static_cast<unsigned>(m.directory.keys.size()));
  for (unsigned i = 0; i < keys.size(); ++i) {
    keys[i].setClient(m.directory.keys[i].client);
    keys[i].setCipherPublicKey(KeyData(m.directory.keys[i].cipher_public_key));
    keys[i].setMaskPublicKey(KeyData(m.directory.keys[i].mask_public_key));
  }
}

void WriteBody(const SecAggShareKeys& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggShareKeys();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.shares.round_id);
  out.setSender(m.shares.sender);
  WriteSealedShares(m.shares.shares, out.initShares(static_cast<unsigned>(m.shares.shares.size())));
}

void WriteBody(const SecAggForwardedShares& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggForwardedShares();
  out.setRound(m.round);
  out.setRoundId(m.forwarded.round_id);
  out.setRecipient(m.forwarded.recipient);
  WriteSealedShares(m.forwarded.shares,
                    out.initShares(static_cast<unsigned>(m.forwarded.shares.size())));
}

void WriteBody(const SecAggMaskedInput& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggMaskedInput();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.input.round_id);
  out.setSender(m.input.sender);
  auto masked = out.initMasked(static_cast<unsigned>(m.input.masked.size()));
  for (unsigned i = 0; i < masked.size(); ++i) masked.set(i, m.input.masked[i]);
}

void WriteBody(const SecAggUnmaskRequest& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggUnmaskRequest();
  out.setRound(m.round);
  out.setRoundId(m.request.round_id);
  auto survivors = out.initSurvivors(static_cast<unsigned>(m.request.survivors.size()));
  for (unsigned i = 0; i < survivors.size(); ++i) survivors.set(i, m.request.survivors[i]);
}

void WriteBody(const SecAggUnmaskShares& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggUnmaskShares();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.shares.round_id);
  out.setSender(m.shares.sender);
  WriteRevealedShares(
      m.shares.self_mask_shares,
      out.initSelfMaskShares(static_cast<unsigned>(m.shares.self_mask_shares.size())));
  WriteRevealedShares(
      m.shares.mask_key_shares,
      out.initMaskKeyShares(static_cast<unsigned>(m.shares.mask_key_shares.size())));
}

}  // namespace cleave::wire::fl::internal
