// BLEU and ROUGE-L; see text_metrics.h.
#include "dnpo/selfplay/text_metrics.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "dnpo/common/error.h"

namespace dnpo::selfplay {
namespace {

using NGramCounts = std::map<TokenIds, std::int64_t>;

NGramCounts ngrams(const TokenIds& tokens, std::size_t n) {
  NGramCounts counts;
  for (std::size_t i = 0; i + n <= tokens.size(); ++i) {
    counts[TokenIds(tokens.begin() + static_cast<std::ptrdiff_t>(i),
                    tokens.begin() + static_cast<std::ptrdiff_t>(i + n))] += 1;
  }
  return counts;
}

}  // namespace

double corpus_bleu(const std::vector<TokenIds>& hypotheses,
                   const std::vector<TokenIds>& references,
                   int max_n) {
  DNPO_CHECK(hypotheses.size() == references.size(),
             "corpus_bleu: {} hypotheses but {} references",
             hypotheses.size(),
             references.size());
  DNPO_CHECK(max_n >= 1, "corpus_bleu: max_n must be >= 1, got {}", max_n);
  std::vector<double> matched(static_cast<std::size_t>(max_n), 0.0);
  std::vector<double> total(static_cast<std::size_t>(max_n), 0.0);
  double hyp_length = 0;
  double ref_length = 0;
  for (std::size_t i = 0; i < hypotheses.size(); ++i) {
    hyp_length += static_cast<double>(hypotheses[i].size());
    ref_length += static_cast<double>(references[i].size());
    for (int n = 1; n <= max_n; ++n) {
      const auto hyp = ngrams(hypotheses[i], static_cast<std::size_t>(n));
      const auto ref = ngrams(references[i], static_cast<std::size_t>(n));
      for (const auto& [gram, count] : hyp) {
        const auto it = ref.find(gram);
        matched[static_cast<std::size_t>(n - 1)] +=
            static_cast<double>(std::min(count, it == ref.end() ? 0 : it->second));
        total[static_cast<std::size_t>(n - 1)] += static_cast<double>(count);
      }
    }
  }
  double log_precision = 0;
  for (int n = 0; n < max_n; ++n) {
    if (matched[static_cast<std::size_t>(n)] == 0) {
      return 0.0;
    }
    log_precision +=
        std::log(matched[static_cast<std::size_t>(n)] / total[static_cast<std::size_t>(n)]);
  }
  const double brevity = hyp_length < ref_length ? std::exp(1.0 - ref_length / hyp_length) : 1.0;
  return brevity * std::exp(log_precision / max_n);
}

double rouge_l_f1(const TokenIds& hypothesis, const TokenIds& reference) {
  if (hypothesis.empty() || reference.empty()) {
    return 0.0;
  }
  // LCS length by dynamic programming over one row.
  std::vector<std::int64_t> row(reference.size() + 1, 0);
  for (const auto h : hypothesis) {
    std::int64_t diagonal = 0;
    for (std::size_t j = 1; j <= reference.size(); ++j) {
      const auto above = row[j];
      row[j] = h == reference[j - 1] ? diagonal + 1 : std::max(row[j], row[j - 1]);
      diagonal = above;
    }
  }
  const auto lcs = static_cast<double>(row.back());
  if (lcs == 0) {
    return 0.0;
  }
  const double precision = lcs / static_cast<double>(hypothesis.size());
  const double recall = lcs / static_cast<double>(reference.size());
  return 2 * precision * recall / (precision + recall);
}

double mean_rouge_l(const std::vector<TokenIds>& hypotheses,
                    const std::vector<TokenIds>& references) {
  DNPO_CHECK(hypotheses.size() == references.size(),
             "mean_rouge_l: {} hypotheses but {} references",
             hypotheses.size(),
             references.size());
  if (hypotheses.empty()) {
    return 0.0;
  }
  double sum = 0;
  for (std::size_t i = 0; i < hypotheses.size(); ++i) {
    sum += rouge_l_f1(hypotheses[i], references[i]);
  }
  return sum / static_cast<double>(hypotheses.size());
}

}  // namespace dnpo::selfplay
