//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`), rendered with
//! minijinja the way Hugging Face renders it, or a named built-in.
//!
//! A model file's template is untrusted input, so every render is bounded ([`RenderLimits`]):
//! minijinja's fuel (about one unit per instruction) stops loops and recursion, its recursion
//! limit stops deep nesting, its own cap refuses one string repeated past 100 MB, and the output
//! is written into a buffer that refuses more than `max_output` bytes. The server renders off
//! its async runtime, with a deadline ([`crate::api`]).

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Built-in templates, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "chatml",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ),
    (
        "llama3",
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n\
         {{ m.content | trim }}<|eot_id|>{% endfor %}\
         {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    ),
    (
        "llama2",
        "{% for m in messages %}{% if m.role == 'system' %}<<SYS>>\n{{ m.content }}\n<</SYS>>\n\n\
         {% elif m.role == 'user' %}{{ bos_token }}[INST] {{ m.content | trim }} [/INST]\
         {% else %} {{ m.content | trim }} {{ eos_token }}{% endif %}{% endfor %}",
    ),
    (
        // "Role: content<|eot_id|>" turns, the format of llama.cpp's `bitnet` template.
        "bitnet",
        "{{ bos_token }}{% for m in messages %}{{ m.role | capitalize }}: {{ m.content | trim }}<|eot_id|>\
         {% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}",
    ),
    (
        // Plain text for models trained without a chat format (e.g. TinyStories).
        "plain",
        "{% for m in messages %}{% if m.role != 'system' %}{{ m.content }}{% if not loop.last %}\n{% endif %}\
         {% endif %}{% endfor %}",
    ),
];

/// Whether `template` is the placeholder BitNet's GGUF converter writes for every `bitnet`
/// model ("Human: {content}\n\nBITNETAssistant: "): no model was trained on it; BitNet.cpp's
/// own llama.cpp fork recognises it by the `BITNET` text and formats `bitnet` turns instead.
pub fn is_bitnet_placeholder(template: &str) -> bool {
    template.contains("BITNETAssistant")
}

/// What one render may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderLimits {
    /// minijinja's fuel: about one unit per instruction executed.
    pub fuel: u64,
    /// Bytes the rendered prompt may have.
    pub max_output: usize,
}

impl Default for RenderLimits {
    /// Room for conversations far longer than any context (a few hundred instructions per
    /// message in Hugging Face's templates), and none for a loop of a million iterations.
    fn default() -> Self {
        RenderLimits {
            fuel: 2_000_000,
            max_output: 4 << 20,
        }
    }
}

/// A compiled template plus the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub name: String,
    /// The Jinja text (a built-in's resolved).
    source: String,
    bos: String,
    eos: String,
    limits: RenderLimits,
}

/// Why a template did not render.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// It does not compile, raised an exception, or failed on the messages: the request's
    /// messages may be what it refuses.
    Invalid,
    /// It ran out of its instruction budget.
    OutOfFuel,
    /// Its output passed `max_output` bytes.
    TooLong,
    /// It ended the process rendering it ([`crate::sandbox`]): past the memory limit, a
    /// stack overflow, or killed at its deadline.
    Crashed,
}

#[derive(Debug, thiserror::Error)]
#[error("chat template {name}: {message}")]
pub struct TemplateError {
    pub name: String,
    pub message: String,
    pub failure: Failure,
}

/// Nesting a printed value may have.
const PRINT_DEPTH: usize = 32;
/// Elements a printed value may have, all levels together.
const PRINT_ELEMENTS: usize = 100_000;

/// Whether `v` can be printed in bounded time and stack: nested at most [`PRINT_DEPTH`] deep
/// (a value that contains itself is infinitely deep) with at most [`PRINT_ELEMENTS`] elements.
fn printable(v: &minijinja::Value, depth: usize, seen: &mut usize) -> Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    if !matches!(
        v.kind(),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable | ValueKind::Plain
    ) {
        return Ok(());
    }
    if depth >= PRINT_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("a printed value is nested more than {PRINT_DEPTH} deep (or contains itself)"),
        ));
    }
    let Ok(items) = v.try_iter() else {
        return Ok(());
    };
    let is_map = v.kind() == ValueKind::Map;
    for item in items {
        *seen += 1;
        if *seen > PRINT_ELEMENTS {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("a printed value has more than {PRINT_ELEMENTS} elements"),
            ));
        }
        if is_map {
            if let Ok(x) = v.get_item(&item) {
                printable(&x, depth + 1, seen)?;
            }
        } else {
            printable(&item, depth + 1, seen)?;
        }
    }
    Ok(())
}

/// A `Vec<u8>` that refuses to grow past `limit` bytes.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// `source` is a built-in name or Jinja text; `name` says where it came from.
    pub fn new(name: &str, source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let text = BUILTIN
            .iter()
            .find(|(n, _)| *n == source)
            .map_or(source, |(_, t)| t);
        let mut env = Environment::new();
        let limits = RenderLimits::default();
        env.set_fuel(Some(limits.fuel));
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // A namespace can be stored in itself; printing it would recurse until the stack
        // overflows. Check what is printed first.
        env.set_formatter(|out, state, value| {
            printable(value, 0, &mut 0)?;
            minijinja::escape_formatter(out, state, value)
        });
        env.add_template_owned("chat", text.to_string())
            .map_err(|e| TemplateError {
                name: name.into(),
                message: e.to_string(),
                failure: Failure::Invalid,
            })?;
        Ok(ChatTemplate {
            env,
            name: name.into(),
            source: text.to_string(),
            bos: bos.into(),
            eos: eos.into(),
            limits,
        })
    }

    /// The same template with other bounds.
    pub fn with_limits(mut self, limits: RenderLimits) -> Self {
        self.set_limits(limits);
        self
    }

    pub fn set_limits(&mut self, limits: RenderLimits) {
        self.env.set_fuel(Some(limits.fuel));
        self.limits = limits;
    }

    /// The Jinja text, and the special-token texts it is rendered with.
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn bos(&self) -> &str {
        &self.bos
    }
    pub fn eos(&self) -> &str {
        &self.eos
    }

    /// The same template with another instruction budget.
    pub fn with_fuel(self, fuel: u64) -> Self {
        let limits = RenderLimits {
            fuel,
            ..self.limits
        };
        self.with_limits(limits)
    }

    pub fn limits(&self) -> RenderLimits {
        self.limits
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins; within the
    /// template's [`RenderLimits`].
    pub fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| self.err(e, false))?;
        let mut out = Capped {
            buf: Vec::new(),
            limit: self.limits.max_output,
            over: false,
        };
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        };
        match t.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|e| TemplateError {
                name: self.name.clone(),
                message: format!("rendered text is not UTF-8: {e}"),
                failure: Failure::Invalid,
            }),
            Err(e) => Err(self.err(e, out.over)),
        }
    }

    fn err(&self, e: minijinja::Error, over: bool) -> TemplateError {
        let (failure, message) = if over {
            (
                Failure::TooLong,
                format!(
                    "the rendered prompt passed {} bytes (a template must not grow without bound)",
                    self.limits.max_output
                ),
            )
        } else if e.kind() == ErrorKind::OutOfFuel {
            (
                Failure::OutOfFuel,
                format!(
                    "ran out of its budget of {} instructions (a template must not loop without bound)",
                    self.limits.fuel
                ),
            )
        } else {
            (Failure::Invalid, e.to_string())
        };
        TemplateError {
            name: self.name.clone(),
            message,
            failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            Message {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn builtins_render() {
        let t = ChatTemplate::new("chatml", "chatml", "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&msgs()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::new("llama3", "llama3", "<|begin_of_text|>", "").unwrap();
        assert_eq!(
            t.render(&msgs()).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let t = ChatTemplate::new("bitnet", "bitnet", "<s>", "").unwrap();
        assert_eq!(
            t.render(&msgs()).unwrap(),
            "<s>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: "
        );
        let t = ChatTemplate::new("plain", "plain", "<s>", "").unwrap();
        assert_eq!(t.render(&msgs()).unwrap(), "Hi");
    }

    #[test]
    fn hugging_face_style_templates_work_and_errors_are_typed() {
        // Python string methods and raise_exception, as HF templates use them.
        let src = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}\
                   {% for m in messages %}{{ m['content'].strip().upper() }};{% endfor %}";
        let t = ChatTemplate::new("gguf", src, "", "").unwrap();
        assert_eq!(t.render(&msgs()).unwrap(), "BE BRIEF.;HI;");
        let e = t.render(&msgs()[1..]).unwrap_err();
        assert!(e.message.contains("system first"), "{e}");
        assert!(ChatTemplate::new("bad", "{% for %}", "", "").is_err());
        assert_eq!(e.failure, Failure::Invalid);
    }

    /// Each hostile template fails fast with its typed reason, never runs on.
    #[test]
    fn hostile_templates_are_stopped_by_their_budget() {
        let deep = format!(
            "{}{}",
            "{% if true %}".repeat(400),
            "{% endif %}".repeat(400)
        );
        let cases = [
            // Nested loops: 10^10 iterations.
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
                Failure::OutOfFuel,
            ),
            // Unbounded recursion through a macro.
            (
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                Failure::Invalid,
            ),
            // One huge repetition, and repeated output of a large one.
            ("{{ 'x' * 1000000000 }}", Failure::Invalid),
            (
                "{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
                Failure::TooLong,
            ),
            // Deep nesting.
            (deep.as_str(), Failure::Invalid),
            // A namespace that contains itself, printed (fuzzer finding: a stack overflow).
            (
                "{% set ns = namespace(n=0) %}{% set ns.n = [1, ns] %}{{ ns.n }}",
                Failure::Invalid,
            ),
        ];
        for (src, want) in cases {
            let t0 = std::time::Instant::now();
            let got = ChatTemplate::new("hostile", src, "", "").and_then(|t| t.render(&msgs()));
            let e = got.expect_err("a hostile template must fail");
            assert_eq!(e.failure, want, "{src:.60}: {e}");
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "{src:.60}: took {:?}",
                t0.elapsed()
            );
        }
    }
}
