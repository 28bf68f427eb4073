// ReferenceLogps: a step's reference log-probs summed over the ranks once, kept for every pair.
#include "dnpo/train/reference_logps.h"

#include <cstring>

#include <ATen/ATen.h>

#include "dnpo/common/error.h"

namespace dnpo::train {

namespace {

constexpr char kMagic[] = "dnpo.reference_logps.v2\n";
constexpr std::size_t kHeader =
    sizeof(kMagic) - 1 + 2 * sizeof(std::int64_t) + sizeof(std::uint64_t);

}  // namespace

ReferenceLogps::ReferenceLogps(std::int64_t pairs, std::int64_t columns, std::uint64_t fingerprint)
    : pairs_(pairs),
      columns_(columns),
      fingerprint_(fingerprint),
      values_(at::zeros({columns, pairs}, at::kFloat)),
      known_(static_cast<std::size_t>(pairs), 0) {}

bool ReferenceLogps::has_all(const std::vector<std::int64_t>& samples) const {
  for (const auto i : samples) {
    if (known_[static_cast<std::size_t>(i)] == 0) {
      return false;
    }
  }
  return true;
}

at::Tensor ReferenceLogps::lookup(const std::vector<std::int64_t>& samples,
                                  at::Device device) const {
  const auto index = at::tensor(samples, at::kLong);
  return values_.index_select(1, index).to(device);
}

void ReferenceLogps::begin_step(std::int64_t step_pairs, at::Device device) {
  step_ = at::zeros({columns_, step_pairs}, at::TensorOptions().dtype(at::kFloat).device(device));
}

void ReferenceLogps::record(std::int64_t offset, const at::Tensor& values) {
  step_.narrow(1, offset, values.size(1)).copy_(values.detach());
}

void ReferenceLogps::end_step(const std::vector<std::int64_t>& samples, dist::Comm& comm) {
  DNPO_INTERNAL_ASSERT(step_.defined() &&
                       step_.size(1) == static_cast<std::int64_t>(samples.size()));
  if (comm.world_size() > 1) {
    comm.all_reduce_sum(step_).wait();
  }
  values_.index_copy_(1, at::tensor(samples, at::kLong), step_.cpu());
  for (const auto i : samples) {
    known_[static_cast<std::size_t>(i)] = 1;
  }
  step_ = at::Tensor();
}

std::int64_t ReferenceLogps::known() const {
  std::int64_t n = 0;
  for (const auto k : known_) {
    n += k;
  }
  return n;
}

// magic, pairs and columns (int64), the fingerprint (uint64), a known byte per pair, then the
// values (fp32, row-major).
std::string ReferenceLogps::encode() const {
  std::string out(kMagic);
  const auto put = [&out](const void* p, std::size_t n) {
    out.append(static_cast<const char*>(p), n);
  };
  put(&pairs_, sizeof pairs_);
  put(&columns_, sizeof columns_);
  put(&fingerprint_, sizeof fingerprint_);
  put(known_.data(), known_.size());
  const auto values = values_.contiguous();
  put(values.data_ptr<float>(), static_cast<std::size_t>(values.numel()) * sizeof(float));
  return out;
}

void ReferenceLogps::decode(const std::string& bytes, const std::string& path) {
  const std::size_t magic = sizeof(kMagic) - 1;
  const auto expected = kHeader + static_cast<std::size_t>(pairs_) +
                        static_cast<std::size_t>(columns_ * pairs_) * sizeof(float);
  std::int64_t pairs = -1;
  std::int64_t columns = -1;
  std::uint64_t fingerprint = 0;
  if (bytes.size() >= kHeader && bytes.compare(0, magic, kMagic) == 0) {
    std::memcpy(&pairs, bytes.data() + magic, sizeof pairs);
    std::memcpy(&columns, bytes.data() + magic + sizeof pairs, sizeof columns);
    std::memcpy(&fingerprint, bytes.data() + magic + 2 * sizeof pairs, sizeof fingerprint);
  }
  DNPO_CHECK_WITH(CheckpointError,
                  pairs == pairs_ && columns == columns_ && bytes.size() == expected,
                  "checkpoint {}: its reference log-probs are for {} pairs × {} values ({} bytes); "
                  "this stage has {} pairs × {} ({} bytes)",
                  path,
                  pairs,
                  columns,
                  bytes.size(),
                  pairs_,
                  columns_,
                  expected);
  DNPO_CHECK_WITH(CheckpointError,
                  fingerprint == fingerprint_,
                  "checkpoint {}: its reference log-probs are for other pairs (fingerprint "
                  "{:016x}, this stage's {:016x}); the stage resumes with the data it started with",
                  path,
                  fingerprint,
                  fingerprint_);
  const char* p = bytes.data() + kHeader;
  std::memcpy(known_.data(), p, known_.size());
  std::memcpy(values_.data_ptr<float>(),
              p + known_.size(),
              static_cast<std::size_t>(columns_ * pairs_) * sizeof(float));
}

}  // namespace dnpo::train
