// Similarity of generated text to references over token ids (App. F of the paper: how far an
// iteration's answers move from the previous iteration's positives). Pure functions.
#pragma once

#include <cstdint>
#include <vector>

namespace dnpo::selfplay {

using TokenIds = std::vector<std::int64_t>;

/// Corpus BLEU (Papineni et al. 2002): clipped n-gram precisions for n = 1..max_n summed over the
/// corpus, their geometric mean, times the brevity penalty exp(1 − r/c) when the hypotheses are
/// shorter (c < r). 0 when any precision is 0 (no smoothing). hypotheses[i] pairs with
/// references[i]; both lists must have the same length.
double corpus_bleu(const std::vector<TokenIds>& hypotheses,
                   const std::vector<TokenIds>& references,
                   int max_n = 4);

/// ROUGE-L F1 of one pair: LCS / |hypothesis| and LCS / |reference| combined harmonically
/// (0 when either is empty).
double rouge_l_f1(const TokenIds& hypothesis, const TokenIds& reference);

/// The mean of rouge_l_f1 over the pairs.
double mean_rouge_l(const std::vector<TokenIds>& hypotheses,
                    const std::vector<TokenIds>& references);

}  // namespace dnpo::selfplay
