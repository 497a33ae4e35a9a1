//! The sizing tool against known numbers: the talk's 40 GB example, Llama-3-8B against vLLM's
//! KV formula, and the real GGUF the project downloads (scripts/local-model.sh).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use gpu_sizing::{GIB, ModelSpec, Workload, gguf::GgufModel, recommend};
use serde_json::{Value, json};

fn workload(context: u64, concurrency: u64) -> Workload {
    Workload {
        context,
        concurrency,
        kv_bytes: 2.0,
        gpu_memory_utilization: 0.9,
    }
}

/// A model given by its sizes: `weights_gb` of weights, 48 layers, 8 KV heads of 128.
fn synthetic<'a>(weights_gb: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--weights-gb",
        weights_gb,
        "--layers",
        "48",
        "--kv-heads",
        "8",
        "--head-dim",
        "128",
    ];
    args.extend_from_slice(more);
    args
}

fn run(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-sizing"))
        .args(args)
        .output()
        .expect("run gpu-sizing");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// "A 40 GB model plus its KV cache needs about 45 GB": with a 16k context on a 48-layer,
/// 8-KV-head model. One L40S (45.0 GiB as CUDA sees it) holds it only when vLLM may take 95 %
/// of it; at 90 % the cheapest fit is four L4s, and a 24 GB GPU holds it only split four ways.
#[test]
fn the_talk_s_forty_gigabyte_model() {
    let talk = synthetic("40", &["--context", "16384", "--json"]);
    let (code, r, text) = run(&talk);
    assert_eq!(code, 0, "{text}");
    let total_gb = r["total_gib"].as_f64().unwrap() * GIB / 1e9;
    assert!((44.0..46.0).contains(&total_gb), "{total_gb} GB");
    assert_eq!(
        r["kv_cache_gib"].as_f64().unwrap(),
        3.0,
        "2 x 48 x 8 x 128 x 2 B x 16,384"
    );
    assert!(
        r["gpu_memory_needed_gib"].as_f64().unwrap() > 44.99,
        "{text}"
    );
    assert_eq!(r["fits"][0]["instance"]["name"], "g6.12xlarge", "{text}");
    assert_eq!(r["fits"][0]["tensor_parallel"], 4);
    let names: Vec<&str> = r["fits"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["instance"]["name"].as_str())
        .collect();
    assert!(!names.contains(&"g6e.xlarge"), "{text}");
    let a10g = r["fits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["instance"]["name"] == "g5.12xlarge")
        .expect("g5.12xlarge fits with TP");
    assert_eq!(a10g["tensor_parallel"], 4);
    assert!(
        r["vllm_args"]
            .as_array()
            .unwrap()
            .contains(&json!("--tensor-parallel-size=4"))
    );

    let (code, r95, text) = run(&[&talk[..], &["--gpu-memory-utilization", "0.95"]].concat());
    assert_eq!(code, 0, "{text}");
    assert_eq!(r95["fits"][0]["instance"]["name"], "g6e.xlarge", "{text}");
    assert_eq!(r95["fits"][0]["tensor_parallel"], 1);
    assert_eq!(r95["families"][0], "g6e");
}

/// Llama-3-8B's config.json: 8.03 B parameters, 16 GB of bf16 weights, and vLLM's KV formula
/// (2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token).
#[test]
fn llama_3_8b_matches_vllm_s_kv_formula() {
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
        "tie_word_embeddings": false
    });
    let model = ModelSpec::from_hf_config("Meta-Llama-3-8B", &config).unwrap();
    assert!((model.params / 1e9 - 8.03).abs() < 0.01, "{}", model.params);
    assert!((model.weight_bytes / 1e9 - 16.06).abs() < 0.02);
    assert_eq!(model.kv_bytes_per_token(2.0), 131_072.0);
    let r = recommend(model.clone(), workload(8192, 1)).unwrap();
    assert_eq!(r.kv_cache_gib, 1.0);
    // 16 GB of weights + 1 GiB + overhead / 0.9 is above 20 GiB: an L4 or A10G (24 GiB) holds it.
    assert_eq!(r.fits[0].instance.name, "g6.xlarge");
    // Four sequences at full length need 4 GiB of cache, and an FP8 cache halves it.
    let r4 = recommend(model.clone(), workload(8192, 4)).unwrap();
    assert_eq!(r4.kv_cache_gib, 4.0);
    let fp8 = recommend(
        model.clone(),
        Workload {
            kv_bytes: 1.0,
            ..workload(8192, 4)
        },
    )
    .unwrap();
    assert_eq!(fp8.kv_cache_gib, 2.0);
    assert!(fp8.vllm_args.contains(&"--kv-cache-dtype=fp8".to_owned()));
    // Beyond the model's trained context: refused.
    assert!(recommend(model, workload(32768, 1)).is_err());
}

/// The deployment's model, Qwen3-8B (its config.json is kept in the deploy directory): the
/// manifests' vLLM flags come from this output.
#[test]
fn qwen3_8b_for_the_deployment() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../travel-agent/deploy/model/qwen3-8b/config.json"
    );
    let (code, r, text) = run(&[
        "--config",
        config,
        "--context",
        "32768",
        "--concurrency",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        (r["model"]["params"].as_f64().unwrap() / 1e9 - 8.19).abs() < 0.02,
        "{text}"
    );
    assert_eq!(r["fits"][0]["instance"]["name"], "g6e.xlarge", "{text}");
}

/// The GGUF the project downloads (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M): sizes from its header.
#[test]
fn the_project_s_real_gguf() {
    let path = std::env::var("AGENT_LOCAL_MODEL_GGUF").unwrap_or_else(|_| {
        panic!(
            "AGENT_LOCAL_MODEL_GGUF is not set: run scripts/test.sh, or export \
             AGENT_LOCAL_MODEL_GGUF=$(scripts/local-model.sh model)"
        )
    });
    let model = GgufModel::read(std::path::Path::new(&path)).expect("the header");
    assert_eq!(model.architecture, "qwen2");
    assert_eq!(
        (model.layers, model.heads, model.kv_heads, model.head_dim),
        (28, 12, 2, 128)
    );
    assert_eq!(model.context_length, Some(32768));
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(
        model.weight_bytes < file && model.weight_bytes > file * 9 / 10,
        "{} of {file}",
        model.weight_bytes
    );
    let (code, r, text) = run(&["--gguf", &path, "--context", "32768", "--json"]);
    assert_eq!(code, 0, "{text}");
    // 2 x 28 x 2 x 128 x 2 B = 28 KiB per token: 0.875 GiB for 32k tokens.
    assert_eq!(r["kv_cache_gib"].as_f64().unwrap(), 0.875);
    assert_eq!(
        r["fits"][0]["instance"]["family"], "g6f",
        "a fraction of an L4 is enough: {text}"
    );
}

/// Bad input is a clear error and exit code 2, never a panic.
#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let (code, _, text) = run(&["--gguf", junk.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a GGUF file"), "{text}");
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"hidden_size": 4096}"#).unwrap();
    let (code, _, text) = run(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("num_hidden_layers"), "{text}");
    let (code, _, text) = run(&synthetic("40", &["--gpu-memory-utilization", "1.5"]));
    assert_eq!(code, 2);
    assert!(text.contains("between 0.1 and 0.99"), "{text}");
    // Nothing fits: a model beyond every GPU in the table.
    let (code, _, text) = run(&synthetic("4000", &[]));
    assert_eq!(code, 1);
    assert!(text.contains("no instance type"), "{text}");
}
