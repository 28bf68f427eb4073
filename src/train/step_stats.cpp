// StepStats: the step's sums read in one transfer and summed over ranks in one all-reduce.
#include "dnpo/train/step_stats.h"

#include <vector>

#include <ATen/ATen.h>

namespace dnpo::train {

void StatSum::add(const at::Tensor& value, double weight) {
  auto v = value.detach().sum().to(at::kDouble) * weight;
  device_ = device_.defined() ? device_ + v : v;
}

std::array<StatSum*, 12> StepStats::all() {
  return {&loss,
          &model_loss,
          &noise_loss,
          &penalty,
          &margin,
          &correct,
          &logp_chosen,
          &logp_rejected,
          &sum_s,
          &num_s,
          &tokens,
          &slots};
}

void StepStats::add_tokens(const at::Tensor& attention_mask, double weight) {
  tokens.add(weight *
             attention_mask.gt(0).sum().item<double>());  // a packed row numbers its sequences
  slots.add(weight * static_cast<double>(attention_mask.numel()));
}

void StepStats::reduce(dist::Comm& comm) {
  const auto sums = all();
  std::vector<at::Tensor> parts;
  std::vector<StatSum*> where;
  for (auto* sum : sums) {
    if (sum->device_.defined()) {
      parts.push_back(sum->device_.reshape({1}));
      where.push_back(sum);
    }
  }
  if (!parts.empty()) {
    const auto values = at::cat(parts).cpu();
    const auto* p = values.data_ptr<double>();
    for (std::size_t k = 0; k < where.size(); ++k) {
      where[k]->host_ += p[k];
      where[k]->device_ = at::Tensor();
    }
  }
  if (comm.world_size() == 1) {
    return;
  }
  std::vector<double> host;
  host.reserve(sums.size());
  for (const auto* sum : sums) {
    host.push_back(sum->host_);
  }
  auto t = at::tensor(host, at::kDouble);
  comm.all_reduce_sum(t).wait();
  const auto* p = t.data_ptr<double>();
  for (std::size_t k = 0; k < sums.size(); ++k) {
    sums[k]->host_ = p[k];
  }
}

}  // namespace dnpo::train
