//! The chat-template sandbox ([`bitnet_server::sandbox`]) with the real worker binary: its
//! renders equal in-process ones, workers are replaced after their quota, a render past its
//! deadline is killed (and only that one), and a dead worker is replaced at the next render.

use bitnet_server::chat::{ChatTemplate, Failure, Message, RenderLimits};
use bitnet_server::sandbox::{Sandbox, RENDERS_PER_WORKER};
use std::time::{Duration, Instant};

fn sandbox(workers: usize) -> Sandbox {
    Sandbox::new(env!("CARGO_BIN_EXE_bitnet").into(), workers)
}

fn msgs(i: usize) -> Vec<Message> {
    vec![
        Message {
            role: "system".into(),
            content: "Be brief.".into(),
        },
        Message {
            role: "user".into(),
            content: format!("question {i} ünïcödé"),
        },
    ]
}

#[test]
fn sandboxed_renders_equal_in_process_ones_across_worker_replacements() {
    let s = sandbox(1);
    let t = ChatTemplate::new("llama3", "llama3", "<|begin_of_text|>", "").unwrap();
    for i in 0..RENDERS_PER_WORKER + 50 {
        let m = msgs(i);
        assert_eq!(
            s.render(&t, &m, |_| {}).unwrap(),
            t.render(&m).unwrap(),
            "render {i}"
        );
    }
    // Typed failures come back as they are.
    let bad = ChatTemplate::new("bad", "{{ raise_exception('no') }}", "", "").unwrap();
    let e = s.render(&bad, &msgs(0), |_| {}).unwrap_err();
    assert_eq!(e.failure, Failure::Invalid, "{e}");
    let fuel = ChatTemplate::new(
        "loop",
        "{% for i in range(100000) %}{{ i }}{% endfor %}",
        "",
        "",
    )
    .unwrap()
    .with_fuel(1000);
    assert_eq!(
        s.render(&fuel, &msgs(0), |_| {}).unwrap_err().failure,
        Failure::OutOfFuel
    );
}

#[test]
fn a_render_past_its_deadline_is_killed_and_the_next_gets_a_new_worker() {
    let s = std::sync::Arc::new(sandbox(1));
    let slow = ChatTemplate::new(
        "slow",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap()
    .with_limits(RenderLimits {
        fuel: u64::MAX / 2,
        max_output: usize::MAX / 2,
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    let t0 = Instant::now();
    let h = std::thread::spawn(move || s2.render(&slow, &msgs(0), |r| tx.send(r).unwrap()));
    let running = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.kill(running);
    let e = h.join().unwrap().unwrap_err();
    assert_eq!(e.failure, Failure::Crashed, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // A kill that comes after its render finished does nothing to the next render.
    let t = ChatTemplate::new("chatml", "chatml", "", "").unwrap();
    let mut first = None;
    let text = s.render(&t, &msgs(1), |r| first = Some(r)).unwrap();
    s.kill(first.unwrap());
    assert_eq!(text, t.render(&msgs(1)).unwrap());
    assert_eq!(
        s.render(&t, &msgs(2), |_| {}).unwrap(),
        t.render(&msgs(2)).unwrap()
    );
}
