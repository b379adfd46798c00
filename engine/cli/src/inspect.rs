//! `bitnet inspect`: what a file is (header, metadata, tensors) and, unless `--gguf-only`,
//! what the engine makes of it (config, tokenizer, chat template, kernels per tensor).

use bitnet::error::Result;
use bitnet::gguf::Gguf;
use bitnet::model::Model;
use bitnet::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

pub(crate) fn inspect(path: &Path, gguf_only: bool, full: bool, pre: Option<&str>) -> Result<()> {
    let g = Arc::new(Gguf::open(path)?);
    let size = g.bytes().len();
    println!(
        "file: {} ({size} bytes), GGUF v{}, alignment {}",
        path.display(),
        g.version,
        g.alignment
    );
    println!("metadata ({} keys):", g.metadata().len());
    for (k, v) in g.metadata() {
        match v {
            bitnet::gguf::Value::Array(_, items) if full => {
                println!(
                    "  {k} = [{}]",
                    items
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            _ => println!("  {k} = {v}"),
        }
    }
    println!("tensors ({}):", g.tensors().len());
    println!(
        "  {:<32} {:<6} {:>22} {:>12} {:>12}",
        "name", "type", "shape", "offset", "bytes"
    );
    for t in g.tensors() {
        let shape = format!("{:?}", t.dims);
        println!(
            "  {:<32} {:<6} {:>22} {:>12} {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.offset,
            t.size
        );
    }
    if gguf_only {
        println!("verdict: valid GGUF container");
        return Ok(());
    }
    let tok = Tokenizer::from_gguf_with(&g, pre)?;
    let g_template = g.get_str("tokenizer.chat_template")?.map(str::to_string);
    let model = Model::from_gguf(g)?;
    let c = &model.config;
    // What was inferred rather than read, and why.
    match tok.pre_tokenizer() {
        Some((p, bitnet::tokenizer::PreSource::Key)) => {
            println!("pre-tokenizer: {p} (tokenizer.ggml.pre)")
        }
        Some((p, bitnet::tokenizer::PreSource::Override)) => {
            println!("pre-tokenizer: {p} (--tokenizer-pre)")
        }
        Some((p, bitnet::tokenizer::PreSource::Fingerprint(fp))) => println!(
            "pre-tokenizer: {p} (inferred: the file has no tokenizer.ggml.pre; the vocabulary's fingerprint {fp} is a known {p} vocabulary)"
        ),
        None => {}
    }
    let template = g_template.as_deref();
    println!(
        "chat template: {}",
        match template {
            Some(t) if bitnet_server::chat::is_bitnet_placeholder(t) => "BitNet's converter placeholder (Human:/BITNETAssistant:), not the trained format: `bitnet serve` uses the built-in `bitnet` (Role: content<|eot_id|> turns) instead",
            Some(_) => "the file's tokenizer.chat_template (Jinja)",
            None => "none in the file (`bitnet serve` defaults to chatml)",
        }
    );
    println!(
        "output head: {}",
        if model.tied_output {
            "tied to token_embd (the file has no output.weight)"
        } else {
            "output.weight"
        }
    );
    println!(
        "verdict: loadable {} model: {} layers, hidden {}, heads {}/{} kv, FFN {} ({}), vocab {} ({} tokenizer), context {}, {} output",
        c.arch,
        c.n_layers,
        c.dim,
        c.n_heads,
        c.n_kv_heads,
        c.hidden_dim,
        c.activation.name(),
        c.vocab_size,
        tok.kind(),
        c.context_length,
        if model.tied_output { "tied" } else { "separate" }
    );
    Ok(())
}
