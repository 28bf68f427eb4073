// Thin HDF5 helpers for ckpt/: checked calls that throw CheckpointError with HDF5's own error
// stack (printing is turned off), RAII ids, files through MPI-IO, flat-range selections of N-d
// datasets, collective ranged I/O, and attributes. The only code (with its users) seeing hdf5.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <hdf5.h>

#include "group.h"

namespace dnpo::ckpt::h5 {

/// Turns HDF5's automatic error printing off (errors become exceptions instead).
void quiet();
/// HDF5's error stack as one line (innermost last), then clears it.
std::string error_stack();
[[noreturn]] void fail(const char* call, const std::string& where, const char* file, int line);

template <typename T>
T check(T rc, const char* call, const std::string& where, const char* file, int line) {
  if (rc < 0) {
    fail(call, where, file, line);
  }
  return rc;
}

/// Owns an HDF5 id (file, group, dataset, dataspace, type, property list, attribute).
class Id {
 public:
  Id() = default;
  explicit Id(hid_t id) : id_(id) {}
  ~Id();
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id(Id&& other) noexcept : id_(other.id_) {
    other.id_ = H5I_INVALID_HID;
  }
  Id& operator=(Id&& other) noexcept;
  hid_t get() const {
    return id_;
  }
  /// Closes now and throws on failure (for files: the final flush).
  void close(const std::string& where);

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// --- files ---
/// collective: creates (truncating) `path`, through MPI-IO when the group is parallel.
Id create_file(const std::string& path, const Group& group);
/// collective: opens `path` read-only; a missing, truncated or non-HDF5 file throws naming it.
Id open_file(const std::string& path, const Group& group);
/// Datasets of fewer bytes than this are read and written with independent MPI-IO: a collective
/// transfer synchronises every rank once per dataset, and at many (or oversubscribed) ranks that
/// costs far more than moving a small dataset's bytes. Larger ones keep collective buffering.
constexpr std::int64_t kCollectiveMinBytes = std::int64_t{16} << 20;
/// Transfer property list: collective MPI-IO when the group is parallel and `collective`, else
/// independent (a call every rank need not make in step with the others).
Id transfer_plist(const Group& group, bool collective = true);

// --- types ---
hid_t file_type(at::ScalarType dtype);
hid_t mem_type(at::ScalarType dtype);
const char* dtype_name(at::ScalarType dtype);
/// The dtype of a dataset's stored type (kFloat, kLong), or throws naming `where`.
at::ScalarType dtype_of(hid_t type, const std::string& where);

// --- datasets ---
/// Dataspace of a tensor of `shape` ({} = scalar).
Id make_space(const std::vector<std::int64_t>& shape);
/// A dataset's shape, checked against the size of its file (extent::checked_shape) before
/// anything is allocated for it.
std::vector<std::int64_t> shape_of(hid_t dataset,
                                   std::int64_t elem_bytes,
                                   const std::string& where);
/// Whether `name` is a link in `loc`.
bool exists(hid_t loc, const std::string& name, const std::string& where);

/// collective: writes elements [start, start + count) of the row-major flattening of `dataset`
/// from buf, in pieces so no single transfer passes 1 GiB. max_count: the largest count of any
/// rank (every rank makes the same number of calls). dtype: kFloat, kLong or kByte.
void write_flat(hid_t dataset,
                at::ScalarType dtype,
                std::int64_t start,
                std::int64_t count,
                const void* buf,
                std::int64_t max_count,
                hid_t xfer,
                const std::string& where);
/// collective: reads likewise into buf.
void read_flat(hid_t dataset,
               at::ScalarType dtype,
               std::int64_t start,
               std::int64_t count,
               void* buf,
               std::int64_t max_count,
               hid_t xfer,
               const std::string& where);

/// collective: the root writes all n elements of a small 1-D dataset, the others nothing.
void write_small_from_root(hid_t dataset,
                           hid_t memory_type,
                           const void* buf,
                           std::int64_t n,
                           bool is_root,
                           hid_t xfer,
                           const std::string& where);
/// collective: every rank reads all n elements of a small 1-D dataset.
void read_small(hid_t dataset, hid_t memory_type, void* buf, hid_t xfer, const std::string& where);

// --- attributes ---
void write_attr(hid_t obj, const std::string& name, std::int64_t value, const std::string& where);
void write_attr(hid_t obj, const std::string& name, double value, const std::string& where);
void write_attr(hid_t obj,
                const std::string& name,
                const std::string& value,
                const std::string& where);

/// One attribute's value: which of the three kinds, and the value.
struct AttrValue {
  enum class Kind { kString, kInt, kFloat };
  Kind kind = Kind::kString;
  std::string s;
  std::int64_t i = 0;
  double d = 0;
};
/// Every attribute of `obj` by name.
std::vector<std::pair<std::string, AttrValue>> read_attrs(hid_t obj, const std::string& where);
/// The integer attribute `name` of `obj`; throws naming `where` when missing or not an integer.
std::int64_t read_int_attr(hid_t obj, const std::string& name, const std::string& where);

}  // namespace dnpo::ckpt::h5

/// Every HDF5 call goes through this: on failure, CheckpointError("<where>: <call> failed:
/// <HDF5 error stack>").
#define DNPO_H5_CHECK(call, where) \
  ::dnpo::ckpt::h5::check((call), #call, (where), __FILE__, __LINE__)
