// Comm over Gloo with real MPI processes: every collective against values each rank can compute.
#include "dnpo/dist/comm.h"

#include <chrono>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include "mpi_test_main.h"

namespace dnpo::dist {
namespace {

Comm& comm() {
  static Comm instance(test::mpi(), config::DistConfig{});
  return instance;
}

TEST(Comm, KnowsRankAndWorld) {
  EXPECT_EQ(comm().rank(), test::mpi().rank());
  EXPECT_EQ(comm().world_size(), test::mpi().world_size());
}

TEST(Comm, AllGatherFlatPlacesEachRanksShard) {
  const int world = comm().world_size();
  const std::int64_t n = 5;
  auto shard = at::arange(n, at::kFloat) + 100.0 * comm().rank();
  auto flat = at::zeros({world * n}, at::kFloat);
  comm().all_gather_flat(flat, shard).wait();
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(at::equal(flat.narrow(0, r * n, n), at::arange(n, at::kFloat) + 100.0 * r))
        << "slice " << r;
  }
}

TEST(Comm, AllGatherFlatMovesBf16Bits) {
  const int world = comm().world_size();
  auto shard = (at::arange(4, at::kFloat) * 0.5 + comm().rank()).to(at::kBFloat16);
  auto flat = at::zeros({std::int64_t{4} * world}, at::kBFloat16);
  comm().all_gather_flat(flat, shard).wait();
  for (int r = 0; r < world; ++r) {
    EXPECT_TRUE(at::equal(flat.narrow(0, std::int64_t{4} * r, 4),
                          (at::arange(4, at::kFloat) * 0.5 + r).to(at::kBFloat16)));
  }
}

TEST(Comm, RingAllGatherMatchesGlooInPlaceForFp32AndBf16) {
  config::DistConfig cfg;
  cfg.all_gather = "ring";
  Comm ring(test::mpi(), cfg);
  const int world = ring.world_size();
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    const std::int64_t n = 7;
    auto shard = (at::arange(n, at::kFloat) * 0.25 + 10.0 * ring.rank()).to(dtype);
    auto by_ring = at::full({world * n}, -1.0, dtype);
    auto by_gloo = at::zeros({world * n}, dtype);
    ring.all_gather_flat(by_ring, shard).wait();
    comm().all_gather_flat(by_gloo, shard).wait();
    EXPECT_TRUE(at::equal(by_ring, by_gloo)) << dtype;
    // the own slice may already sit in the flat buffer (no copy onto itself goes wrong)
    auto in_place = by_ring.clone();
    ring.all_gather_flat(in_place, in_place.narrow(0, ring.rank() * n, n)).wait();
    EXPECT_TRUE(at::equal(in_place, by_gloo)) << dtype;
  }
}

TEST(Comm, ReduceScatterFlatSumsOwnSlice) {
  const int world = comm().world_size();
  const int rank = comm().rank();
  const std::int64_t n = 3;
  // rank q contributes (q + 1) · (index + 1) at every index
  auto flat = (at::arange(world * n, at::kFloat) + 1) * (rank + 1);
  auto shard = at::zeros({n}, at::kFloat);
  comm().reduce_scatter_flat(shard, flat).wait();
  const double rank_sum = world * (world + 1) / 2.0;
  auto expected = (at::arange(rank * n, (rank + 1) * n, at::kFloat) + 1) * rank_sum;
  EXPECT_TRUE(at::allclose(shard, expected)) << shard << " vs " << expected;
}

TEST(Comm, EveryReduceScatterMethodAgrees) {
  const int world = test::mpi().world_size();
  const int rank = test::mpi().rank();
  const std::int64_t n = 1000;
  for (const char* method : {"allreduce", "reduce", "mpi", "ring"}) {
    config::DistConfig cfg;
    cfg.reduce_scatter = method;
    Comm c(test::mpi(), cfg);
    auto flat = (at::arange(world * n, at::kFloat) + 1) * (rank + 1);
    auto shard = at::zeros({n}, at::kFloat);
    c.reduce_scatter_flat(shard, flat).wait();
    const float rank_sum = static_cast<float>(world * (world + 1)) / 2.0F;
    auto expected = (at::arange(rank * n, (rank + 1) * n, at::kFloat) + 1) * rank_sum;
    EXPECT_TRUE(at::allclose(shard, expected)) << method;
  }
}

TEST(Comm, AllReduceSumAndBroadcast) {
  const int world = comm().world_size();
  auto t = at::full({4}, static_cast<float>(comm().rank() + 1));
  auto w = comm().all_reduce_sum(t);
  w.wait();
  EXPECT_TRUE(at::allclose(t, at::full({4}, world * (world + 1) / 2.0F)));
  auto b = at::full({3}, static_cast<float>(comm().rank()));
  comm().broadcast(b, world - 1).wait();
  EXPECT_TRUE(at::equal(b, at::full({3}, static_cast<float>(world - 1))));
  comm().barrier().wait();
}

TEST(Comm, AllGatherTextGivesEveryRanksTextInOrder) {
  const int world = comm().world_size();
  // Rank 1 sends nothing; others send bytes that include a NUL and non-ASCII.
  const auto text_of = [](int r) {
    return r == 1 ? std::string() : "rank " + std::to_string(r) + std::string(1, '\0') + "\xc3\xa9";
  };
  const auto all = all_gather_text(comm(), text_of(comm().rank()));
  ASSERT_EQ(all.size(), static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(all[static_cast<std::size_t>(r)], text_of(r)) << "rank " << r;
  }
  EXPECT_EQ(all_gather_text(*Comm::one_process(), "x"), std::vector<std::string>{"x"});
}

// A world of one: no process group, and each collective leaves what one rank would see.
TEST(Comm, OneProcessIsAWorldOfOne) {
  const auto one = Comm::one_process();
  EXPECT_EQ(one->rank(), 0);
  EXPECT_EQ(one->world_size(), 1);
  EXPECT_EQ(one->local_world_size(), 1);
  EXPECT_EQ(one->backend(), "local");
  EXPECT_EQ(one->device(), at::Device(at::kCPU));
  const auto shard = at::arange(5, at::kFloat);
  auto flat = at::zeros({5});
  one->all_gather_flat(flat, shard).wait();
  EXPECT_TRUE(at::equal(flat, shard));
  auto summed = at::full({5}, 3.0F);
  auto own = at::zeros({5});
  one->reduce_scatter_flat(own, summed).wait();
  EXPECT_TRUE(at::equal(own, summed));
  auto t = at::full({2}, 7.0F);
  one->all_reduce_sum(t).wait();
  one->broadcast(t, 0).wait();
  one->barrier().wait();
  EXPECT_TRUE(at::equal(t, at::full({2}, 7.0F)));
  EXPECT_EQ(one->bytes().all_gather, 20);
  EXPECT_EQ(one->bytes().reduce_scatter_ops, 1);
}

// Collectives are asynchronous: rank 0 issues two all-reduces, neither of which can complete
// before the other ranks issue theirs, and only then tells them, over MPI outside the process
// group, to issue theirs. Were an all-reduce to block until done (collectives serialized), rank 0
// would not get to the message: the others give up waiting for it after kDeadline, fail, and
// issue theirs anyway so that the job still ends.
TEST(Comm, CollectivesOverlap) {
  const int world = comm().world_size();
  auto a = at::ones({1000});
  auto b = at::ones({10});
  constexpr int kTag = 4242;
  constexpr auto kDeadline = std::chrono::seconds(20);  // the message takes microseconds
  if (world == 1) {
    auto wa = comm().all_reduce_sum(a);
    auto wb = comm().all_reduce_sum(b);
    wb.wait();
    wa.wait();
  } else if (comm().rank() == 0) {
    auto wa = comm().all_reduce_sum(a);
    auto wb = comm().all_reduce_sum(b);  // wa is outstanding: no other rank has issued it
    char issued = 1;
    for (int r = 1; r < world; ++r) {
      ASSERT_EQ(MPI_Send(&issued, 1, MPI_CHAR, r, kTag, MPI_COMM_WORLD), MPI_SUCCESS);
    }
    wb.wait();
    wa.wait();
  } else {
    char issued = 0;
    MPI_Request request = MPI_REQUEST_NULL;
    ASSERT_EQ(MPI_Irecv(&issued, 1, MPI_CHAR, 0, kTag, MPI_COMM_WORLD, &request), MPI_SUCCESS);
    const auto deadline = std::chrono::steady_clock::now() + kDeadline;
    int arrived = 0;
    while (arrived == 0 && std::chrono::steady_clock::now() < deadline) {
      ASSERT_EQ(MPI_Test(&request, &arrived, MPI_STATUS_IGNORE), MPI_SUCCESS);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    EXPECT_NE(arrived, 0) << "rank 0 did not get past issuing two all-reduces in 20 s: a "
                             "collective blocked until the other ranks joined it";
    auto wa = comm().all_reduce_sum(a);
    auto wb = comm().all_reduce_sum(b);
    wb.wait();
    wa.wait();
    if (arrived == 0) {
      ASSERT_EQ(MPI_Wait(&request, MPI_STATUS_IGNORE), MPI_SUCCESS);  // sent once rank 0 was done
    }
    EXPECT_EQ(issued, 1);
  }
  EXPECT_TRUE(at::equal(a, at::full({1000}, static_cast<float>(world))));
  EXPECT_TRUE(at::equal(b, at::full({10}, static_cast<float>(world))));
}

TEST(MpiEnv, FlagsStringsAndSums) {
  const auto& mpi = test::mpi();
  EXPECT_EQ(mpi.broadcast_string(mpi.rank() == 0 ? "from zero" : "other", 0), "from zero");
  EXPECT_EQ(mpi.sum(mpi.rank()),
            static_cast<long long>(mpi.world_size()) * (mpi.world_size() - 1) / 2);
  EXPECT_TRUE(mpi.any(mpi.rank() == mpi.world_size() - 1));
  EXPECT_FALSE(mpi.any(false));
  EXPECT_GE(mpi.local_world_size(), 1);
}

}  // namespace
}  // namespace dnpo::dist
