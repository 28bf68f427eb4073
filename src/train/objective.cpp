// StageModels: the trained groups' units in order.
#include "dnpo/train/objective.h"

namespace dnpo::train {

std::vector<dist::ShardedUnit*> StageModels::trained_units() const {
  std::vector<dist::ShardedUnit*> out;
  for (const auto& group : trained) {
    out.insert(out.end(), group.units.begin(), group.units.end());
  }
  return out;
}

}  // namespace dnpo::train
