// Generation with the policy gathered a layer at a time (ShardedDecoder, ranks in lockstep) gives
// the same tokens as the whole model, at any world size, when ranks have different amounts of
// work (a rank without a batch decodes a stand-in) and tied or untied heads.
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dnpo/dist/comm.h"
#include "dnpo/model/llama.h"
#include "dnpo/model/sampler.h"
#include "dnpo/train/sharded_llama.h"
#include "mpi_test_main.h"
#include "one_process.h"
#include "tiny_model.h"

namespace dnpo::train {
namespace {

// np 1 runs the one-process Comm.
dist::Comm& comm() {
  if (test::mpi().world_size() == 1) {
    return test::one_process();
  }
  static dist::Comm instance(test::mpi(), config::DistConfig{});
  return instance;
}

TEST(ShardedGeneration, LayerByLayerEqualsTheWholeModel) {
  const int rank = test::mpi().rank();
  config::SampleConfig sample;
  sample.temperature = 1.0;
  sample.max_new_tokens = 6;
  sample.batch_size = 2;
  const std::int64_t eos = 2;
  const std::int64_t pad = 0;
  for (const bool tied : {false, true}) {
    const model::LlamaModel whole(test::tiny_model_config(tied), tied ? 31 : 32);
    ShardedLlama sharded(whole, comm(), dist::UnitPrecision{}, false, true);
    ShardedDecoder layered(sharded);
    // Rank r has 2r + 1 requests of its own, r + 1 batches of 2: the ranks with fewer batches
    // decode stand-ins until the busiest is done, as the self-play loop does.
    std::vector<model::GenerationRequest> mine;
    for (int k = 0; k <= 2 * rank; ++k) {
      mine.push_back({{1, 5 + k, 7, 3 + rank}, static_cast<std::uint64_t>(10 * rank + k)});
    }
    const int batches = rank + 1;
    const int most_batches = test::mpi().world_size();
    const auto expected = model::generate(whole, mine, sample, eos, pad, {7, 1});
    const auto got = model::generate(layered, mine, sample, eos, pad, {7, 1}, true);
    for (int extra = batches; extra < most_batches; ++extra) {
      model::generate(layered, {{{1}, 0}}, sample, eos, pad, {7, 1}, true);
    }
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].tokens, expected[i].tokens) << "rank " << rank << " request " << i;
      EXPECT_EQ(got[i].finished, expected[i].finished);
    }
  }
}

}  // namespace
}  // namespace dnpo::train
