// One plain struct per TOML table ([run], [model], ... ), with defaults and units.
// Every module takes only the structs it needs; only src/config/ knows TOML.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dnpo::config {

/// [run] — where a job writes and how it runs.
struct RunSection {
  std::string name = "demo";            ///< run name; the run directory is out_dir/name
  std::string out_dir = "checkpoints";  ///< parent of run directories
  std::uint64_t seed = 1234;            ///< root of every counter-based random draw
  int threads = 0;                 ///< intra-op threads per rank; 0 = all cores / ranks per node
  std::string device = "cpu";      ///< "cpu" | "cuda"
  std::string log_level = "info";  ///< trace|debug|info|warn|error
  int log_every = 10;              ///< steps between progress lines (>= 1)
  /// each training step's phases (forward, backward, optimizer, ...) timed into metrics.jsonl as
  /// ms_<phase>; on a GPU this waits for the device at every phase boundary
  bool phase_times = false;
};

/// [model] — a Llama/Mistral-style decoder; field names as in HF config.json.
struct ModelConfig {
  std::string init_from;  ///< HF directory (config.json + model.safetensors); "" = random init
  int vocab_size = 260;
  int hidden_size = 128;
  int intermediate_size = 352;
  int num_hidden_layers = 4;
  int num_attention_heads = 4;
  int num_key_value_heads = 4;  ///< < heads: grouped-query attention
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int max_position_embeddings = 256;
  bool tie_word_embeddings = true;
  double initializer_range = 0.02;  ///< std of the random init
};

/// [tokenizer]
struct TokenizerConfig {
  std::string kind = "byte";  ///< "byte" | "sentencepiece"
  std::string path;           ///< tokenizer.model for sentencepiece
};

/// [chat] — one template for training and generation. "{prompt}" is the user's text; "{eos}"
/// inserts the EOS token (Zephyr writes "</s>" there). The response is the answer then EOS.
struct ChatConfig {
  std::string prompt_template = "<|user|>\n{prompt}{eos}\n<|assistant|>\n";
  bool add_bos = true;
};

/// [data] — JSONL inputs (formats: README, "Configuration").
struct DataConfig {
  std::string train_file;  ///< SFT: {"id","prompt","answer"} or {"messages":[...]}
  std::string eval_file;   ///< held-out prompts (+ "task"/"truth" on the demo world)
  std::string pairs_file;  ///< preference pairs {"id","prompt","chosen","rejected"}
  int max_length = 1024;   ///< prompt + response tokens; longer samples are truncated (counted)
  int max_prompt_length = 512;
};

/// [demo] — the synthetic task world (data/demo_world).
struct DemoConfig {
  std::uint64_t seed = 7;
  int train_size = 20000;
  int eval_size = 500;
  double noise_rate = 0.3;  ///< share of "human" answers made plausibly wrong
  std::vector<std::string> tasks = {"add", "reverse", "sort"};
  int add_digits = 3;
  int string_length = 6;  ///< letters for reverse, digits for sort (upper bound)
};

/// [train] — optimisation loop of sft and preference training.
struct TrainConfig {
  std::string loss = "sft";   ///< "sft" | "spin" | "npo"
  int batch_size = 64;        ///< global batch (samples or pairs per optimizer step)
  int micro_batch_size = 64;  ///< per rank per forward; batch = micro × world × grad_accum
  int epochs = 1;
  int max_steps = 0;                ///< 0 = epochs decide
  std::string optimizer = "adamw";  ///< "adamw" | "rmsprop" (paper)
  double lr = 1e-3;
  double min_lr_ratio = 0.0;           ///< linear decay ends at lr × this
  double warmup_ratio = 0.1;           ///< share of steps with linear warm-up
  std::string lr_schedule = "linear";  ///< "linear" | "constant"
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double eps = 1e-8;
  double rmsprop_alpha = 0.99;
  double grad_clip = 1.0;      ///< global grad-norm clip; 0 = off
  std::string dtype = "fp32";  ///< compute dtype: "fp32" | "bf16"
  /// SPIN/NPO: the frozen reference's clean log-probs of each pair are computed once (the
  /// pair's first step) and reused in later epochs; false recomputes them every epoch.
  bool reuse_reference = true;
  /// SPIN/NPO: a pair's chosen and rejected side by side in one row, several pairs to a row of
  /// at most pack_length tokens, and a step's micro-batches balanced in tokens; false pads every
  /// sequence of a micro-batch to its longest.
  bool pack_pairs = true;
  int pack_length = 0;  ///< tokens of a packed row; 0 = 2 × data.max_length (any pair fits)
  std::uint64_t iteration = 0;  ///< self-play iteration (keys the random draws)
};

/// [loss]
struct LossConfig {
  double beta = 0.1;  ///< β of the sigmoid preference loss (the paper's λ)
};

/// [npo] — noise preference optimisation (docs/algorithm.md).
struct NpoConfig {
  std::string head = "ln_gelu_linear";  ///< "ln_gelu_linear" (authors' runs) | "linear" (paper)
  double scale = 1.0;                   ///< c in s = c·exp(f(h))
  std::string penalty = "mean";         ///< "mean" (authors) | "mean_sq" (paper)
  double alpha = 1.0;                   ///< penalty weight
  std::string penalty_positions = "response";  ///< "response" | "all"
  double max_sigma = 0.0;                      ///< clamp s <= max_sigma; 0 = off
  bool fixed_noise = false;                    ///< ablation: s ≡ fixed_sigma, no head
  double fixed_sigma = 0.5;
  bool fresh_head_each_iteration = true;
  /// "torch_linear": the projection's weight and bias uniform in ±1/√hidden, as PyTorch's
  /// nn.Linear (the authors' head; s starts near c at any width) | "normal": weight
  /// normal(0, head_init_std), bias zero.
  std::string head_init = "torch_linear";
  double head_init_std = 0.02;  ///< head_init = "normal" only
  int chunk_positions =
      64;  ///< noisy log-softmax rows per chunk: transient memory ~5 × chunk × V floats
};

/// [dsl] — dynamic sample labeling.
struct DslConfig {
  double threshold = 0.0;  ///< generated is positive when s' − s >= threshold
};

/// [selfplay] — the self-improvement loop (docs/selfplay.md): model_0 (SFT), SPIN iteration 0,
/// then `iterations` iterations of generate → judge → label → train.
struct SelfplayConfig {
  /// What iterations ≥ 1 do (iteration 0 is always SPIN): "spin" (human positive, SPIN loss),
  /// "dsl" (judge labels, SPIN loss), "npo" (human positive, NPO loss), "dnpo" (judge labels, NPO
  /// loss), "fixed_noise" (dnpo with s ≡ npo.fixed_sigma).
  std::string mode = "dnpo";
  int iterations = 3;  ///< iterations after the SPIN warm-up (the paper's T)
  int prompts = 0;     ///< first N prompts of data.train_file, the same every iteration; 0 = all
  bool sft = true;     ///< train model_0 by SFT on data.train_file; false = model.init_from is it
  double lr = 1e-5;    ///< peak learning rate of every self-play iteration (train.lr is SFT's)
  int epochs = 1;      ///< epochs over an iteration's pairs (the paper's E)
  bool eval_each_iteration = true;  ///< held-out accuracy and judge score after each iteration
  /// How generation holds the policy: "whole" (every rank gathers all of it once per iteration;
  /// fastest, needs the model to fit one rank) | "per_layer" (each layer gathered as it computes,
  /// the next prefetched, ranks decoding in lockstep; for models that do not fit one rank).
  std::string generation = "whole";
  /// The first iteration that runs `mode`; the ones before it are SPIN iterations (1: only the
  /// warm-up). The paper's ablations take one iteration t of an arm off SPIN's chain: resume
  /// SPIN's checkpoint after iteration t-1 with mode_from = iterations = t.
  int mode_from = 1;
  /// Prompts per generation round on a rank: a round's answers go to the judge together and a
  /// checkpoint may follow it (a resumed run regenerates only the rounds not done). 0 = 4 ×
  /// sample.batch_size with continuous batching (so a row that ends takes a waiting prompt), one
  /// batch with static batching. Generation "per_layer" always uses one batch.
  int round_prompts = 0;
};
/// [sample] — generation.
struct SampleConfig {
  double temperature = 1.0;  ///< 0 = greedy
  double top_p = 1.0;
  int top_k = 0;  ///< 0 = off
  int max_new_tokens = 32;
  int batch_size = 64;
  /// The projection matrices' dtype while generating (self-play and `dnpo_dist generate`):
  /// "fp32", or "bf16" (half the bytes a decode step reads; activations and the KV cache stay
  /// fp32). Evaluation always decodes in fp32, so its scores compare across runs.
  std::string dtype = "fp32";
  /// "continuous": a row whose answer ends takes the next waiting prompt at once (its prompt
  /// prefilled alone and written into the batch's KV cache), so a batch does not run until its
  /// longest answer ends; "static": each batch of prompts runs until its last answer ends. The
  /// answers are the same (draws keyed per prompt and token) up to float rounding.
  /// selfplay.generation = "per_layer" (ranks decoding in lockstep) is always static.
  std::string batching = "continuous";
  /// Continuous batching: free rows wait until this many are free (or every waiting prompt has
  /// one) before they take prompts, in one prefill. Each refill is a forward of its own: on a
  /// CPU a step costs its rows, so 1 (refill at once) is fastest; on a GPU a forward costs about
  /// the same with fewer rows, and fewer, larger refills can save more than the idle rows cost.
  int refill_rows = 1;
};

/// [eval]
struct EvalConfig {
  int max_prompts = 0;     ///< 0 = the whole eval file
  bool greedy_too = true;  ///< also report greedy accuracy next to sampled
};

/// [dist] — processes and collectives (MPI launch, c10d store and process group).
struct DistConfig {
  std::string backend = "auto";  ///< "auto" (gloo on CPU, nccl on CUDA) | "gloo" | "nccl"
  std::string
      host;  ///< address of rank 0's store; "" = 127.0.0.1 on one node, else rank 0's hostname
  std::string interface;   ///< network interface Gloo binds (e.g. "eth0"); "" = by host
  int port = 0;            ///< store port on rank 0; 0 = any free port (sent to the ranks over MPI)
  double timeout_s = 300;  ///< every collective and store operation; a stuck peer ends the job
  /// How Gloo (which lacks reduce_scatter) emulates it: "allreduce" (all-reduce + own slice),
  /// "reduce" (one reduce per owner slice), "mpi" (MPI_Ireduce_scatter_block on host memory),
  /// "ring" (a ring over MPI point-to-point; one block of temporary memory, synchronous).
  std::string reduce_scatter = "ring";  // the fewest bytes and temporaries, no root rank
  /// All-gather: "gloo" (asynchronous, on Gloo's threads) or "ring" (MPI point-to-point ring into
  /// the buffer in place; synchronous, no temporary).
  std::string all_gather = "ring";  // in place: no temporary, (w − 1)/w of the buffer per rank
  /// Start the next FSDP unit's all-gather while the current unit computes (forward and backward).
  bool prefetch = true;
  /// "true" (ZeRO-3): a unit's gathered parameters go after its forward; backward gathers them
  /// again and recomputes the unit's activations. "false": each unit stays gathered, with its
  /// activations, from the step's first forward to its last backward: one all-gather per unit
  /// per step and no recompute, at the memory of the whole model in train.dtype plus a
  /// micro-batch's activations per rank (gradients and optimizer state stay sharded). "auto":
  /// "false" when that memory (estimated, and logged at the start of each stage) fits
  /// keep_gathered_budget_gb, else "true". A TOML boolean is taken as "true" / "false".
  std::string reshard_after_forward = "auto";
  /// GiB per rank that "auto" may spend on keeping units gathered; 0 = half of the memory
  /// available when the stage starts (on the CPU the node's, shared by its ranks; on a GPU
  /// "auto" reshards unless a budget is set).
  double keep_gathered_budget_gb = 0.0;
  /// dtype gradients are summed over ranks in: "fp32" (accurate; the only one Gloo can sum) or
  /// "bf16" (half the bytes; NCCL, run.device = "cuda", only). Masters and optimizer stay fp32.
  std::string reduce_dtype = "fp32";
};

/// [checkpoint] — saving and resuming (docs/checkpoints.md). Each training stage also saves
/// when it ends (kept, never pruned), and on SIGUSR1 / SIGTERM at the next step boundary.
struct CheckpointConfig {
  std::string dir;              ///< "" = <run dir>/checkpoints
  int every_steps = 0;          ///< save every N optimizer steps; 0 = off
  double every_minutes = 30;    ///< save when this long has passed since the last save; 0 = off
  int keep_last = 3;            ///< periodic checkpoints kept besides the stages' final ones
  std::string resume = "none";  ///< "none" | "auto" (newest valid in dir) | a checkpoint file
};

/// [judge] — the judge that scores answers (docs/judge.md).
struct JudgeConfig {
  std::string backend = "rule";  ///< "rule" (in-process verifier) | "http" (OpenAI-compatible)
  std::string base_url = "http://127.0.0.1:8000";  ///< POSTs go to {base_url}/v1/chat/completions
  std::string ca_file;     ///< https: PEM file of the CA(s) to trust; "" = the system's CAs
  bool tls_verify = true;  ///< https: verify the server's certificate and name (off: testing only)
  std::string model = "rule";  ///< the requests' "model"; part of the cache key
  std::string prompt_template = "configs/judge/default_0_100.txt";  ///< key "template"
  std::string api_key_env;         ///< environment variable holding the API key; "" = no key
  int concurrency = 16;            ///< requests in flight at once, job-wide (ranks share it)
  double requests_per_minute = 0;  ///< attempts started per minute, job-wide, retries included;
                                   ///< 0 = no limit
  double timeout_s = 60;           ///< deadline of one attempt (connect, send, reply)
  int max_retries = 5;             ///< retries after the first attempt
  double backoff_base_s = 0.5;     ///< first retry waits in [base/2, base]; doubles per retry
  double backoff_max_s = 30;       ///< cap on one backoff delay (Retry-After may exceed it)
  std::string failure_policy =
      "spin";               ///< retries exhausted: "spin" (SPIN label) | "drop" | "fail"
  double imperfection = 0;  ///< rule judge: fraction of scores perturbed (a real judge errs)
  std::uint64_t seed = 0;   ///< keys the retry jitter and the rule judge's perturbations
  double temperature = 0;   ///< sampling temperature asked of the judge model
  int max_tokens = 512;     ///< reply length asked of the judge model
  std::string cache_file;   ///< "" = no cache file; else loaded at start, saved at the end
};

/// The whole resolved configuration of a job.
struct RunConfig {
  RunSection run;
  ModelConfig model;
  TokenizerConfig tokenizer;
  ChatConfig chat;
  DataConfig data;
  DemoConfig demo;
  TrainConfig train;
  LossConfig loss;
  NpoConfig npo;
  DslConfig dsl;
  SelfplayConfig selfplay;
  SampleConfig sample;
  EvalConfig eval;
  DistConfig dist;
  CheckpointConfig checkpoint;
  JudgeConfig judge;
};

}  // namespace dnpo::config
