//! The official `openai` Python package talks to `bitnet serve` unchanged: models, completions
//! and chat, whole and streamed, and its typed errors. Needs python3 with `pip install openai`
//! (CI installs it and runs this test with `--ignored`).

#[path = "../../core/tests/common/mod.rs"]
mod common;
use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[test]
#[ignore = "needs python3 with the openai package (pip install openai); .ci/run runs it"]
fn openai_python_client_works_unchanged() {
    let check = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .expect("python3 is required for this test");
    assert!(
        check.status.success(),
        "the openai Python package is missing: pip install openai"
    );
    let mut child = bitnet()
        .args([
            "serve",
            "--port",
            "0",
            "--alias",
            "story",
            "--chat-template",
            "plain",
            "-m",
        ])
        .arg(converted("i2_s", "f32"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("bitnet serve: listening on ")
        .expect("listening line")
        .to_string();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
    });
    // Wait until ready (the client itself is run with retries off).
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/openai_client.py"
    );
    let wait = format!(
        "import time,urllib.request\nfor _ in range(300):\n  try:\n    urllib.request.urlopen('{url}/health/ready'); break\n  except Exception: time.sleep(0.05)"
    );
    assert!(Command::new("python3")
        .args(["-c", &wait])
        .status()
        .unwrap()
        .success());
    let out = Command::new("python3")
        .arg(script)
        .arg(&url)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "openai client checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}
