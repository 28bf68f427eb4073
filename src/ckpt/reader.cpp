// load(), load_into(), verify(), inspect(): reading checkpoint files. Each rank reads only the
// slices it asks for (collective MPI-IO) plus the rest of the checksum chunks they touch, and
// checks those chunks' CRCs. A rank-local problem (a bad checksum) is raised on every rank.
#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "dnpo/ckpt/checkpoint.h"
#include "dnpo/common/error.h"
#include "format.h"
#include "group.h"
#include "h5.h"

namespace dnpo::ckpt {
namespace {

/// verify() reads at most this many bytes of a tensor at once per rank.
constexpr std::int64_t kVerifyBatchBytes = std::int64_t{1} << 28;

herr_t collect_link_name(hid_t /*group*/,
                         const char* name,
                         const H5L_info_t* /*info*/,
                         void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

/// The names in an HDF5 group, in creation order when the file tracks it, else by name.
std::vector<std::string> link_names(hid_t group, const std::string& where) {
  std::vector<std::string> names;
  if (H5Literate(group, H5_INDEX_CRT_ORDER, H5_ITER_INC, nullptr, collect_link_name, &names) < 0) {
    h5::error_stack();  // not tracked: clear, and fall back to name order
    names.clear();
    DNPO_H5_CHECK(H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_link_name, &names),
                  where);
  }
  return names;
}

std::string hex(std::uint32_t v) {
  std::ostringstream out;
  out << "0x" << std::hex << std::setw(8) << std::setfill('0') << v;
  return out.str();
}

/// An open checkpoint file: its format is checked on opening.
class Reader {
 public:
  Reader(const std::string& path, const Group& group)
      : group_(group),
        where_("checkpoint " + path),
        file_(h5::open_file(path, group)),
        xfer_(h5::transfer_plist(group)),
        xfer_independent_(h5::transfer_plist(group, false)) {
    const std::int64_t version = h5::read_int_attr(file_.get(), "format_version", where_);
    DNPO_CHECK_WITH(CheckpointError,
                    version == kFormatVersion,
                    "{}: unknown format version {}; this build of dnpo reads version {}; hint: "
                    "read it with the dnpo version that wrote it (see its code_version)",
                    where_,
                    version,
                    kFormatVersion);
    chunk_elems_ = h5::read_int_attr(file_.get(), "chunk_elems", where_);
    DNPO_CHECK_WITH(CheckpointError,
                    chunk_elems_ > 0,
                    "{}: bad chunk_elems {}; expected > 0",
                    where_,
                    chunk_elems_);
    tensors_ = open_group(format::kTensors);
    checksums_ = open_group(format::kChecksums);
  }

  const std::string& where() const {
    return where_;
  }
  hid_t file() const {
    return file_.get();
  }
  /// The transfer list for a dataset of `bytes`: collective only for large ones (h5.h).
  hid_t xfer(std::int64_t bytes) const {
    return bytes < h5::kCollectiveMinBytes ? xfer_independent_.get() : xfer_.get();
  }
  std::int64_t chunk_elems() const {
    return chunk_elems_;
  }
  std::vector<std::string> tensor_names() const {
    return link_names(tensors_.get(), where_);
  }
  h5::Id open_group(const char* name) const {
    DNPO_CHECK_WITH(CheckpointError,
                    h5::exists(file_.get(), name, where_),
                    "{}: no /{} group (not a dnpo checkpoint, or a damaged one)",
                    where_,
                    name);
    return h5::Id(DNPO_H5_CHECK(H5Gopen2(file_.get(), name, H5P_DEFAULT), where_));
  }

  /// A stored tensor: its dataset, shape, dtype and chunk CRCs (read by every rank).
  struct Tensor {
    h5::Id data;
    std::vector<std::int64_t> shape;
    at::ScalarType dtype = at::kFloat;
    std::vector<std::uint32_t> crcs;
  };
  Tensor open_tensor(const std::string& name) const {
    const std::string at = where_ + ", tensor " + name;
    DNPO_CHECK_WITH(CheckpointError,
                    h5::exists(tensors_.get(), name, at),
                    "{}: missing from the file (it holds {} tensors; list them with inspect)",
                    at,
                    tensor_names().size());
    Tensor t;
    t.data = h5::Id(DNPO_H5_CHECK(H5Dopen2(tensors_.get(), name.c_str(), H5P_DEFAULT), at));
    const h5::Id type(DNPO_H5_CHECK(H5Dget_type(t.data.get()), at));
    t.dtype = h5::dtype_of(type.get(), at);
    t.shape = h5::shape_of(t.data.get(), static_cast<std::int64_t>(c10::elementSize(t.dtype)), at);
    DNPO_CHECK_WITH(CheckpointError,
                    h5::exists(checksums_.get(), name, at),
                    "{}: its checksums (/{}/{}) are missing",
                    at,
                    format::kChecksums,
                    name);
    const h5::Id crc(DNPO_H5_CHECK(H5Dopen2(checksums_.get(), name.c_str(), H5P_DEFAULT), at));
    const auto crc_shape = h5::shape_of(crc.get(), sizeof(std::uint32_t), at);
    extent::check_checksums(t.shape, crc_shape, chunk_elems_, at);
    t.crcs.resize(static_cast<std::size_t>(crc_shape[0]));
    h5::read_small(crc.get(), H5T_NATIVE_UINT32, t.crcs.data(), xfer(crc_shape[0] * 4), at);
    return t;
  }

  void close() {
    checksums_ = h5::Id();
    tensors_ = h5::Id();
    xfer_ = h5::Id();
    xfer_independent_ = h5::Id();
    file_.close(where_);
  }

 private:
  Group group_;
  std::string where_;
  h5::Id file_;
  h5::Id xfer_;
  h5::Id xfer_independent_;
  h5::Id tensors_;
  h5::Id checksums_;
  std::int64_t chunk_elems_ = kChecksumChunkElems;
};

std::string checksum_error(const Reader& reader,
                           const std::string& name,
                           std::int64_t chunk,
                           std::int64_t numel,
                           std::uint32_t stored,
                           std::uint32_t computed) {
  const std::int64_t c = reader.chunk_elems();
  return detail::decorate_error(detail::concat(reader.where(),
                                               ", tensor ",
                                               name,
                                               ": checksum mismatch in chunk ",
                                               chunk,
                                               " (elements [",
                                               chunk * c,
                                               ", ",
                                               std::min(numel, (chunk + 1) * c),
                                               ")): stored ",
                                               hex(stored),
                                               ", computed ",
                                               hex(computed),
                                               "; the file is damaged"),
                                __FILE__,
                                __LINE__);
}

/// Throws naming both sides where a tensor's `what` (its shape, its dtype) in the file is not
/// the one the state expects; describe() writes a side for the message.
template <typename Value, typename Describe>
void check_same_as_stored(const std::string& at,
                          const char* what,
                          const Value& in_file,
                          const Value& expected,
                          Describe describe) {
  DNPO_CHECK_WITH(CheckpointError,
                  in_file == expected,
                  "{}: {} mismatch: file has {}, expected {}",
                  at,
                  what,
                  describe(in_file),
                  describe(expected));
}

/// collective: fills slice t from the file and returns "" or the first checksum error of the
/// chunks it touches. max_count: the largest slice of this tensor over the ranks.
std::string read_slice(const Reader& reader, TensorSlice& t, std::int64_t max_count) {
  const std::string at = reader.where() + ", tensor " + t.name;
  const Reader::Tensor stored = reader.open_tensor(t.name);
  check_same_as_stored(at, "shape", stored.shape, t.shape, format::shape_str<std::int64_t>);
  check_same_as_stored(at, "dtype", stored.dtype, t.dtype, h5::dtype_name);
  const std::int64_t numel = t.numel();
  const std::int64_t total = t.global_numel();
  const std::int64_t c = reader.chunk_elems();
  void* data = numel > 0 ? t.data.data_ptr() : nullptr;
  const hid_t xfer = reader.xfer(total * static_cast<std::int64_t>(c10::elementSize(t.dtype)));
  h5::read_flat(stored.data.get(), t.dtype, t.offset, numel, data, max_count, xfer, at);

  // --- the rest of the first and last chunks touched, to check whole chunks ---
  const std::int64_t end = t.offset + numel;
  const std::int64_t head_start = numel > 0 ? t.offset / c * c : t.offset;
  const std::int64_t tail_end = numel > 0 ? std::min(total, (end + c - 1) / c * c) : end;
  // (every rank makes these two reads unless the tensor is empty: then it has no storage)
  const std::int64_t margin_max = total > 0 ? c : 0;
  const auto read_margin = [&](std::int64_t from, std::int64_t to) {
    auto margin = at::empty({to - from}, at::dtype(t.dtype));
    void* into = margin.numel() > 0 ? margin.data_ptr() : nullptr;
    h5::read_flat(stored.data.get(), t.dtype, from, margin.numel(), into, margin_max, xfer, at);
    return margin;
  };
  const at::Tensor head = read_margin(head_start, t.offset);
  const at::Tensor tail = read_margin(end, tail_end);

  const auto elem = static_cast<std::int64_t>(c10::elementSize(t.dtype));
  for (const auto& p : format::chunk_pieces(data, t.offset, numel, elem, c)) {
    std::uint32_t crc = p.crc;
    if (p.chunk == head_start / c && head.numel() > 0) {
      crc = format::crc32_join(
          format::crc32_of(head.data_ptr(), head.numel() * elem), crc, p.count * elem);
    }
    if (p.chunk == (tail_end - 1) / c && tail.numel() > 0) {
      crc = format::crc32_join(
          crc, format::crc32_of(tail.data_ptr(), tail.numel() * elem), tail.numel() * elem);
    }
    const std::uint32_t want = stored.crcs[static_cast<std::size_t>(p.chunk)];
    if (crc != want) {
      return checksum_error(reader, t.name, p.chunk, total, want, crc);
    }
  }
  return {};
}

/// collective: the attributes and blobs into state (replacing what it held); "" or the first
/// blob checksum error.
std::string read_replicated(const Reader& reader, StateDict& state) {
  state.strings.clear();
  state.ints.clear();
  state.floats.clear();
  state.blobs.clear();
  const h5::Id attrs = reader.open_group(format::kAttributes);
  for (auto& [key, value] : h5::read_attrs(attrs.get(), reader.where())) {
    switch (value.kind) {
      case h5::AttrValue::Kind::kString:
        state.strings[key] = std::move(value.s);
        break;
      case h5::AttrValue::Kind::kInt:
        state.ints[key] = value.i;
        break;
      case h5::AttrValue::Kind::kFloat:
        state.floats[key] = value.d;
        break;
    }
  }
  std::string error;
  const h5::Id blobs = reader.open_group(format::kBlobs);
  for (const auto& name : link_names(blobs.get(), reader.where())) {
    const std::string at = reader.where() + ", blob " + name;
    const h5::Id data(DNPO_H5_CHECK(H5Dopen2(blobs.get(), name.c_str(), H5P_DEFAULT), at));
    const auto shape = h5::shape_of(data.get(), 1, at);
    DNPO_CHECK_WITH(CheckpointError, shape.size() == 1, "{}: expected a 1-D byte dataset", at);
    const auto want = static_cast<std::uint32_t>(h5::read_int_attr(data.get(), "crc32", at));
    std::string bytes(static_cast<std::size_t>(shape[0]), '\0');
    h5::read_flat(
        data.get(), at::kByte, 0, shape[0], bytes.data(), shape[0], reader.xfer(shape[0]), at);
    const std::uint32_t crc = format::crc32_of(bytes.data(), shape[0]);
    if (crc != want && error.empty()) {
      error = detail::decorate_error(
          detail::concat(at, ": checksum mismatch: stored ", hex(want), ", computed ", hex(crc)),
          __FILE__,
          __LINE__);
    }
    state.blobs[name] = std::move(bytes);
  }
  return error;
}

/// collective: reads every request of `wanted` from an open file, then agrees on errors.
void read_requests(const Group& group, Reader& reader, StateDict& wanted) {
  std::vector<std::int64_t> counts;
  for (const auto& t : wanted.tensors) {
    counts.push_back(t.numel());
  }
  const auto all = group.all_gather(counts);
  std::string error;
  for (std::size_t i = 0; i < wanted.tensors.size(); ++i) {
    std::int64_t max_count = 0;
    for (int r = 0; r < group.size(); ++r) {
      max_count = std::max(max_count, all[static_cast<std::size_t>(r) * counts.size() + i]);
    }
    auto e = read_slice(reader, wanted.tensors[i], max_count);
    if (error.empty()) {
      error = std::move(e);
    }
  }
  auto e = read_replicated(reader, wanted);
  if (error.empty()) {
    error = std::move(e);
  }
  reader.close();
  group.agree(error);
}

}  // namespace

void load_into(const std::string& path, StateDict& wanted) {
  h5::quiet();
  const Group group = Group::world();
  const std::string where = "checkpoint " + path;
  group.agree(capture_error([&] { format::check_slices(wanted, where); }));
  group.agree(format::compare_with_root(group, wanted, where));
  Reader reader(path, group);
  read_requests(group, reader, wanted);
}

StateDict load(const std::string& path) {
  h5::quiet();
  const Group group = Group::world();
  Reader reader(path, group);
  StateDict state;
  for (const auto& name : reader.tensor_names()) {
    const auto stored = reader.open_tensor(name);
    const auto range = even_slice(format::numel_of(stored.shape), group.rank(), group.size());
    state.add_request(name, stored.shape, range.offset, range.numel, stored.dtype);
  }
  read_requests(group, reader, state);
  return state;
}

void verify(const std::string& path) {
  h5::quiet();
  const Group group = Group::world();
  Reader reader(path, group);
  std::string error;
  const std::int64_t c = reader.chunk_elems();
  for (const auto& name : reader.tensor_names()) {
    const std::string at = reader.where() + ", tensor " + name;
    const auto stored = reader.open_tensor(name);
    const std::int64_t total = format::numel_of(stored.shape);
    const auto elem = static_cast<std::int64_t>(c10::elementSize(stored.dtype));
    // This rank's chunks, read `batch` chunks at a time (the same number of reads on every rank).
    const auto n_chunks = static_cast<std::int64_t>(stored.crcs.size());
    const auto mine = even_slice(n_chunks, group.rank(), group.size());
    const std::int64_t batch = std::max<std::int64_t>(1, kVerifyBatchBytes / (c * elem));
    const std::int64_t most = (n_chunks + group.size() - 1) / group.size();
    auto buf = at::empty({std::min(batch, std::max<std::int64_t>(mine.numel, 1)) * c},
                         at::dtype(stored.dtype));
    for (std::int64_t step = 0; step * batch < most; ++step) {
      const std::int64_t first = mine.offset + step * batch;
      const std::int64_t last = std::min(mine.offset + mine.numel, first + batch);
      const std::int64_t lo = std::min(first * c, total);
      const std::int64_t hi = first < last ? std::min(last * c, total) : lo;
      h5::read_flat(stored.data.get(),
                    stored.dtype,
                    lo,
                    hi - lo,
                    buf.data_ptr(),
                    batch * c,
                    reader.xfer(total * elem),
                    at);
      for (const auto& p : format::chunk_pieces(buf.data_ptr(), lo, hi - lo, elem, c)) {
        const std::uint32_t want = stored.crcs[static_cast<std::size_t>(p.chunk)];
        if (p.crc != want && error.empty()) {
          error = checksum_error(reader, name, p.chunk, total, want, p.crc);
        }
      }
    }
  }
  StateDict replicated;
  auto e = read_replicated(reader, replicated);
  if (error.empty()) {
    error = std::move(e);
  }
  reader.close();
  group.agree(error);
}

std::string inspect(const std::string& path) {
  h5::quiet();
  const Group group = Group::lone();
  Reader reader(path, group);
  std::ostringstream out;
  std::error_code ec;
  const auto file_bytes = std::filesystem::file_size(path, ec);
  out << "checkpoint " << path << " (" << (ec ? 0 : file_bytes) << " bytes)\n";
  for (const auto& [key, value] : h5::read_attrs(reader.file(), reader.where())) {
    out << "  " << key << ": "
        << (value.kind == h5::AttrValue::Kind::kString ? value.s
            : value.kind == h5::AttrValue::Kind::kInt  ? std::to_string(value.i)
                                                       : std::to_string(value.d))
        << "\n";
  }
  std::ostringstream rows;
  std::int64_t elements = 0;
  std::int64_t bytes = 0;
  const auto names = reader.tensor_names();
  for (const auto& name : names) {
    const auto stored = reader.open_tensor(name);
    const std::int64_t n = format::numel_of(stored.shape);
    const std::int64_t b = n * static_cast<std::int64_t>(c10::elementSize(stored.dtype));
    elements += n;
    bytes += b;
    rows << "  " << std::left << std::setw(48) << name << " " << std::setw(18)
         << format::shape_str(stored.shape) << " " << std::setw(6) << h5::dtype_name(stored.dtype)
         << " " << b << " bytes\n";
  }
  out << "tensors: " << names.size() << ", " << elements << " elements, " << bytes << " bytes\n"
      << rows.str();
  const h5::Id attrs = reader.open_group(format::kAttributes);
  const auto attributes = h5::read_attrs(attrs.get(), reader.where());
  out << "attributes: " << attributes.size() << "\n";
  constexpr std::size_t kShown = 72;
  for (const auto& [key, value] : attributes) {
    out << "  " << key;
    switch (value.kind) {
      case h5::AttrValue::Kind::kString:
        out << " (string, " << value.s.size() << " bytes) = " << value.s.substr(0, kShown)
            << (value.s.size() > kShown ? "..." : "");
        break;
      case h5::AttrValue::Kind::kInt:
        out << " (int) = " << value.i;
        break;
      case h5::AttrValue::Kind::kFloat:
        out << " (float) = " << value.d;
        break;
    }
    out << "\n";
  }
  const h5::Id blobs = reader.open_group(format::kBlobs);
  const auto blob_names = link_names(blobs.get(), reader.where());
  out << "blobs: " << blob_names.size() << "\n";
  for (const auto& name : blob_names) {
    const std::string at = reader.where() + ", blob " + name;
    const h5::Id data(DNPO_H5_CHECK(H5Dopen2(blobs.get(), name.c_str(), H5P_DEFAULT), at));
    out << "  " << name << " " << format::numel_of(h5::shape_of(data.get(), 1, at)) << " bytes\n";
  }
  reader.close();
  return out.str();
}

}  // namespace dnpo::ckpt
