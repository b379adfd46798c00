//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`), rendered with
//! minijinja the way Hugging Face renders it, or a named built-in.

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

/// A compiled template plus the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub name: String,
    bos: String,
    eos: String,
}

#[derive(Debug, thiserror::Error)]
#[error("chat template {name}: {message}")]
pub struct TemplateError {
    pub name: String,
    pub message: String,
}

impl ChatTemplate {
    /// `source` is a built-in name or Jinja text; `name` says where it came from.
    pub fn new(name: &str, source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let text = BUILTIN
            .iter()
            .find(|(n, _)| *n == source)
            .map_or(source, |(_, t)| t);
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template_owned("chat", text.to_string())
            .map_err(|e| TemplateError {
                name: name.into(),
                message: e.to_string(),
            })?;
        Ok(ChatTemplate {
            env,
            name: name.into(),
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Bounds what one render may execute (minijinja's fuel: roughly one unit per
    /// instruction); a render that runs out fails with an error instead of running on.
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        self.env.set_fuel(Some(fuel));
        self
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let t = self.env.get_template("chat").map_err(|e| self.err(e))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| self.err(e))
    }

    fn err(&self, e: minijinja::Error) -> TemplateError {
        TemplateError {
            name: self.name.clone(),
            message: e.to_string(),
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
    }
}
