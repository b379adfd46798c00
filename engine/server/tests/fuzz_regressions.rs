//! Inputs with which the fuzzer found a fault in the server's parsers, replayed as their fuzz
//! targets run them (`fuzz/regressions/<target>/`): each now ends in a typed error.

use bitnet_server::chat::{ChatTemplate, Message, RenderLimits};
use std::path::Path;

/// What `fuzz/src/lib.rs` splits multi-part inputs at.
const SPLIT: &[u8] = b"\n\x00--split--\x00\n";

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no regression inputs in {}", dir.display());
    v
}

/// As `fuzz_targets/chat_template.rs`: template, then `role \x02 content` messages split by
/// `\x01`; rendered in this process with a small budget.
#[test]
fn chat_template_regressions_render_or_fail_typed() {
    for (name, data) in inputs("chat_template") {
        let cut = data.windows(SPLIT.len()).position(|w| w == SPLIT);
        let (src, rest) = match cut {
            Some(i) => (&data[..i], &data[i + SPLIT.len()..]),
            None => (&data[..], &[][..]),
        };
        let Ok(src) = std::str::from_utf8(src) else {
            continue;
        };
        let messages: Vec<Message> = String::from_utf8_lossy(rest)
            .split('\u{1}')
            .map(|m| {
                let (role, content) = m.split_once('\u{2}').unwrap_or(("user", m));
                Message {
                    role: role.into(),
                    content: content.into(),
                }
            })
            .collect();
        let Ok(t) = ChatTemplate::new("fuzz", src, "<s>", "</s>") else {
            continue;
        };
        let t = t.with_limits(RenderLimits {
            fuel: 20_000,
            max_output: 1 << 16,
        });
        match t.render(&messages) {
            Ok(p) => assert!(p.len() <= 1 << 16, "{name}"),
            Err(e) => println!("{name}: {e}"),
        }
    }
}
