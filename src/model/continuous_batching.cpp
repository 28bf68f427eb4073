// Continuous batching on the KV cache; see generate_continuous in sampler.h.
//
// The batch's cache is one (rows, KV, capacity, hd) tensor per layer with one length L for all
// rows, as in a static batch. A row's sequence is right-aligned at L: a prompt that starts in a
// row is prefilled on its own cache (with the other prompts starting in the same step, packed
// several to a row, each attending to itself alone, so no padding is computed) and its keys and
// values are copied into columns [L − p, L) of that row, its mask set to those columns alone.
// Positions come from the mask (cumsum − 1), so the copied keys carry the positions they had in the
// prefill and the row continues as if it had been decoded alone. Columns no row reads any more are
// dropped (moving the rest to the left) when they are a quarter of the cache.
#include <algorithm>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dnpo/common/error.h"
#include "dnpo/model/sampler.h"

namespace dnpo::model {
namespace {

constexpr std::size_t kNoRequest = std::numeric_limits<std::size_t>::max();

/// One row of the batch: the request it answers, where its sequence starts in the cache, and how
/// many tokens it has picked.
struct Row {
  std::size_t request = kNoRequest;  ///< kNoRequest: its answer ended; free for the next prompt
  std::int64_t start = 0;            ///< the cache column of its prompt's first token
  std::int64_t picked = 0;           ///< answer tokens picked so far (an EOS included)
  int limit = 0;                     ///< answer_limit of its request
  std::int64_t next_token = 0;       ///< the token the next decode step feeds
};

/// Where a prompt sits in a packed prefill: its pack (a row of the prefill batch), its first
/// column, and its number in the pack (the attention mask's value on its tokens).
struct Place {
  std::int64_t row = 0;
  std::int64_t column = 0;
  std::int64_t number = 0;
};

struct Packs {
  std::size_t rows = 0;
  std::vector<Place> places;  // per prompt, in the order given
};

/// First-fit decreasing into packs `width` tokens wide (the longest prompt's length): a padded
/// batch would process every prompt at that width, packs only about the prompts' tokens, and
/// a pack's attention bias is no larger than a padded row's.
Packs pack_prompts(const std::vector<std::int64_t>& lengths, std::int64_t width) {
  std::vector<std::size_t> order(lengths.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return lengths[a] > lengths[b];
  });
  Packs packs;
  packs.places.resize(lengths.size());
  std::vector<std::int64_t> used;     // tokens per pack
  std::vector<std::int64_t> prompts;  // prompts per pack
  for (const auto i : order) {
    std::size_t row = 0;
    while (row < used.size() && used[row] + lengths[i] > width) {
      ++row;
    }
    if (row == used.size()) {
      used.push_back(0);
      prompts.push_back(0);
    }
    packs.places[i] = {static_cast<std::int64_t>(row), used[row], ++prompts[row]};
    used[row] += lengths[i];
  }
  packs.rows = used.size();
  return packs;
}

class ContinuousBatch {
 public:
  ContinuousBatch(Decoder& model,
                  const std::vector<GenerationRequest>& requests,
                  const config::SampleConfig& cfg,
                  std::int64_t eos_id,
                  std::int64_t pad_id,
                  const SamplingKeys& keys)
      : model_(model),
        requests_(requests),
        cfg_(cfg),
        eos_id_(eos_id),
        pad_id_(pad_id),
        keys_(keys),
        results_(requests.size()) {
    std::int64_t longest = 0;
    for (const auto& request : requests) {
      longest = std::max<std::int64_t>(
          longest, static_cast<std::int64_t>(request.prompt.size()) + answer_limit(request, cfg));
    }
    // No row's sequence is longer than `longest`, so dropping the columns before the oldest
    // row's start frees at least the slack; a copy per slack steps is little.
    capacity_ = longest + std::max<std::int64_t>(16, longest / 2);
    const auto rows = std::min<std::size_t>(requests.size(), std::max(1, cfg.batch_size));
    rows_.resize(rows);
    cache_ = model_.make_cache(static_cast<std::int64_t>(rows), capacity_);
    mask_ = at::zeros({static_cast<std::int64_t>(rows), capacity_},
                      at::TensorOptions().dtype(at::kLong).device(model_.device()));
  }

  std::vector<Generation> run() {
    admit();
    while (!rows_.empty()) {
      decode_step();
      admit();
    }
    return std::move(results_);
  }

 private:
  /// Gives every free row the next waiting prompt once sample.refill_rows rows are free (or as
  /// many as prompts wait). With none waiting, free rows idle until they are a quarter of the
  /// batch, then leave it (each removal copies the cache).
  void admit() {
    for (;;) {
      std::vector<std::size_t> free;
      for (std::size_t r = 0; r < rows_.size(); ++r) {
        if (rows_[r].request == kNoRequest) {
          free.push_back(r);
        }
      }
      if (free.empty()) {
        return;
      }
      if (next_request_ == requests_.size()) {
        if (4 * free.size() >= rows_.size()) {
          drop_free_rows();
        }
        return;
      }
      const auto waiting = requests_.size() - next_request_;
      const auto wanted =
          std::min({static_cast<std::size_t>(cfg_.refill_rows), waiting, rows_.size()});
      if (free.size() < wanted) {
        return;  // the free rows decode padding until enough are free
      }
      free.resize(std::min(free.size(), waiting));
      for (const auto r : free) {
        rows_[r] = Row{};
        rows_[r].request = next_request_;
        rows_[r].limit = answer_limit(requests_[next_request_++], cfg_);
      }
      start_rows(free);  // a first token may end an answer: loop until no row is free
    }
  }

  /// Prefills the prompts of `slots` packed (pack_prompts), places each in its row of the batch's
  /// cache, right-aligned, and picks their first tokens.
  void start_rows(const std::vector<std::size_t>& slots) {
    std::vector<std::int64_t> lengths;
    for (const auto r : slots) {
      lengths.push_back(static_cast<std::int64_t>(requests_[rows_[r].request].prompt.size()));
    }
    const auto longest = *std::max_element(lengths.begin(), lengths.end());
    const auto packs = pack_prompts(lengths, longest);
    const auto pack_count = static_cast<std::int64_t>(packs.rows);
    const auto cells = static_cast<std::size_t>(pack_count * longest);
    std::vector<std::int64_t> ids(cells, pad_id_);
    std::vector<std::int64_t> numbers(cells, 0);
    std::vector<std::int64_t> last_tokens;  // flat (pack, column) of each prompt's last token
    for (std::size_t j = 0; j < slots.size(); ++j) {
      const auto& prompt = requests_[rows_[slots[j]].request].prompt;
      const auto& place = packs.places[j];
      const auto first = place.row * longest + place.column;
      std::copy(prompt.begin(), prompt.end(), ids.begin() + first);
      std::fill_n(numbers.begin() + first, lengths[j], place.number);
      last_tokens.push_back(first + lengths[j] - 1);
    }
    const auto on_device = [&](const std::vector<std::int64_t>& v) {
      return at::tensor(v, at::kLong).view({pack_count, longest}).to(model_.device());
    };
    auto prefill = model_.make_cache(pack_count, longest);
    const auto hidden = model_.forward_hidden(on_device(ids), on_device(numbers), &prefill);
    if (cache_.length < longest) {
      relayout(0, longest - cache_.length);  // room on the left for the longest new prompt
    }
    const auto end = cache_.length;
    for (std::size_t j = 0; j < slots.size(); ++j) {
      const auto r = static_cast<std::int64_t>(slots[j]);
      const auto p = lengths[j];
      const auto& place = packs.places[j];
      for (std::size_t layer = 0; layer < cache_.keys.size(); ++layer) {
        cache_.keys[layer][r]
            .narrow(1, end - p, p)
            .copy_(prefill.keys[layer][place.row].narrow(1, place.column, p));
        cache_.values[layer][r]
            .narrow(1, end - p, p)
            .copy_(prefill.values[layer][place.row].narrow(1, place.column, p));
      }
      mask_[r].zero_();
      mask_[r].narrow(0, end - p, p).fill_(1);
      rows_[slots[j]].start = end - p;
    }
    const auto last = hidden.reshape({pack_count * longest, hidden.size(-1)})
                          .index_select(0, at::tensor(last_tokens, at::kLong).to(model_.device()));
    const TokenPicker picker(model_.logits(last), cfg_, keys_);
    for (std::size_t j = 0; j < slots.size(); ++j) {
      take(rows_[slots[j]], picker.pick(static_cast<std::int64_t>(j), sample_id(slots[j]), 0));
    }
  }

  /// One forward of every row's next token, and the tokens after them.
  void decode_step() {
    // Every step's attention reads all L columns: drop those no row reads once they are a
    // quarter of the cache (a copy of the rest, about one step's attention) or it is full.
    std::int64_t oldest = cache_.length;
    for (const auto& row : rows_) {
      if (row.request != kNoRequest) {
        oldest = std::min(oldest, row.start);
      }
    }
    if (oldest > 0 && (4 * oldest >= cache_.length || cache_.length == capacity_)) {
      relayout(oldest, 0);
    }
    const auto rows = static_cast<std::int64_t>(rows_.size());
    std::vector<std::int64_t> next;  // an idle row decodes padding, never read
    for (const auto& row : rows_) {
      next.push_back(row.request != kNoRequest ? row.next_token : pad_id_);
    }
    const auto length = cache_.length;
    mask_.narrow(1, length, 1).fill_(1);
    const auto ids = at::tensor(next, at::kLong).view({rows, 1}).to(model_.device());
    const auto hidden = model_.forward_hidden(ids, mask_.narrow(1, 0, length + 1), &cache_);
    const TokenPicker picker(model_.logits(hidden.select(1, 0)), cfg_, keys_);
    for (std::size_t r = 0; r < rows_.size(); ++r) {
      if (rows_[r].request != kNoRequest) {
        take(rows_[r], picker.pick(static_cast<std::int64_t>(r), sample_id(r), rows_[r].picked));
      }
    }
  }

  /// Records a row's picked token; an ended answer frees the row.
  void take(Row& row, std::int64_t token) {
    row.next_token = token;
    if (append_token(results_[row.request], token, eos_id_, row.picked++, row.limit)) {
      row.request = kNoRequest;
    }
  }

  /// Moves the cache's columns [keep_from, L) to start at column `offset` (dropping the ones
  /// before keep_from, or making room on the left), in place. The columns left behind keep stale
  /// (finite) values under a zero mask, which is all attention needs of them.
  void relayout(std::int64_t keep_from, std::int64_t offset) {
    const auto kept = cache_.length - keep_from;
    DNPO_CHECK(offset + kept < capacity_, "continuous batching: the KV cache cannot fit {}", kept);
    const auto move = [&](at::Tensor& t, std::int64_t dim) {
      const auto columns = t.narrow(dim, keep_from, kept).clone();
      t.narrow(dim, offset, kept).copy_(columns);
    };
    for (std::size_t layer = 0; layer < cache_.keys.size(); ++layer) {
      move(cache_.keys[layer], 2);
      move(cache_.values[layer], 2);
    }
    const auto mask = mask_.narrow(1, keep_from, kept).clone();
    mask_.zero_();
    mask_.narrow(1, offset, kept).copy_(mask);
    cache_.length = offset + kept;
    for (auto& row : rows_) {
      row.start += offset - keep_from;
    }
  }

  /// Removes the free rows from the batch (nothing waits for them).
  void drop_free_rows() {
    std::vector<std::int64_t> keep;
    std::vector<Row> kept;
    for (std::size_t r = 0; r < rows_.size(); ++r) {
      if (rows_[r].request != kNoRequest) {
        keep.push_back(static_cast<std::int64_t>(r));
        kept.push_back(rows_[r]);
      }
    }
    rows_ = std::move(kept);
    if (rows_.empty()) {
      return;
    }
    // Only the L columns in use are copied: the ones after them are written before they are read.
    const auto index = at::tensor(keep, at::kLong).to(model_.device());
    const auto length = cache_.length;
    const auto select = [&](const at::Tensor& t) {
      auto sizes = t.sizes().vec();
      sizes[0] = static_cast<std::int64_t>(keep.size());
      auto out = at::empty(sizes, t.options());
      out.narrow(2, 0, length).copy_(t.narrow(2, 0, length).index_select(0, index));
      return out;
    };
    for (std::size_t layer = 0; layer < cache_.keys.size(); ++layer) {
      cache_.keys[layer] = select(cache_.keys[layer]);
      cache_.values[layer] = select(cache_.values[layer]);
    }
    mask_ = mask_.index_select(0, index);
  }

  std::uint64_t sample_id(std::size_t row) const {
    return requests_[rows_[row].request].sample_id;
  }

  Decoder& model_;
  const std::vector<GenerationRequest>& requests_;
  const config::SampleConfig& cfg_;
  std::int64_t eos_id_;
  std::int64_t pad_id_;
  SamplingKeys keys_;
  std::vector<Generation> results_;
  std::int64_t capacity_ = 0;
  KVCache cache_;
  at::Tensor mask_;  // (rows, capacity) int64: 1 on the columns of a row's current sequence
  std::vector<Row> rows_;
  std::size_t next_request_ = 0;
};

}  // namespace

std::vector<Generation> generate_continuous(Decoder& model,
                                            const std::vector<GenerationRequest>& requests,
                                            const config::SampleConfig& cfg,
                                            std::int64_t eos_id,
                                            std::int64_t pad_id,
                                            const SamplingKeys& keys) {
  if (requests.empty()) {
    return {};
  }
  at::NoGradGuard no_grad;
  return ContinuousBatch(model, requests, cfg, eos_id, pad_id, keys).run();
}

}  // namespace dnpo::model
