// The frozen reference's clean log-probs of a stage's pairs, computed in the step that first runs
// a pair and reused by every later epoch: the reference does not change within a stage. Every
// rank holds all of them, because a later epoch deals the pairs to other ranks: a step's values
// are summed over the ranks once (each pair is run by one rank with weight 1, the others add 0,
// so the sum is that rank's value bit for bit). Checkpoints carry them (CarriedState), so a
// resumed stage reuses what was computed before it stopped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dnpo/dist/comm.h"
#include "dnpo/train/checkpointing.h"

namespace dnpo::train {

class ReferenceLogps : public CarriedState {
 public:
  /// `columns` values per pair: SPIN keeps log π_ref(y+) and log π_ref(y−), NPO only
  /// log π_ref(y+) (it reads the negative's reference only with noise). `fingerprint` names the
  /// pairs' tokens: a checkpoint's values are taken only for the same pairs.
  ReferenceLogps(std::int64_t pairs, std::int64_t columns, std::uint64_t fingerprint);

  /// Whether every pair in `samples` (indices into the stage's pairs) has its values.
  bool has_all(const std::vector<std::int64_t>& samples) const;
  /// The values of `samples`, (columns, n) fp32 on `device`.
  at::Tensor lookup(const std::vector<std::int64_t>& samples, at::Device device) const;

  /// Starts a step of `step_pairs` pairs: a zeroed (columns, step_pairs) buffer on `device`.
  void begin_step(std::int64_t step_pairs, at::Device device);
  /// The values of the step's pairs [offset, offset + n): `values` is (columns, n).
  void record(std::int64_t offset, const at::Tensor& values);
  /// collective: sums the step's buffer over the ranks and keeps it for `samples`, the step's
  /// pairs in order.
  void end_step(const std::vector<std::int64_t>& samples, dist::Comm& comm);

  std::int64_t known() const;
  std::string name() const override {
    return "reference_logps";
  }
  std::string encode() const override;
  void decode(const std::string& bytes, const std::string& path) override;

 private:
  std::int64_t pairs_;
  std::int64_t columns_;
  std::uint64_t fingerprint_;
  at::Tensor values_;                // (columns, pairs) fp32, host
  std::vector<std::uint8_t> known_;  // per pair
  at::Tensor step_;                  // (columns, step pairs) on the compute device
};

}  // namespace dnpo::train
