// Comm over c10d's ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA): store set-up, the
// Gloo-1.13 gap fillers, timeouts.
#include "dnpo/dist/comm.h"

#include <array>
#include <chrono>
#include <cstring>
#include <limits>
#include <thread>

#include <ATen/ATen.h>
#include <mpi.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if DNPO_HAS_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if DNPO_HAS_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#if DNPO_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif
#include <unistd.h>

#include "dnpo/common/error.h"
#include "dnpo/common/log.h"
#include "dnpo/common/mpi_check.h"
#include "network.h"

namespace dnpo::dist {
namespace {

// LibTorch 2.x split process groups into a ProcessGroup front and Backends; Gloo and NCCL are
// Backends there and ProcessGroups in 1.13. Both offer the collectives used here.
#if DNPO_TORCH2
using Group = c10d::Backend;
#else
using Group = c10d::ProcessGroup;
#endif

std::string this_hostname() {
  std::array<char, 256> name{};
  DNPO_CHECK_WITH(DistError, gethostname(name.data(), name.size() - 1) == 0, "gethostname failed");
  return name.data();
}

// Gloo 1.13 moves neither bf16 nor int16: send such tensors as bytes (gather/broadcast only).
at::Tensor as_transportable(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 ? t.view({-1}).view(at::kByte) : t;
}

// c10 errors carry a whole stack trace after the first line; keep the message.
std::string first_line(const char* what) {
  const std::string text = what;
  return text.substr(0, text.find('\n'));
}

// Polls MPI requests until all are done or the timeout passes (MPI_Wait has none, and a stuck
// peer must end in an error, not a hang). Returns false on timeout.
bool poll_requests(MPI_Request* requests, int count, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int done = 0;
  for (int polls = 0; done == 0; ++polls) {
    // The MPI-Checker cannot see where these requests were started.
    // NOLINTBEGIN(clang-analyzer-optin.mpi.MPI-Checker)
    DNPO_MPI_CHECK(MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE));
    // NOLINTEND(clang-analyzer-optin.mpi.MPI-Checker)
    if (done == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        return false;
      }
      if (polls > 1000) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }
  return true;
}

// One step of a ring: sends `bytes` from `send` to rank next while receiving as many into `recv`
// from rank prev; waits at most `timeout`.
void ring_exchange(const void* send,
                   void* recv,
                   std::int64_t bytes,
                   int next,
                   int prev,
                   std::chrono::milliseconds timeout,
                   const char* what) {
  DNPO_CHECK(bytes <= std::numeric_limits<int>::max(), "{}: block too large for MPI", what);
  constexpr int kTag = 7101;
  std::array<MPI_Request, 2> requests{MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  const auto count = static_cast<int>(bytes);
  DNPO_MPI_CHECK(MPI_Irecv(recv, count, MPI_BYTE, prev, kTag, MPI_COMM_WORLD, &requests[0]));
  DNPO_MPI_CHECK(MPI_Isend(send, count, MPI_BYTE, next, kTag, MPI_COMM_WORLD, &requests[1]));
  DNPO_CHECK_WITH(DistError,
                  poll_requests(requests.data(), 2, timeout),
                  "{} failed (timeout {} ms): no reply from the other ranks; hint: another rank "
                  "may have failed or be stuck (dist.timeout_s)",
                  what,
                  timeout.count());
}

// Ring reduce-scatter over MPI point-to-point: world − 1 exchanges; in exchange s rank r sends
// its partial sum of block (r − s − 1) to rank r + 1 and adds the block (r − s − 2) received from
// rank r − 1, so after the last one it holds the full sum of block r. Sends (w−1)/w of the buffer
// per rank, like an optimal reduce-scatter, and needs one block of temporary memory. Clobbers flat.
void ring_reduce_scatter(const at::Tensor& shard,
                         const at::Tensor& flat,
                         int rank,
                         int world,
                         std::chrono::milliseconds timeout) {
  const auto n = shard.numel();
  const auto blocks = flat.view({world, n});
  const auto received = at::empty({n}, flat.options());
  const int next = (rank + 1) % world;
  const int prev = (rank + world - 1) % world;
  for (int s = 0; s + 1 < world; ++s) {
    const int send_block = ((rank - s - 1) % world + world) % world;
    const int recv_block = ((rank - s - 2) % world + 2 * world) % world;
    ring_exchange(blocks[send_block].data_ptr(),
                  received.data_ptr(),
                  static_cast<std::int64_t>(received.nbytes()),
                  next,
                  prev,
                  timeout,
                  "reduce_scatter_flat (ring)");
    blocks[recv_block].add_(received);
  }
  shard.view({-1}).copy_(blocks[rank]);
}

// Ring all-gather over MPI point-to-point, in place: in exchange s rank r passes block (r − s)
// to rank r + 1 and receives block (r − s − 1) from rank r − 1 straight into flat. No temporary;
// moves (w−1)/w of the buffer per rank. Blocks until done (each exchange with the timeout).
void ring_all_gather(const at::Tensor& flat,
                     const at::Tensor& shard,
                     int rank,
                     int world,
                     std::chrono::milliseconds timeout) {
  const auto bytes = static_cast<std::int64_t>(shard.nbytes());
  const auto blocks = flat.view({-1}).view(at::kByte).view({world, bytes});
  blocks[rank].copy_(shard.view({-1}).view(at::kByte));
  const int next = (rank + 1) % world;
  const int prev = (rank + world - 1) % world;
  for (int s = 0; s + 1 < world; ++s) {
    const int send_block = ((rank - s) % world + world) % world;
    const int recv_block = ((rank - s - 1) % world + 2 * world) % world;
    ring_exchange(blocks[send_block].data_ptr(),
                  blocks[recv_block].data_ptr(),
                  bytes,
                  next,
                  prev,
                  timeout,
                  "all_gather_flat (ring)");
  }
}

// collective: the c10d TCPStore the process group meets at. Rank 0 serves it on host:port
// (port 0 = any free port) and the port it got goes to the other ranks over MPI; they connect,
// trying for `timeout`. The errors name this host, the address and the interface it would use
// (a node off rank 0's network fails here, not in a hang). Returns the store and its port.
std::pair<c10::intrusive_ptr<c10d::Store>, std::string> make_store(
    const MpiEnv& mpi, const std::string& host, int port, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions opts;
  opts.isServer = mpi.rank() == 0;
  opts.numWorkers = static_cast<std::size_t>(mpi.world_size());
  opts.waitWorkers = false;
  opts.timeout = timeout;
  opts.port = static_cast<std::uint16_t>(port);
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  std::string served;
  if (mpi.rank() == 0) {
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(host, opts);
    } catch (const std::exception& e) {
      DNPO_FAIL(DistError,
                "cannot serve the c10d store on {}:{} on {} ({}): {}; hint: {}",
                host,
                port,
                this_hostname(),
                describe_route(host),
                first_line(e.what()),
                is_local_address(host)
                    ? std::string("set dist.port to a free port or 0")
                    : "dist.host = \"" + host +
                          "\" is not an address of rank 0's node; its interfaces: " +
                          describe_interfaces());
    }
    served = std::to_string(tcp->getPort());
  }
  served = mpi.broadcast_string(served, 0);
  if (mpi.rank() != 0) {
    opts.port = static_cast<std::uint16_t>(std::stoi(served));
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(host, opts);
    } catch (const std::exception& e) {
      DNPO_FAIL(DistError,
                "cannot reach the c10d store of rank 0 at {}:{} from {} ({}): {}; hint: set "
                "dist.host to an address of rank 0's node that every node reaches (\"\" = rank "
                "0's hostname); this node's interfaces: {}",
                host,
                served,
                this_hostname(),
                describe_route(host),
                first_line(e.what()),
                describe_interfaces());
    }
  }
  return {tcp, served};
}

}  // namespace

struct Work::State {
  std::string what;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;  // c10d operations in flight
  MPI_Request request = MPI_REQUEST_NULL;             // or an MPI one
  std::chrono::milliseconds timeout{0};
  // Gloo: block the host until done, at most `timeout`. NCCL: make the current CUDA stream wait
  // on the collective's stream (a timeout there would block the host; NCCL's watchdog has it).
  bool stream_wait = false;
  std::function<void()> then;  // runs once the collective is done (e.g. copy out a slice)
  bool finished = false;
};

void Work::wait() {
  if (!state_ || state_->finished) {
    return;
  }
  try {
    for (auto& work : state_->works) {
      if (state_->stream_wait) {
        work->wait();
      } else {
        work->wait(state_->timeout);
      }
    }
    if (state_->request != MPI_REQUEST_NULL) {
      DNPO_CHECK_WITH(DistError,
                      poll_requests(&state_->request, 1, state_->timeout),
                      "no reply from the other ranks");
    }
  } catch (const std::exception& e) {
    DNPO_FAIL(DistError,
              "{} failed (timeout {} ms): {}; hint: another rank may have failed or be stuck "
              "(dist.timeout_s)",
              state_->what,
              state_->timeout.count(),
              first_line(e.what()));
  }
  if (state_->then) {
    state_->then();
  }
  // Finished: let go of the c10d works and the callback, which hold the operation's buffers.
  state_->works.clear();
  state_->then = nullptr;
  state_->finished = true;
}

struct Comm::Impl {
  int rank = 0;
  int world = 1;
  int local_world = 1;
  std::string reduce_scatter;
  std::string all_gather;
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Group> group;  // null for one_process()
  bool nccl = false;
  at::Device device{at::kCPU};
  CommBytes bytes;

  Work make(std::string what,
            c10::intrusive_ptr<c10d::Work> work,
            std::function<void()> then = nullptr) const {
    return make(std::move(what),
                std::vector<c10::intrusive_ptr<c10d::Work>>{std::move(work)},
                std::move(then));
  }
  // An in-place collective on t, started by run. Under NCCL a host tensor (statistics, flags,
  // lengths) is staged through the GPU and copied back when waited on: a host sync each, for
  // small per-step values only. Gloo moves bf16 as raw 16-bit words.
  template <typename Run>
  Work in_place(const char* what, const at::Tensor& t, Run&& run) const {
    if (nccl && t.device() != device) {
      std::vector<at::Tensor> staged{t.to(device)};
      auto work = run(staged);
      return make(what, std::move(work), [t, out = staged[0]]() { t.copy_(out); });
    }
    std::vector<at::Tensor> tensors{nccl ? t : as_transportable(t)};
    return make(what, run(tensors));
  }
  Work make(std::string what,
            std::vector<c10::intrusive_ptr<c10d::Work>> works,
            std::function<void()> then = nullptr) const {
    Work w;
    w.state_ = std::make_shared<Work::State>();
    w.state_->what = std::move(what);
    w.state_->works = std::move(works);
    w.state_->timeout = timeout;
    w.state_->stream_wait = nccl;
    w.state_->then = std::move(then);
    return w;
  }
};

namespace {

// Who a rank is in the process group it forms.
struct Member {
  int rank = 0;
  int world = 1;
  at::Device device{at::kCPU};
  std::chrono::milliseconds timeout{0};
};

#if DNPO_HAS_GLOO
// Where Gloo listens, and so the address it offers the other ranks, for errors: the interface
// dist.interface names, or else the address of this host's name.
std::string describe_gloo_binding(const std::string& interface, const std::string& bind_host) {
  if (interface.empty()) {
    return "the address of " + bind_host + " (" + describe_route(bind_host) +
           "; dist.interface = \"\")";
  }
  auto addresses = interface_addresses(interface);
  if (addresses.empty()) {
    addresses = "no address here";
  }
  return "interface " + interface + " (" + addresses + "; dist.interface = \"" + interface + "\")";
}
#endif

// collective: the process group over the store: NCCL on this rank's GPU, connected now so that
// errors surface here, or Gloo bound to `interface` (dist.interface) or else to `bind_host`.
c10::intrusive_ptr<Group> make_process_group(const c10::intrusive_ptr<c10d::Store>& store,
                                             const Member& s,
                                             bool nccl,
                                             const std::string& interface,
                                             const std::string& bind_host) {
  if (nccl) {
#if DNPO_HAS_NCCL
    auto nccl_opts = c10d::ProcessGroupNCCL::Options::create();
    nccl_opts->timeout = s.timeout;
    try {
      auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, s.rank, s.world, nccl_opts);
      group->setBoundDeviceId(s.device);
      group->eagerConnectSingleDevice(s.device);
      return group;
    } catch (const std::exception& e) {
      DNPO_FAIL(DistError,
                "cannot form the NCCL process group of {} ranks on {}: {}",
                s.world,
                s.device.str(),
                first_line(e.what()));
    }
#endif
    return {};
  }
#if DNPO_HAS_GLOO
  const auto bound = describe_gloo_binding(interface, bind_host);
  auto gloo_opts = c10d::ProcessGroupGloo::Options::create(s.timeout);
  try {
    gloo_opts->devices.push_back(interface.empty()
                                     ? c10d::ProcessGroupGloo::createDeviceForHostname(bind_host)
                                     : c10d::ProcessGroupGloo::createDeviceForInterface(interface));
  } catch (const std::exception& e) {
    DNPO_FAIL(DistError,
              "cannot bind Gloo on {} to {}: {}; hint: set dist.interface to the interface of the "
              "network the nodes share (the same name on each); this node's interfaces: {}",
              this_hostname(),
              bound,
              first_line(e.what()),
              describe_interfaces());
  }
  try {
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, s.rank, s.world, gloo_opts);
  } catch (const std::exception& e) {
    DNPO_FAIL(DistError,
              "cannot form the Gloo process group of {} ranks on {}, Gloo bound to {}: {}; hint: "
              "each rank offers the others the address it binds and waits for theirs in the "
              "store, so a rank that never reached the store or an address the others cannot "
              "reach (set dist.interface to the network the nodes share) ends here; this "
              "node's interfaces: {}",
              s.world,
              this_hostname(),
              bound,
              first_line(e.what()),
              describe_interfaces());
  }
#endif
  return {};
}

}  // namespace

Comm::Comm(const MpiEnv& mpi, const config::DistConfig& cfg, const std::string& device)
    : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.rank = mpi.rank();
  s.world = mpi.world_size();
  s.local_world = mpi.local_world_size();
  s.timeout = std::chrono::milliseconds(static_cast<long long>(cfg.timeout_s * 1000.0));
  s.reduce_scatter = cfg.reduce_scatter;
  s.all_gather = cfg.all_gather;
  // --- which backend: Gloo moves host tensors, NCCL device tensors ---
  const std::string backend = device == "cuda" ? "nccl" : "gloo";
  DNPO_CHECK_WITH(ConfigError,
                  cfg.backend == "auto" || cfg.backend == backend,
                  "dist.backend = \"{}\" cannot serve run.device = \"{}\"; set dist.backend = "
                  "\"{}\" or \"auto\"",
                  cfg.backend,
                  device,
                  backend);
#if !DNPO_HAS_GLOO
  DNPO_CHECK_WITH(ConfigError,
                  backend != "gloo",
                  "this build has no Gloo (its LibTorch ships no gloo headers), so several ranks "
                  "cannot run on the CPU; set run.device = \"cuda\"");
#endif
#if !DNPO_HAS_NCCL
  DNPO_CHECK_WITH(ConfigError,
                  backend != "nccl",
                  "run.device = \"cuda\" needs NCCL, which this build lacks (a CPU-only LibTorch); "
                  "build against a CUDA LibTorch (launch/device-check)");
#endif
  s.nccl = backend == "nccl";
  s.device = rank_device(device, mpi.local_rank());
  // --- where rank 0's store is, and which address this rank's Gloo binds ---
  const bool one_node = mpi.local_world_size() == mpi.world_size();
  std::string store_host = cfg.host;
  if (store_host.empty()) {
    store_host = mpi.broadcast_string(one_node ? "127.0.0.1" : this_hostname(), 0);
  }
  const auto bind_host = one_node ? std::string("127.0.0.1") : this_hostname();
  auto [store, port] = make_store(mpi, store_host, cfg.port, s.timeout);
  s.store = store;
  s.group = make_process_group(
      store, {s.rank, s.world, s.device, s.timeout}, s.nccl, cfg.interface, bind_host);
  if (s.nccl) {
    s.reduce_scatter = "nccl";
    s.all_gather = "nccl";
  }
  log::info_rank0("dist: {} ranks, {}, store {}:{}, timeout {} s",
                  s.world,
                  backend,
                  store_host,
                  port,
                  cfg.timeout_s);
}

Comm::Comm(at::Device device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  impl_->reduce_scatter = "local";
  impl_->all_gather = "local";
}

std::unique_ptr<Comm> Comm::one_process(at::Device device) {
  return std::unique_ptr<Comm>(new Comm(device));
}

Comm::~Comm() {
#if DNPO_HAS_NCCL
  // NCCL wants an explicit shutdown: destroying a live ProcessGroupNCCL warns from its
  // destructor, which can run at exit after the logging it uses is gone.
  if (impl_ && impl_->nccl && impl_->group) {
    try {
      impl_->group->shutdown();
    } catch (const std::exception& e) {
      log::warn("dist: NCCL shutdown failed: {}", first_line(e.what()));
    }
  }
#endif
}

int Comm::rank() const {
  return impl_->rank;
}
int Comm::world_size() const {
  return impl_->world;
}
int Comm::local_world_size() const {
  return impl_->local_world;
}
std::string Comm::backend() const {
  if (!impl_->group) {
    return "local";
  }
  return impl_->nccl ? "nccl" : "gloo";
}
at::Device Comm::device() const {
  return impl_->device;
}

Work Comm::all_gather_flat(const at::Tensor& flat, const at::Tensor& shard) {
  const auto n = shard.numel();
  DNPO_CHECK(
      flat.numel() == n * impl_->world && flat.is_contiguous() && shard.is_contiguous(),
      "all_gather_flat: flat has {} elements; expected world ({}) × shard ({}), both contiguous",
      flat.numel(),
      impl_->world,
      n);
  DNPO_CHECK(flat.scalar_type() == shard.scalar_type(), "all_gather_flat: dtypes differ");
  impl_->bytes.all_gather += static_cast<std::int64_t>(flat.nbytes());
  ++impl_->bytes.all_gather_ops;
  if (!impl_->group) {  // one process: the shard is the whole buffer
    if (!flat.is_same(shard)) {
      flat.view({-1}).copy_(shard.view({-1}));
    }
    return impl_->make("all_gather_flat (local)", std::vector<c10::intrusive_ptr<c10d::Work>>{});
  }
  if (impl_->nccl) {  // straight into the flat buffer
    auto out = flat.view({-1});
    auto in = shard.view({-1});
    return impl_->make("all_gather_flat", impl_->group->_allgather_base(out, in));
  }
  if (impl_->all_gather == "ring") {
    ring_all_gather(flat, shard, impl_->rank, impl_->world, impl_->timeout);
    return impl_->make("all_gather_flat (ring)",
                       std::vector<c10::intrusive_ptr<c10d::Work>>{});  // done already
  }
  // List-form allgather into narrow() views of one flat buffer (no _allgather_base in Gloo).
  const auto flat_t = as_transportable(flat).view({-1});
  const auto shard_t = as_transportable(shard).view({-1});
  const auto words = shard_t.numel();  // elements as transported (bytes for bf16)
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < impl_->world; ++r) {
    outputs[0].push_back(flat_t.narrow(0, r * words, words));
  }
  std::vector<at::Tensor> inputs{shard_t};
  return impl_->make("all_gather_flat", impl_->group->allgather(outputs, inputs));
}

Work Comm::reduce_scatter_flat(const at::Tensor& shard, const at::Tensor& flat) {
  const auto n = shard.numel();
  DNPO_CHECK(flat.numel() == n * impl_->world && flat.is_contiguous(),
             "reduce_scatter_flat: flat has {} elements; expected world ({}) × shard ({})",
             flat.numel(),
             impl_->world,
             n);
  const auto rank = impl_->rank;
  impl_->bytes.reduce_scatter += static_cast<std::int64_t>(flat.nbytes());
  ++impl_->bytes.reduce_scatter_ops;
  if (!impl_->group) {
    if (!flat.is_same(shard)) {
      shard.view({-1}).copy_(flat.view({-1}));
    }
    return impl_->make("reduce_scatter_flat (local)",
                       std::vector<c10::intrusive_ptr<c10d::Work>>{});
  }
  if (impl_->nccl) {  // native, in any dtype, straight into the shard
    DNPO_CHECK(shard.is_contiguous() && shard.scalar_type() == flat.scalar_type(),
               "reduce_scatter_flat (nccl): shard must be contiguous and of flat's dtype");
    auto out = shard.view({-1});
    auto in = flat.view({-1});
    return impl_->make("reduce_scatter_flat", impl_->group->_reduce_scatter_base(out, in));
  }
  DNPO_CHECK(flat.scalar_type() != at::kBFloat16,
             "reduce_scatter_flat: Gloo cannot reduce bf16; reduce in fp32 (reduce dtype)");
  if (impl_->reduce_scatter == "ring") {
    DNPO_CHECK(flat.scalar_type() == at::kFloat || flat.scalar_type() == at::kDouble,
               "reduce_scatter_flat (ring): needs fp32/fp64 host tensors");
    ring_reduce_scatter(shard, flat, rank, impl_->world, impl_->timeout);
    return impl_->make("reduce_scatter_flat (ring)",
                       std::vector<c10::intrusive_ptr<c10d::Work>>{});  // done already
  }
  if (impl_->reduce_scatter == "mpi") {
    // MPI_Ireduce_scatter_block straight from the flat buffer into the shard (host memory).
    DNPO_CHECK(shard.is_contiguous() &&
                   (flat.scalar_type() == at::kFloat || flat.scalar_type() == at::kDouble),
               "reduce_scatter_flat (mpi): needs contiguous fp32/fp64 host tensors");
    const auto type = flat.scalar_type() == at::kFloat ? MPI_FLOAT : MPI_DOUBLE;
    Work w =
        impl_->make("reduce_scatter_flat (MPI)", std::vector<c10::intrusive_ptr<c10d::Work>>{});
    const int rc = MPI_Ireduce_scatter_block(flat.data_ptr(),
                                             shard.data_ptr(),
                                             static_cast<int>(n),
                                             type,
                                             MPI_SUM,
                                             MPI_COMM_WORLD,
                                             &w.state_->request);
    DNPO_CHECK_WITH(DistError, rc == MPI_SUCCESS, "MPI_Ireduce_scatter_block returned {}", rc);
    return w;
  }
  const auto own = flat.view({-1}).narrow(0, static_cast<std::int64_t>(rank) * n, n);
  if (impl_->reduce_scatter == "reduce") {
    // One reduce per owner: slice r is summed onto rank r only.
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int r = 0; r < impl_->world; ++r) {
      std::vector<at::Tensor> slice{flat.view({-1}).narrow(0, static_cast<std::int64_t>(r) * n, n)};
      c10d::ReduceOptions opts;
      opts.rootRank = r;
      works.push_back(impl_->group->reduce(slice, opts));
    }
    return impl_->make("reduce_scatter_flat (reduce)", std::move(works), [own, out = shard]() {
      out.view({-1}).copy_(own);
    });
  }
  // All-reduce the whole buffer, keep this rank's slice.
  std::vector<at::Tensor> tensors{flat};
  auto work = impl_->group->allreduce(tensors, c10d::AllreduceOptions{});
  return impl_->make(
      "reduce_scatter_flat", work, [own, out = shard]() { out.view({-1}).copy_(own); });
}

Work Comm::all_reduce_sum(const at::Tensor& t) {
  DNPO_CHECK(impl_->nccl || t.scalar_type() != at::kBFloat16,
             "all_reduce_sum: Gloo cannot reduce bf16");
  impl_->bytes.all_reduce += static_cast<std::int64_t>(t.nbytes());
  if (!impl_->group) {  // the sum over one rank
    return impl_->make("all_reduce_sum (local)", std::vector<c10::intrusive_ptr<c10d::Work>>{});
  }
  return impl_->in_place("all_reduce_sum", t, [&](std::vector<at::Tensor>& tensors) {
    return impl_->group->allreduce(tensors, c10d::AllreduceOptions{});
  });
}

Work Comm::broadcast(const at::Tensor& t, int root) {
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  impl_->bytes.broadcast += static_cast<std::int64_t>(t.nbytes());
  if (!impl_->group) {
    return impl_->make("broadcast (local)", std::vector<c10::intrusive_ptr<c10d::Work>>{});
  }
  return impl_->in_place("broadcast", t, [&](std::vector<at::Tensor>& tensors) {
    return impl_->group->broadcast(tensors, opts);
  });
}

const CommBytes& Comm::bytes() const {
  return impl_->bytes;
}

const std::string& Comm::reduce_scatter_method() const {
  return impl_->reduce_scatter;
}

Work Comm::barrier() {
  if (!impl_->group) {
    return impl_->make("barrier (local)", std::vector<c10::intrusive_ptr<c10d::Work>>{});
  }
  return impl_->make("barrier", impl_->group->barrier(c10d::BarrierOptions{}));
}

at::Device rank_device(const std::string& run_device, int local_rank) {
  if (run_device == "cpu") {
    return at::Device(at::kCPU);
  }
  DNPO_CHECK_WITH(ConfigError,
                  run_device == "cuda",
                  "run.device = \"{}\"; expected \"cpu\" or \"cuda\"",
                  run_device);
#if DNPO_WITH_CUDA
  const int gpus = static_cast<int>(c10::cuda::device_count());
  DNPO_CHECK_WITH(ConfigError,
                  gpus > 0,
                  "run.device = \"cuda\" but no CUDA device is visible to this process (check "
                  "CUDA_VISIBLE_DEVICES and the driver)");
  const auto index = static_cast<c10::DeviceIndex>(local_rank % gpus);
  c10::cuda::set_device(index);
  return at::Device(at::kCUDA, index);
#else
  (void)local_rank;
  DNPO_FAIL(ConfigError,
            "run.device = \"cuda\" but this build's LibTorch has no CUDA; build against a CUDA "
            "LibTorch (launch/device-check) or set run.device = \"cpu\"");
#endif
}

std::vector<std::string> all_gather_text(Comm& comm, const std::string& text) {
  if (comm.world_size() == 1) {
    return {text};
  }
  const int world = comm.world_size();
  auto lengths = at::zeros({world}, at::kLong);
  lengths[comm.rank()] = static_cast<std::int64_t>(text.size());
  comm.all_reduce_sum(lengths).wait();
  std::vector<std::string> out(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    const auto n = lengths[r].item<std::int64_t>();
    auto bytes = at::empty({n}, at::kByte);
    if (r == comm.rank()) {
      std::memcpy(bytes.data_ptr(), text.data(), text.size());
    }
    if (n > 0) {
      comm.broadcast(bytes, r).wait();
    }
    out[static_cast<std::size_t>(r)].assign(static_cast<const char*>(bytes.data_ptr()),
                                            static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace dnpo::dist
