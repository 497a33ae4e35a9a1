//! `gpu-sizing`: GPU memory for a model served by vLLM, and the cheapest AWS GPU instances
//! that hold it. See the crate docs for the formula.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gpu_sizing::{ModelSpec, Workload, gguf::GgufModel, recommend};

/// GPU memory for a model served by vLLM: weights + KV cache + overhead → the cheapest fitting
/// AWS GPU instance types, the vLLM flags and the Karpenter NodePool requirements.
#[derive(Parser, Debug)]
#[command(name = "gpu-sizing")]
struct Cli {
    /// A Hugging Face `config.json`.
    #[arg(long, conflicts_with = "gguf", required_unless_present_any = ["gguf", "weights_gb"])]
    config: Option<PathBuf>,
    /// A GGUF model file (only its header is read).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Weights of this many GB (10^9 bytes) instead of a model file, with --layers,
    /// --kv-heads and --head-dim (the talk's "a 40 GB model").
    #[arg(long, requires_all = ["layers", "kv_heads", "head_dim"])]
    weights_gb: Option<f64>,
    /// Layers (with --weights-gb).
    #[arg(long)]
    layers: Option<u64>,
    /// Key/value heads (with --weights-gb).
    #[arg(long)]
    kv_heads: Option<u64>,
    /// Dimension of one head (with --weights-gb).
    #[arg(long)]
    head_dim: Option<u64>,
    /// Tokens of one sequence (`--max-model-len`).
    #[arg(long, default_value_t = 8192)]
    context: u64,
    /// Sequences at full length at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// FP8 KV cache (`--kv-cache-dtype fp8`): half the KV memory.
    #[arg(long)]
    kv_fp8: bool,
    /// vLLM's `--gpu-memory-utilization`.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Print the recommendation as JSON.
    #[arg(long)]
    json: bool,
}

fn model(cli: &Cli) -> Result<ModelSpec, String> {
    if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        return ModelSpec::from_hf_config(&name, &config).map_err(|e| e.to_string());
    }
    if let Some(path) = &cli.gguf {
        let model = GgufModel::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(ModelSpec::from_gguf(&model));
    }
    match (cli.weights_gb, cli.layers, cli.kv_heads, cli.head_dim) {
        (Some(gb), Some(layers), Some(kv_heads), Some(head_dim)) if gb > 0.0 => Ok(ModelSpec {
            name: format!("{gb} GB model"),
            params: 0.0,
            weight_bytes: gb * 1e9,
            layers,
            heads: kv_heads,
            kv_heads,
            head_dim,
            max_context: None,
            weight_format: "as given".into(),
        }),
        _ => Err(
            "give --config, --gguf, or --weights-gb with --layers, --kv-heads and --head-dim"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workload = Workload {
        context: cli.context,
        concurrency: cli.concurrency,
        kv_bytes: if cli.kv_fp8 { 1.0 } else { 2.0 },
        gpu_memory_utilization: cli.gpu_memory_utilization,
    };
    let r = match model(&cli).and_then(|m| recommend(m, workload).map_err(|e| e.to_string())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&r) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let m = &r.model;
    println!(
        "{}: {} layers, {} KV heads x {} dims, {}{}",
        m.name,
        m.layers,
        m.kv_heads,
        m.head_dim,
        m.weight_format,
        if m.params > 0.0 {
            format!(", {:.2} B parameters", m.params / 1e9)
        } else {
            String::new()
        }
    );
    println!(
        "  weights     {:>8.1} GiB\n  KV cache    {:>8.1} GiB  ({} tokens x {} sequences, {:.0} KiB/token)\n  overhead    {:>8.1} GiB\n  total       {:>8.1} GiB  -> {:.1} GiB of GPU memory at --gpu-memory-utilization {}",
        r.weights_gib,
        r.kv_cache_gib,
        r.workload.context,
        r.workload.concurrency,
        m.kv_bytes_per_token(r.workload.kv_bytes) / 1024.0,
        r.overhead_gib,
        r.total_gib,
        r.gpu_memory_needed_gib,
        r.workload.gpu_memory_utilization
    );
    if r.fits.is_empty() {
        println!(
            "\nno instance type in the table fits: quantise, shorten the context or serve fewer sequences"
        );
        return ExitCode::FAILURE;
    }
    println!(
        "\ninstance types that fit, cheapest first (on-demand us-east-1, list prices as of {}):",
        r.prices_as_of
    );
    for f in r.fits.iter().take(8) {
        println!(
            "  {:<18} {:>5} x {:<9} {:>5.0} GiB  TP={}  {:>5.1} GiB/GPU  ${:.2}/h",
            f.instance.name,
            f.instance.gpus,
            f.instance.gpu,
            f.instance.gpu_memory_gib,
            f.tensor_parallel,
            f.per_gpu_gib,
            f.instance.usd_per_hour
        );
    }
    println!("\nvLLM:  {}", r.vllm_args.join(" "));
    println!(
        "Karpenter NodePool requirements:\n  - {{key: karpenter.k8s.aws/instance-family, operator: In, values: [{}]}}\n  - {{key: karpenter.k8s.aws/instance-gpu-count, operator: Gt, values: [\"{}\"]}}\nEKS Auto Mode: the same with eks.amazonaws.com/instance-family and eks.amazonaws.com/instance-gpu-count\nPod: resources.limits nvidia.com/gpu: {}",
        r.families.join(", "),
        r.gpus.saturating_sub(1),
        r.gpus
    );
    ExitCode::SUCCESS
}
