// HDF5 helpers: error stack → exceptions, files, flat-range selections and ranged I/O, attributes.
#include "h5.h"

#include <algorithm>
#include <array>
#include <filesystem>

#include "dnpo/common/error.h"
#include "extent.h"

namespace dnpo::ckpt::h5 {
namespace {

/// No single H5Dread/H5Dwrite moves more than this (MPI-IO counts are int).
constexpr std::int64_t kMaxTransferBytes = std::int64_t{1} << 30;

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* lines = static_cast<std::vector<std::string>*>(data);
  std::string line = err->desc != nullptr ? err->desc : "?";
  if (err->func_name != nullptr) {
    line += std::string(" (") + err->func_name + ")";
  }
  if (std::find(lines->begin(), lines->end(), line) == lines->end()) {
    lines->push_back(line);
  }
  return 0;
}

herr_t collect_attr_name(hid_t /*loc*/, const char* name, const H5A_info_t* /*info*/, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

Id make_fapl(const Group& group, const std::string& where) {
  Id fapl(DNPO_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS), where));
  if (group.parallel()) {
    DNPO_H5_CHECK(H5Pset_fapl_mpio(fapl.get(), group.comm(), MPI_INFO_NULL), where);
    // Metadata is read by one rank and broadcast, and written collectively.
    DNPO_H5_CHECK(H5Pset_all_coll_metadata_ops(fapl.get(), true), where);
    DNPO_H5_CHECK(H5Pset_coll_metadata_write(fapl.get(), true), where);
  }
  return fapl;
}

// A flat range [lo, hi) of the row-major sub-block dims[k..] (under the fixed leading indices
// `prefix`) as at most 2·(rank − k) − 1 boxes: a partial leading row, a block of whole rows, a
// partial trailing row, the partial rows split recursively.
struct Box {
  std::vector<hsize_t> start;
  std::vector<hsize_t> count;
};

void flat_range_boxes(const std::vector<hsize_t>& dims,
                      std::size_t k,
                      std::vector<hsize_t>& prefix,
                      hsize_t lo,
                      hsize_t hi,
                      std::vector<Box>& out) {
  const std::size_t n = dims.size();
  auto box = [&](hsize_t first, hsize_t rows) {
    Box b;
    b.start = prefix;
    b.count.assign(prefix.size(), 1);
    b.start.push_back(first);
    b.count.push_back(rows);
    for (std::size_t j = k + 1; j < n; ++j) {
      b.start.push_back(0);
      b.count.push_back(dims[j]);
    }
    out.push_back(std::move(b));
  };
  if (k + 1 == n) {
    box(lo, hi - lo);
    return;
  }
  hsize_t inner = 1;
  for (std::size_t j = k + 1; j < n; ++j) {
    inner *= dims[j];
  }
  hsize_t i0 = lo / inner;
  const hsize_t r0 = lo % inner;
  const hsize_t i1 = hi / inner;
  const hsize_t r1 = hi % inner;
  auto partial = [&](hsize_t row, hsize_t from, hsize_t to) {
    prefix.push_back(row);
    flat_range_boxes(dims, k + 1, prefix, from, to, out);
    prefix.pop_back();
  };
  if (i0 == i1) {
    partial(i0, r0, r1);
    return;
  }
  if (r0 != 0) {
    partial(i0, r0, inner);
    ++i0;
  }
  if (i1 > i0) {
    box(i0, i1 - i0);
  }
  if (r1 != 0) {
    partial(i1, 0, r1);
  }
}

void select_flat(hid_t space, std::int64_t start, std::int64_t count, const std::string& where) {
  if (count == 0) {
    DNPO_H5_CHECK(H5Sselect_none(space), where);
    return;
  }
  const int rank = DNPO_H5_CHECK(H5Sget_simple_extent_ndims(space), where);
  if (rank == 0) {
    DNPO_H5_CHECK(H5Sselect_all(space), where);
    return;
  }
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  DNPO_H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr), where);
  std::vector<hsize_t> prefix;
  std::vector<Box> boxes;
  flat_range_boxes(dims,
                   0,
                   prefix,
                   static_cast<hsize_t>(start),
                   static_cast<hsize_t>(start) + static_cast<hsize_t>(count),
                   boxes);
  for (std::size_t b = 0; b < boxes.size(); ++b) {
    DNPO_H5_CHECK(H5Sselect_hyperslab(space,
                                      b == 0 ? H5S_SELECT_SET : H5S_SELECT_OR,
                                      boxes[b].start.data(),
                                      nullptr,
                                      boxes[b].count.data(),
                                      nullptr),
                  where);
  }
}

}  // namespace

void quiet() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::string error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  std::string out;
  for (const auto& line : lines) {
    out += (out.empty() ? "" : "; ") + line;
  }
  return out.empty() ? "no HDF5 error message" : out;
}

void fail(const char* call, const std::string& where, const char* file, int line) {
  throw CheckpointError(detail::decorate_error(
      detail::concat(where, ": ", call, " failed: ", error_stack()), file, line));
}

Id::~Id() {
  if (id_ >= 0) {
    H5Idec_ref(id_);
  }
}

Id& Id::operator=(Id&& other) noexcept {
  if (this != &other) {
    if (id_ >= 0) {
      H5Idec_ref(id_);
    }
    id_ = other.id_;
    other.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Id::close(const std::string& where) {
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  if (id >= 0) {
    DNPO_H5_CHECK(H5Idec_ref(id), where);
  }
}

// --- files ---

Id create_file(const std::string& path, const Group& group) {
  const std::string where = "checkpoint " + path + ": cannot create";
  const Id fapl = make_fapl(group, where);
  return Id(DNPO_H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), where));
}

Id open_file(const std::string& path, const Group& group) {
  std::error_code ec;  // the plain case first: HDF5's own message for it is a page long
  DNPO_CHECK_WITH(CheckpointError,
                  std::filesystem::is_regular_file(path, ec),
                  "checkpoint {}: no such file",
                  path);
  const std::string where =
      "checkpoint " + path + ": cannot open (missing, truncated or not an HDF5 file)";
  const Id fapl = make_fapl(group, where);
  return Id(DNPO_H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), where));
}

Id transfer_plist(const Group& group, bool collective) {
  Id xfer(DNPO_H5_CHECK(H5Pcreate(H5P_DATASET_XFER), "transfer property list"));
  if (group.parallel()) {
    DNPO_H5_CHECK(
        H5Pset_dxpl_mpio(xfer.get(), collective ? H5FD_MPIO_COLLECTIVE : H5FD_MPIO_INDEPENDENT),
        "transfer property list");
  }
  return xfer;
}

// --- types ---

namespace {
/// A dtype's two HDF5 types, side by side because they must agree in kind and width: the
/// little-endian type stored in the file and the native type transfers read and write.
struct H5Types {
  hid_t file;
  hid_t memory;
};

H5Types h5_types(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case at::kLong:
      return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case at::kByte:
      return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
    default:
      DNPO_FAIL(InternalError, "ckpt: no HDF5 type for dtype {}", dtype);
  }
}
}  // namespace

hid_t file_type(at::ScalarType dtype) {
  return h5_types(dtype).file;
}

hid_t mem_type(at::ScalarType dtype) {
  return h5_types(dtype).memory;
}

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "fp32";
    case at::kLong:
      return "int64";
    default:
      return "unsupported";
  }
}

at::ScalarType dtype_of(hid_t type, const std::string& where) {
  if (DNPO_H5_CHECK(H5Tequal(type, H5T_IEEE_F32LE), where) > 0) {
    return at::kFloat;
  }
  if (DNPO_H5_CHECK(H5Tequal(type, H5T_STD_I64LE), where) > 0) {
    return at::kLong;
  }
  DNPO_FAIL(
      CheckpointError,
      "{}: unsupported stored type (class {}, {} bytes); expected fp32 or int64 little-endian",
      where,
      static_cast<int>(H5Tget_class(type)),
      H5Tget_size(type));
}

// --- datasets ---

Id make_space(const std::vector<std::int64_t>& shape) {
  if (shape.empty()) {
    return Id(DNPO_H5_CHECK(H5Screate(H5S_SCALAR), "dataspace"));
  }
  const std::vector<hsize_t> dims(shape.begin(), shape.end());
  return Id(DNPO_H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                          "dataspace"));
}

namespace {
/// The size of the file that holds object `obj`.
std::uint64_t file_bytes_of(hid_t obj, const std::string& where) {
  const Id file(DNPO_H5_CHECK(H5Iget_file_id(obj), where));
  hsize_t bytes = 0;
  DNPO_H5_CHECK(H5Fget_filesize(file.get(), &bytes), where);
  return bytes;
}
}  // namespace

std::vector<std::int64_t> shape_of(hid_t dataset,
                                   std::int64_t elem_bytes,
                                   const std::string& where) {
  const Id space(DNPO_H5_CHECK(H5Dget_space(dataset), where));
  const int rank = DNPO_H5_CHECK(H5Sget_simple_extent_ndims(space.get()), where);
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  DNPO_H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), where);
  return extent::checked_shape(
      {dims.begin(), dims.end()}, elem_bytes, file_bytes_of(dataset, where), where);
}

bool exists(hid_t loc, const std::string& name, const std::string& where) {
  return DNPO_H5_CHECK(H5Lexists(loc, name.c_str(), H5P_DEFAULT), where) > 0;
}

namespace {
void transfer_flat(hid_t dataset,
                   at::ScalarType dtype,
                   std::int64_t start,
                   std::int64_t count,
                   const void* write_buf,
                   void* read_buf,
                   std::int64_t max_count,
                   hid_t xfer,
                   const std::string& where) {
  const auto elem = static_cast<std::int64_t>(c10::elementSize(dtype));
  const std::int64_t piece = kMaxTransferBytes / elem;
  const Id file_space(DNPO_H5_CHECK(H5Dget_space(dataset), where));
  std::array<char, 8> dummy{};  // a valid pointer for ranks that transfer nothing
  for (std::int64_t done = 0; done < max_count; done += piece) {
    const std::int64_t n = std::clamp<std::int64_t>(count - done, 0, piece);
    select_flat(file_space.get(), start + done, n, where);
    const hsize_t mem_dim = std::max<hsize_t>(static_cast<hsize_t>(n), 1);
    const Id mem_space(DNPO_H5_CHECK(H5Screate_simple(1, &mem_dim, nullptr), where));
    if (n == 0) {
      DNPO_H5_CHECK(H5Sselect_none(mem_space.get()), where);
    }
    if (write_buf != nullptr) {
      const void* ptr = n > 0 ? static_cast<const char*>(write_buf) + done * elem : dummy.data();
      DNPO_H5_CHECK(
          H5Dwrite(dataset, mem_type(dtype), mem_space.get(), file_space.get(), xfer, ptr), where);
    } else {
      void* ptr = n > 0 ? static_cast<char*>(read_buf) + done * elem : dummy.data();
      DNPO_H5_CHECK(H5Dread(dataset, mem_type(dtype), mem_space.get(), file_space.get(), xfer, ptr),
                    where);
    }
  }
}
}  // namespace

void write_flat(hid_t dataset,
                at::ScalarType dtype,
                std::int64_t start,
                std::int64_t count,
                const void* buf,
                std::int64_t max_count,
                hid_t xfer,
                const std::string& where) {
  static const char nothing = 0;
  transfer_flat(dataset,
                dtype,
                start,
                count,
                buf != nullptr ? buf : &nothing,
                nullptr,
                max_count,
                xfer,
                where);
}

void read_flat(hid_t dataset,
               at::ScalarType dtype,
               std::int64_t start,
               std::int64_t count,
               void* buf,
               std::int64_t max_count,
               hid_t xfer,
               const std::string& where) {
  DNPO_INTERNAL_ASSERT(buf != nullptr || count == 0);
  std::array<char, 8> nothing{};
  transfer_flat(dataset,
                dtype,
                start,
                count,
                nullptr,
                buf != nullptr ? buf : nothing.data(),
                max_count,
                xfer,
                where);
}

void write_small_from_root(hid_t dataset,
                           hid_t memory_type,
                           const void* buf,
                           std::int64_t n,
                           bool is_root,
                           hid_t xfer,
                           const std::string& where) {
  if (n == 0) {
    return;
  }
  const Id file_space(DNPO_H5_CHECK(H5Dget_space(dataset), where));
  const auto dim = static_cast<hsize_t>(n);
  const Id mem_space(DNPO_H5_CHECK(H5Screate_simple(1, &dim, nullptr), where));
  if (!is_root) {
    DNPO_H5_CHECK(H5Sselect_none(file_space.get()), where);
    DNPO_H5_CHECK(H5Sselect_none(mem_space.get()), where);
  }
  std::array<char, 8> dummy{};
  DNPO_H5_CHECK(H5Dwrite(dataset,
                         memory_type,
                         mem_space.get(),
                         file_space.get(),
                         xfer,
                         is_root ? buf : dummy.data()),
                where);
}

void read_small(hid_t dataset, hid_t memory_type, void* buf, hid_t xfer, const std::string& where) {
  const Id file_space(DNPO_H5_CHECK(H5Dget_space(dataset), where));
  if (DNPO_H5_CHECK(H5Sget_simple_extent_npoints(file_space.get()), where) == 0) {
    return;
  }
  DNPO_H5_CHECK(H5Dread(dataset, memory_type, H5S_ALL, H5S_ALL, xfer, buf), where);
}

// --- attributes ---

namespace {
void write_scalar_attr(hid_t obj,
                       const std::string& name,
                       hid_t stored,
                       hid_t memory,
                       const void* value,
                       const std::string& where) {
  const Id space(DNPO_H5_CHECK(H5Screate(H5S_SCALAR), where));
  const Id attr(DNPO_H5_CHECK(
      H5Acreate2(obj, name.c_str(), stored, space.get(), H5P_DEFAULT, H5P_DEFAULT), where));
  DNPO_H5_CHECK(H5Awrite(attr.get(), memory, value), where);
}
}  // namespace

void write_attr(hid_t obj, const std::string& name, std::int64_t value, const std::string& where) {
  write_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, where);
}

void write_attr(hid_t obj, const std::string& name, double value, const std::string& where) {
  write_scalar_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, where);
}

void write_attr(hid_t obj,
                const std::string& name,
                const std::string& value,
                const std::string& where) {
  // Fixed-length, null-padded UTF-8 of exactly the value's bytes; "" is a null dataspace.
  const Id type(DNPO_H5_CHECK(H5Tcopy(H5T_C_S1), where));
  DNPO_H5_CHECK(H5Tset_size(type.get(), std::max<std::size_t>(value.size(), 1)), where);
  DNPO_H5_CHECK(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), where);
  DNPO_H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8), where);
  const Id space(DNPO_H5_CHECK(H5Screate(value.empty() ? H5S_NULL : H5S_SCALAR), where));
  const Id attr(DNPO_H5_CHECK(
      H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), where));
  if (!value.empty()) {
    DNPO_H5_CHECK(H5Awrite(attr.get(), type.get(), value.data()), where);
  }
}

std::vector<std::pair<std::string, AttrValue>> read_attrs(hid_t obj, const std::string& where) {
  std::vector<std::string> names;
  DNPO_H5_CHECK(H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr_name, &names),
                where);
  std::vector<std::pair<std::string, AttrValue>> out;
  for (const auto& name : names) {
    const std::string at = detail::concat(where, ", attribute ", name);
    const Id attr(DNPO_H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT), at));
    const Id type(DNPO_H5_CHECK(H5Aget_type(attr.get()), at));
    const Id space(DNPO_H5_CHECK(H5Aget_space(attr.get()), at));
    const H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
    const H5T_class_t type_class = H5Tget_class(type.get());
    AttrValue value;
    if (type_class == H5T_STRING && space_class == H5S_NULL) {
      value.kind = AttrValue::Kind::kString;
    } else {
      DNPO_CHECK_WITH(CheckpointError,
                      DNPO_H5_CHECK(H5Sget_simple_extent_npoints(space.get()), at) == 1,
                      "{}: unsupported attribute; expected one value",
                      at);
      if (type_class == H5T_STRING) {
        DNPO_CHECK_WITH(CheckpointError,
                        DNPO_H5_CHECK(H5Tis_variable_str(type.get()), at) == 0,
                        "{}: variable-length strings are not supported",
                        at);
        value.kind = AttrValue::Kind::kString;
        const std::size_t bytes = H5Tget_size(type.get());
        DNPO_CHECK_WITH(CheckpointError,
                        bytes <= file_bytes_of(obj, at),
                        "{}: a string of {} bytes does not fit in the file; the file is damaged",
                        at,
                        bytes);
        value.s.resize(bytes);
        DNPO_H5_CHECK(H5Aread(attr.get(), type.get(), value.s.data()), at);
        if (H5Tget_strpad(type.get()) != H5T_STR_NULLPAD) {
          value.s.erase(value.s.find_last_not_of('\0') + 1);
        }
      } else if (type_class == H5T_INTEGER) {
        value.kind = AttrValue::Kind::kInt;
        DNPO_H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value.i), at);
      } else if (type_class == H5T_FLOAT) {
        value.kind = AttrValue::Kind::kFloat;
        DNPO_H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value.d), at);
      } else {
        DNPO_FAIL(CheckpointError, "{}: unsupported attribute type class {}", at, type_class);
      }
    }
    out.emplace_back(name, std::move(value));
  }
  return out;
}

std::int64_t read_int_attr(hid_t obj, const std::string& name, const std::string& where) {
  const std::string at = detail::concat(where, ", attribute ", name);
  DNPO_CHECK_WITH(CheckpointError,
                  DNPO_H5_CHECK(H5Aexists(obj, name.c_str()), at) > 0,
                  "{}: missing (not a dnpo checkpoint, or a damaged one)",
                  at);
  const Id attr(DNPO_H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT), at));
  const Id type(DNPO_H5_CHECK(H5Aget_type(attr.get()), at));
  DNPO_CHECK_WITH(
      CheckpointError, H5Tget_class(type.get()) == H5T_INTEGER, "{}: expected an integer", at);
  std::int64_t value = 0;
  DNPO_H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), at);
  return value;
}

}  // namespace dnpo::ckpt::h5
