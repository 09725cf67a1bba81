//! Chat templates: the default model's ChatML template, the fallback when a file has none,
//! `raise_exception`, syntax errors, and the rendered prompts in `shared/golden/`.

mod common;

use realm_engine::chat::{CHAT_TEMPLATE_KEY, CHATML_TEMPLATE, ChatError, ChatMessage, ChatTemplate};
use realm_engine::gguf::{Array, GgufFile, GgufWriter, Value};
use realm_engine::tokenizer::Tokenizer;

const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

fn default_model() -> (GgufFile, Tokenizer) {
    let file = GgufFile::open(&common::default_model_path()).expect("open default model");
    let tok = Tokenizer::from_gguf(&file).expect("default model's tokenizer");
    (file, tok)
}

/// A file with a three-token gpt2 vocabulary and the given extra metadata.
fn tiny_file(extra: &[(&str, Value)]) -> GgufFile {
    let mut w = GgufWriter::new();
    let strings = |v: &[&str]| Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()));
    w.set("general.architecture", Value::String("llama".into()))
        .set("tokenizer.ggml.model", Value::String("gpt2".into()))
        .set("tokenizer.ggml.pre", Value::String("gpt-2".into()))
        .set("tokenizer.ggml.tokens", strings(&["<s>", "</s>", "a"]))
        .set("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![3, 3, 1])))
        .set("tokenizer.ggml.merges", strings(&[]))
        .set("tokenizer.ggml.bos_token_id", Value::U32(0))
        .set("tokenizer.ggml.eos_token_id", Value::U32(1));
    for (k, v) in extra {
        w.set(*k, v.clone());
    }
    GgufFile::from_vec(w.to_bytes()).expect("tiny file parses")
}

#[test]
fn default_model_renders_chatml() {
    let (file, tok) = default_model();
    let tpl = ChatTemplate::from_gguf(&file, &tok).expect("template compiles");
    let messages = [ChatMessage::system("Be brief."), ChatMessage::user("What is 2+2?")];
    let text = tpl.render(&messages, true).expect("renders");
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let text = tpl.render(&messages, false).expect("renders");
    assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n");
}

/// The golden chat prompts are the model's template applied to one user message, with the
/// template's own default system line.
#[test]
fn golden_chat_prompts_are_the_template_on_one_user_message() {
    let (file, tok) = default_model();
    let tpl = ChatTemplate::from_gguf(&file, &tok).expect("template compiles");
    let mut checked = 0;
    for file_name in ["reference-f64.jsonl", "greedy-llama.cpp.jsonl"] {
        for v in common::golden_lines(file_name) {
            let kind = v["kind"].as_str().unwrap_or_default();
            if !kind.starts_with("chat") {
                continue;
            }
            let prompt = v["prompt"].as_str().expect("prompt");
            let user = prompt
                .split_once("<|im_start|>user\n")
                .and_then(|(_, rest)| rest.split_once("<|im_end|>"))
                .map(|(user, _)| user)
                .unwrap_or_else(|| panic!("no user turn in {prompt:?}"));
            assert!(prompt.contains(DEFAULT_SYSTEM), "{prompt:?}");
            let rendered = tpl.render(&[ChatMessage::user(user)], true).expect("renders");
            assert_eq!(rendered, prompt, "{}", v["id"]);
            // And the rendered prompt tokenizes to the golden ids.
            let want: Vec<u64> = v["prompt_ids"].as_array().expect("ids").iter().filter_map(|x| x.as_u64()).collect();
            let got: Vec<u64> = tok.encode(&rendered, true).into_iter().map(u64::from).collect();
            assert_eq!(got, want, "{}", v["id"]);
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} chat prompts in the golden files");
}

#[test]
fn missing_template_falls_back_to_chatml() {
    let file = tiny_file(&[]);
    let tok = Tokenizer::from_gguf(&file).expect("tiny tokenizer");
    let tpl = ChatTemplate::from_gguf(&file, &tok).expect("fallback compiles");
    assert_eq!(tpl.source(), CHATML_TEMPLATE);
    let text = tpl.render(&[ChatMessage::user("hi")], true).expect("renders");
    assert_eq!(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn template_sees_special_tokens_and_python_methods() {
    let source = "{{ bos_token }}{% for m in messages %}{{ m.role.upper() }}: {{ m['content'].strip() }}\n{% endfor %}{{ eos_token }}";
    let file = tiny_file(&[(CHAT_TEMPLATE_KEY, Value::String(source.into()))]);
    let tok = Tokenizer::from_gguf(&file).expect("tiny tokenizer");
    let tpl = ChatTemplate::from_gguf(&file, &tok).expect("compiles");
    let text = tpl.render(&[ChatMessage::user("  hi  ")], false).expect("renders");
    assert_eq!(text, "<s>USER: hi\n</s>");
}

#[test]
fn blocks_trim_like_transformers() {
    let source =
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}";
    let tpl = ChatTemplate::new(source, "", "").expect("compiles");
    let text = tpl.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false).expect("renders");
    assert_eq!(text, "[a]\n[b]\n");
}

#[test]
fn raise_exception_becomes_an_error_with_its_message() {
    let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok";
    let tpl = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
    assert_eq!(tpl.render(&[ChatMessage::user("hi")], true).expect("renders"), "ok");
    let err = tpl.render(&[ChatMessage::assistant("hi")], true).expect_err("raises");
    match &err {
        ChatError::Raised { message } => assert_eq!(message, "Conversation roles must start with user"),
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(err.to_string().contains("Conversation roles must start with user"), "{err}");
}

#[test]
fn bad_templates_fail_at_construction() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").expect_err("unclosed for");
    assert!(matches!(err, ChatError::Syntax { .. }), "{err:?}");
    assert!(err.to_string().contains("does not parse"), "{err}");

    let file = tiny_file(&[(CHAT_TEMPLATE_KEY, Value::String("{{ 1 +".into()))]);
    let tok = Tokenizer::from_gguf(&file).expect("tiny tokenizer");
    assert!(matches!(ChatTemplate::from_gguf(&file, &tok), Err(ChatError::Syntax { .. })));

    let file = tiny_file(&[(CHAT_TEMPLATE_KEY, Value::U32(7))]);
    let err = ChatTemplate::from_gguf(&file, &tok).expect_err("wrong type");
    assert!(err.to_string().contains("tokenizer.chat_template holds a u32"), "{err}");
}

#[test]
fn render_errors_are_reported() {
    let tpl = ChatTemplate::new("{{ messages[0].content.nonesuch() }}", "", "").expect("compiles");
    let err = tpl.render(&[ChatMessage::user("x")], false).expect_err("unknown method");
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
    assert!(err.to_string().contains("nonesuch"), "{err}");
}
