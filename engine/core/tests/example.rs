//! The `generate` example, run as a test on the shared model: the public API alone loads,
//! generates and writes a receipt, and a seed fixes the text.

mod common;
#[path = "../examples/generate.rs"]
mod example;

#[test]
fn the_library_example_generates_and_receipts_through_the_public_api() {
    let path = common::converted("i2_s", "f16");
    let (text, r) = example::run(&path, "Once upon a time", 7, 24).unwrap();
    assert!(!text.is_empty());
    assert_eq!(r.run.generated_tokens, r.run.generated_tokens.min(24));
    assert!(r.run.generated_tokens > 0);
    assert!(
        r.kernels.iter().any(|k| k.id.starts_with("i2s_")),
        "the receipt lists the kernels that ran: {:?}",
        r.kernels
    );
    let (again, _) = example::run(&path, "Once upon a time", 7, 24).unwrap();
    assert_eq!(text, again, "the same seed gives the same text");
}
