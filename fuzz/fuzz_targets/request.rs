//! OpenAI request bodies through the server's parsing and validation (what the completion
//! and chat routes do before a request reaches the scheduler). Every refusal is an OpenAI
//! error with a message; every accepted request gives sane generation options.
#![no_main]
use bitnet_server::error::ApiError;
use bitnet_server::request::{parse_body, ChatRequest, CompletionRequest, Prompt, Route};
use libfuzzer_sys::fuzz_target;

const CTX: usize = 64;

fn refused(e: ApiError) {
    let body = e.body();
    let msg = body["error"]["message"].as_str().expect("an OpenAI error body");
    assert!(!msg.is_empty());
}

fn options(s: &bitnet_server::request::Sampling, prompt_len: usize) {
    match s.options(prompt_len, CTX) {
        Ok(o) => {
            assert!(o.max_tokens <= CTX - prompt_len);
            assert!(o.stop.len() <= 4);
        }
        Err(e) => refused(e),
    }
    let _ = s.stream();
}

fuzz_target!(|data: &[u8]| {
    match parse_body::<CompletionRequest>(data, Some(Route::Completion)) {
        Ok(r) => match r.prompts() {
            Ok(ps) => {
                assert!(!ps.is_empty() && ps.len() <= 16);
                for p in ps {
                    let n = match p {
                        Prompt::Text(p) => p.len(),
                        Prompt::Tokens(t) => t.len(),
                    };
                    options(&r.sampling, n.min(CTX));
                }
            }
            Err(e) => refused(e),
        },
        Err(e) => refused(e),
    }
    match parse_body::<ChatRequest>(data, Some(Route::Chat)) {
        Ok(r) => match r.messages() {
            Ok(m) => options(&r.sampling, m.len().min(CTX)),
            Err(e) => refused(e),
        },
        Err(e) => refused(e),
    }
    for r in [
        parse_body::<CompletionRequest>(data, Some(Route::Completion)).map(|r| r.logprobs()),
        parse_body::<ChatRequest>(data, Some(Route::Chat)).map(|r| r.logprobs()),
    ] {
        match r {
            Ok(Ok(Some(n))) => assert!(n <= 20),
            Ok(Err(e)) | Err(e) => refused(e),
            Ok(Ok(None)) => {}
        }
    }
});
