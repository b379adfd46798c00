//! The library on its own: load a GGUF model, generate from a prompt with a seed, and print
//! the text and the run's receipt (what ran, on what, with what result), through the public
//! API alone.
//!
//! ```sh
//! cargo run --release -p bitnet --example generate -- MODEL.gguf "Once upon a time" [SEED]
//! ```
//!
//! The same seed gives the same text on any machine, thread count or instruction set.

use bitnet::generate::{generate, GenerateOptions};
use bitnet::model::Model;
use bitnet::receipt::{self, Receipt};
use bitnet::sample::SamplerParams;
use bitnet::session::Session;
use bitnet::tokenizer::Tokenizer;
use std::path::Path;
use std::time::Instant;

/// Generates up to `max_tokens` after `prompt` and returns the text with its receipt.
pub fn run(
    model_path: &Path,
    prompt: &str,
    seed: u64,
    max_tokens: usize,
) -> Result<(String, Receipt), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let model = Model::load(model_path)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tok = Tokenizer::from_gguf(&model.file)?;
    let mut session = Session::new(&model);
    let opts = GenerateOptions {
        max_tokens,
        sampler: SamplerParams {
            temperature: 0.8,
            seed,
            ..SamplerParams::default()
        },
        stop: vec![],
        ignore_eos: false,
    };
    let ids = tok.encode(prompt, true, false);
    let g = generate(&mut session, &tok, &ids, &opts, &mut |_| true)?;
    let mut r = receipt::for_generation(&session, model_path, &opts, prompt, &g, load_ms)?;
    r.seal();
    Ok((g.text, r))
}

#[allow(dead_code)] // compiled into a test too, which calls `run` only
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(prompt)) = (args.first(), args.get(1)) else {
        eprintln!("usage: generate MODEL.gguf PROMPT [SEED]");
        std::process::exit(2);
    };
    let seed = match args.get(2) {
        Some(s) => s.parse()?,
        None => 42,
    };
    let (text, receipt) = run(Path::new(model), prompt, seed, 64)?;
    println!("{prompt}{text}");
    println!("{}", serde_json::to_string_pretty(&receipt.to_json())?);
    Ok(())
}
