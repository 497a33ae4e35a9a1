//! GPU memory for a model served by vLLM, and the cheapest AWS GPU instances that hold it.
//!
//! memory = weights + KV cache + runtime overhead, where the KV cache holds
//! `context × concurrency` tokens of `2 (K and V) × layers × kv_heads × head_dim × kv_bytes`
//! each (vLLM's formula for full attention), and the runtime overhead is the CUDA context,
//! activations and CUDA graphs. vLLM takes `--gpu-memory-utilization` of each GPU for all of it,
//! so a GPU must hold `need / utilization`. With tensor parallelism over `tp` GPUs, weights and
//! KV cache are split `tp` ways and each GPU carries its own overhead.
//!
//! The model comes from its real metadata: a Hugging Face `config.json` ([`ModelSpec::from_hf_config`])
//! or a GGUF header ([`gguf::GgufModel`]).

pub mod gguf;

use serde::Serialize;
use serde_json::Value;

/// Bytes in a GiB.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Runtime overhead per GPU: CUDA context, activation peak and CUDA graphs (vLLM's profile run
/// of a model of this class measures 1 to 2 GiB).
pub const OVERHEAD_BYTES: f64 = 1.5 * GIB;

/// Why a model could not be sized.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    /// The config lacks a field the sizing needs.
    #[error("config.json has no usable `{0}`")]
    Missing(&'static str),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
    /// The GGUF header could not be read.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
}

/// What GPU memory depends on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    /// The model's name, for the report.
    pub name: String,
    /// Parameters.
    pub params: f64,
    /// Bytes of the weights as vLLM loads them.
    pub weight_bytes: f64,
    /// Transformer layers.
    pub layers: u64,
    /// Attention heads (tensor parallelism must divide them).
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Dimension of one head.
    pub head_dim: u64,
    /// The longest context the model takes, when stated.
    pub max_context: Option<u64>,
    /// The weights' format, for the report and vLLM's `--quantization`.
    pub weight_format: String,
}

fn field(config: &Value, key: &'static str) -> Result<u64, SizingError> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or(SizingError::Missing(key))
}

impl ModelSpec {
    /// From a Hugging Face `config.json` (Llama, Qwen, Mistral, Mixtral-style MoE, ...):
    /// parameters counted from the shapes (embeddings, attention, gated MLP per expert, the LM
    /// head unless tied), bytes from `torch_dtype` or `quantization_config`.
    pub fn from_hf_config(name: &str, config: &Value) -> Result<Self, SizingError> {
        let config = config.get("text_config").unwrap_or(config);
        let hidden = field(config, "hidden_size")?;
        let layers = field(config, "num_hidden_layers")?;
        let heads = field(config, "num_attention_heads")?;
        let kv_heads = field(config, "num_key_value_heads").unwrap_or(heads);
        let head_dim = field(config, "head_dim").unwrap_or(hidden / heads);
        let intermediate = field(config, "intermediate_size")?;
        let vocab = field(config, "vocab_size")?;
        let experts = config
            .get("num_local_experts")
            .or_else(|| config.get("num_experts"))
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1);
        let moe_intermediate = config
            .get("moe_intermediate_size")
            .and_then(Value::as_u64)
            .unwrap_or(intermediate);
        let tied = config
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (h, v) = (hidden as f64, vocab as f64);
        let attention =
            h * (heads * head_dim) as f64 * 2.0 + h * (kv_heads * head_dim) as f64 * 2.0;
        let mlp = if experts > 1 {
            3.0 * h * moe_intermediate as f64 * experts as f64 + h * experts as f64
        } else {
            3.0 * h * intermediate as f64
        };
        let embeddings = v * h * if tied { 1.0 } else { 2.0 };
        let linear = layers as f64 * (attention + mlp);
        let params = linear + embeddings;
        let (format, linear_bytes) = match config.get("quantization_config") {
            Some(q) => {
                let bits = q.get("bits").and_then(Value::as_u64).unwrap_or(
                    match q.get("quant_method").and_then(Value::as_str) {
                        Some("fp8") => 8,
                        _ => 4,
                    },
                );
                let method = q
                    .get("quant_method")
                    .and_then(Value::as_str)
                    .unwrap_or("quantized");
                // Group scales and zeros: about 3 % on top of the packed weights.
                (format!("{method} {bits}-bit"), bits as f64 / 8.0 * 1.03)
            }
            None => {
                let dtype = config
                    .get("torch_dtype")
                    .or_else(|| config.get("dtype"))
                    .and_then(Value::as_str)
                    .unwrap_or("bfloat16");
                let bytes = match dtype {
                    "float32" => 4.0,
                    "float8_e4m3fn" | "float8" => 1.0,
                    _ => 2.0,
                };
                (dtype.to_owned(), bytes)
            }
        };
        // Embeddings and the LM head stay in 16 bits when the linear layers are quantised.
        let embedding_bytes = linear_bytes.max(2.0);
        Ok(Self {
            name: name.to_owned(),
            params,
            weight_bytes: linear * linear_bytes + embeddings * embedding_bytes,
            layers,
            heads,
            kv_heads,
            head_dim,
            max_context: config
                .get("max_position_embeddings")
                .and_then(Value::as_u64),
            weight_format: format,
        })
    }

    /// From a GGUF header: the weights as stored in the file.
    pub fn from_gguf(model: &gguf::GgufModel) -> Self {
        Self {
            name: model
                .name
                .clone()
                .unwrap_or_else(|| model.architecture.clone()),
            params: 0.0,
            weight_bytes: model.weight_bytes as f64,
            layers: model.layers,
            heads: model.heads,
            kv_heads: model.kv_heads,
            head_dim: model.head_dim,
            max_context: model.context_length,
            weight_format: "gguf".into(),
        }
    }

    /// Bytes of KV cache per token: K and V for every layer and KV head.
    pub fn kv_bytes_per_token(&self, kv_bytes: f64) -> f64 {
        2.0 * self.layers as f64 * self.kv_heads as f64 * self.head_dim as f64 * kv_bytes
    }
}

/// What the model must serve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Workload {
    /// `--max-model-len`: tokens of one sequence, prompt and answer.
    pub context: u64,
    /// Sequences at full length at once (`--max-num-seqs` for this worst case).
    pub concurrency: u64,
    /// Bytes per KV element: 2 (bf16/fp16), 1 (`--kv-cache-dtype fp8`).
    pub kv_bytes: f64,
    /// vLLM's `--gpu-memory-utilization`.
    pub gpu_memory_utilization: f64,
}

/// An AWS GPU instance type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Instance {
    /// The type, e.g. `g6e.xlarge`.
    pub name: &'static str,
    /// Its family (Karpenter's `karpenter.k8s.aws/instance-family`).
    pub family: &'static str,
    /// The GPU.
    pub gpu: &'static str,
    /// GPUs (a fraction for G6f's partitioned L4).
    pub gpus: f64,
    /// Memory of each GPU (or of the fraction), GiB, as CUDA reports it.
    pub gpu_memory_gib: f64,
    /// vCPUs.
    pub vcpus: u32,
    /// Host memory, GiB.
    pub memory_gib: f64,
    /// On-demand price per hour in us-east-1, USD.
    pub usd_per_hour: f64,
}

/// When [`INSTANCES`] was written. Prices are AWS's public on-demand list prices for us-east-1
/// as known at that date, not fetched (this tool runs offline): check the EC2 pricing page
/// before buying, and expect Spot to be cheaper and to vary.
pub const PRICES_AS_OF: &str = "2026-11-30";

/// The GPU instance types considered, smallest of each family first. GPU memory is what CUDA
/// reports (an L40S sold as 48 GB shows 46,068 MiB = 45.0 GiB), since vLLM's utilisation is a
/// share of that.
pub const INSTANCES: &[Instance] = &[
    inst("g6f.xlarge", "g6f", "L4 (1/8)", 0.125, 2.81, 4, 16.0, 0.23),
    inst("g6f.2xlarge", "g6f", "L4 (1/4)", 0.25, 5.62, 8, 32.0, 0.44),
    inst("g6f.4xlarge", "g6f", "L4 (1/2)", 0.5, 11.25, 16, 64.0, 0.88),
    inst("g6.xlarge", "g6", "L4", 1.0, 22.49, 4, 16.0, 0.8048),
    inst("g6.2xlarge", "g6", "L4", 1.0, 22.49, 8, 32.0, 0.9776),
    inst("g6.12xlarge", "g6", "L4", 4.0, 22.49, 48, 192.0, 4.6016),
    inst("g6.48xlarge", "g6", "L4", 8.0, 22.49, 192, 768.0, 13.3504),
    inst("g5.xlarge", "g5", "A10G", 1.0, 22.49, 4, 16.0, 1.006),
    inst("g5.2xlarge", "g5", "A10G", 1.0, 22.49, 8, 32.0, 1.212),
    inst("g5.12xlarge", "g5", "A10G", 4.0, 22.49, 48, 192.0, 5.672),
    inst("g5.48xlarge", "g5", "A10G", 8.0, 22.49, 192, 768.0, 16.288),
    inst("g6e.xlarge", "g6e", "L40S", 1.0, 44.99, 4, 32.0, 1.861),
    inst("g6e.2xlarge", "g6e", "L40S", 1.0, 44.99, 8, 64.0, 2.24208),
    inst(
        "g6e.12xlarge",
        "g6e",
        "L40S",
        4.0,
        44.99,
        48,
        384.0,
        10.49264,
    ),
    inst(
        "g6e.48xlarge",
        "g6e",
        "L40S",
        8.0,
        44.99,
        192,
        1536.0,
        30.13118,
    ),
    inst("p5.4xlarge", "p5", "H100", 1.0, 79.65, 16, 256.0, 6.88),
    inst("p4d.24xlarge", "p4d", "A100", 8.0, 39.59, 96, 1152.0, 21.96),
    inst("p5.48xlarge", "p5", "H100", 8.0, 79.65, 192, 2048.0, 55.04),
    inst(
        "p6-b200.48xlarge",
        "p6-b200",
        "B200",
        8.0,
        179.06,
        192,
        2048.0,
        113.93,
    ),
];

#[expect(
    clippy::too_many_arguments,
    reason = "one row of the table, in its column order"
)]
const fn inst(
    name: &'static str,
    family: &'static str,
    gpu: &'static str,
    gpus: f64,
    gpu_memory_gib: f64,
    vcpus: u32,
    memory_gib: f64,
    usd_per_hour: f64,
) -> Instance {
    Instance {
        name,
        family,
        gpu,
        gpus,
        gpu_memory_gib,
        vcpus,
        memory_gib,
        usd_per_hour,
    }
}

/// What the model needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Need {
    /// The weights.
    pub weights: f64,
    /// The KV cache for the workload.
    pub kv_cache: f64,
    /// Runtime overhead (one GPU's).
    pub overhead: f64,
}

impl Need {
    /// Weights + KV cache + overhead, on one GPU.
    pub fn total(&self) -> f64 {
        self.weights + self.kv_cache + self.overhead
    }

    /// What each of `tp` GPUs must hold for vLLM at `utilization`.
    pub fn per_gpu(&self, tp: u64, utilization: f64) -> f64 {
        ((self.weights + self.kv_cache) / tp as f64 + self.overhead) / utilization
    }
}

/// The model's need for a workload.
pub fn need(model: &ModelSpec, workload: &Workload) -> Need {
    Need {
        weights: model.weight_bytes,
        kv_cache: model.kv_bytes_per_token(workload.kv_bytes)
            * workload.context as f64
            * workload.concurrency as f64,
        overhead: OVERHEAD_BYTES,
    }
}

/// One instance type that fits, and how.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    /// The instance.
    pub instance: Instance,
    /// `--tensor-parallel-size` (and the `nvidia.com/gpu` request).
    pub tensor_parallel: u64,
    /// GiB each GPU must hold.
    pub per_gpu_gib: f64,
}

/// The instance types that fit, cheapest first. Tensor parallelism is the smallest power of two
/// that fits and divides the attention heads (and the KV heads, or is divided by them); a
/// fractional GPU serves only without it.
pub fn fits(model: &ModelSpec, workload: &Workload) -> Vec<Fit> {
    let need = need(model, workload);
    let mut out: Vec<Fit> = INSTANCES
        .iter()
        .filter_map(|instance| {
            [1u64, 2, 4, 8]
                .into_iter()
                .filter(|tp| (*tp as f64) <= instance.gpus || *tp == 1)
                .filter(|tp| *tp == 1 || instance.gpus >= 1.0)
                .filter(|tp| {
                    model.heads.is_multiple_of(*tp)
                        && (model.kv_heads.is_multiple_of(*tp) || tp.is_multiple_of(model.kv_heads))
                })
                .map(|tp| (tp, need.per_gpu(tp, workload.gpu_memory_utilization)))
                .find(|(_, per_gpu)| *per_gpu <= instance.gpu_memory_gib * GIB)
                .map(|(tp, per_gpu)| Fit {
                    instance: *instance,
                    tensor_parallel: tp,
                    per_gpu_gib: per_gpu / GIB,
                })
        })
        .collect();
    out.sort_by(|a, b| a.instance.usd_per_hour.total_cmp(&b.instance.usd_per_hour));
    out
}

/// The whole recommendation, as `gpu-sizing --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// The model as sized.
    pub model: ModelSpec,
    /// The workload.
    pub workload: Workload,
    /// GiB: weights, KV cache, overhead, and their total on one GPU.
    pub weights_gib: f64,
    /// GiB of KV cache.
    pub kv_cache_gib: f64,
    /// GiB of overhead per GPU.
    pub overhead_gib: f64,
    /// GiB in all, on one GPU.
    pub total_gib: f64,
    /// GiB a single GPU must have at the utilisation.
    pub gpu_memory_needed_gib: f64,
    /// Fitting instances, cheapest first.
    pub fits: Vec<Fit>,
    /// The cheapest fit's vLLM flags.
    pub vllm_args: Vec<String>,
    /// Families whose cheapest fit costs at most twice the cheapest (the NodePool's
    /// `instance-family` values), cheapest first.
    pub families: Vec<&'static str>,
    /// GPUs per node for the cheapest fit's tensor parallelism.
    pub gpus: u64,
    /// When the price table was written.
    pub prices_as_of: &'static str,
}

/// Sizes `model` for `workload`.
pub fn recommend(model: ModelSpec, workload: Workload) -> Result<Recommendation, SizingError> {
    if !(0.1..=0.99).contains(&workload.gpu_memory_utilization) {
        return Err(SizingError::Invalid(
            "--gpu-memory-utilization must be between 0.1 and 0.99".into(),
        ));
    }
    if workload.context == 0 || workload.concurrency == 0 {
        return Err(SizingError::Invalid(
            "the context and the concurrency must be at least 1".into(),
        ));
    }
    if let Some(max) = model.max_context
        && workload.context > max
    {
        return Err(SizingError::Invalid(format!(
            "a context of {} tokens is beyond the model's {max}",
            workload.context
        )));
    }
    let n = need(&model, &workload);
    let fits = fits(&model, &workload);
    let cheapest = fits.first().copied();
    let mut families: Vec<&'static str> = Vec::new();
    for f in &fits {
        let within =
            cheapest.is_some_and(|c| f.instance.usd_per_hour <= 2.0 * c.instance.usd_per_hour);
        if within && !families.contains(&f.instance.family) {
            families.push(f.instance.family);
        }
    }
    let mut vllm_args = vec![
        format!("--max-model-len={}", workload.context),
        format!(
            "--gpu-memory-utilization={}",
            workload.gpu_memory_utilization
        ),
        format!("--max-num-seqs={}", workload.concurrency.max(1)),
    ];
    if let Some(c) = cheapest {
        vllm_args.push(format!("--tensor-parallel-size={}", c.tensor_parallel));
    }
    if workload.kv_bytes < 2.0 {
        vllm_args.push("--kv-cache-dtype=fp8".into());
    }
    Ok(Recommendation {
        weights_gib: n.weights / GIB,
        kv_cache_gib: n.kv_cache / GIB,
        overhead_gib: n.overhead / GIB,
        total_gib: n.total() / GIB,
        gpu_memory_needed_gib: n.per_gpu(1, workload.gpu_memory_utilization) / GIB,
        gpus: cheapest.map_or(0, |c| c.tensor_parallel),
        fits,
        vllm_args,
        families,
        prices_as_of: PRICES_AS_OF,
        model,
        workload,
    })
}
