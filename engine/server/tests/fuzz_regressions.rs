//! Inputs with which the fuzzer found a fault in the server's parsers, replayed as their fuzz
//! targets run them (`fuzz/regressions/<target>/`): each now ends in a typed error.

use bitnet_server::chat::{ChatTemplate, Message, RenderLimits};

#[path = "../../core/tests/common/fuzz_inputs.rs"]
mod fuzz_inputs;
use fuzz_inputs::inputs;

/// As `fuzz_targets/chat_template.rs`: template, then `role \x02 content` messages split by
/// `\x01`; rendered in this process with a small budget.
#[test]
fn chat_template_regressions_render_or_fail_typed() {
    for (name, data) in inputs("chat_template") {
        let p = fuzz_inputs::parts(&data, 2);
        let (src, rest) = (p[0], p[1]);
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
