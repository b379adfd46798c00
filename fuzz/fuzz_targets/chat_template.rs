//! Chat-template compilation and rendering: part 1 of the input is the template, part 2 the
//! messages (`role \x02 content`, separated by `\x01`). Rendering stays within its budget:
//! an error or a prompt no longer than the output cap, never a panic, a hang or a blow-up.
#![no_main]
use bitnet_fuzz::parts;
use bitnet_server::chat::{ChatTemplate, Message, RenderLimits};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let p = parts(data, 2);
    let Ok(source) = std::str::from_utf8(p[0]) else {
        return;
    };
    let text = String::from_utf8_lossy(p[1]);
    let messages: Vec<Message> = text
        .split('\u{1}')
        .map(|m| {
            let (role, content) = m.split_once('\u{2}').unwrap_or(("user", m));
            Message {
                role: role.into(),
                content: content.into(),
            }
        })
        .collect();
    let Ok(t) = ChatTemplate::new("fuzz", source, "<s>", "</s>") else {
        return;
    };
    let t = t.with_limits(RenderLimits {
        fuel: 20_000,
        max_output: CAP,
    });
    if let Ok(prompt) = t.render(&messages) {
        assert!(prompt.len() <= CAP);
    }
});
