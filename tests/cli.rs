//! The binary's command line: bad flags and files exit 2 with one line naming the key;
//! SIGHUP reloads the config file (a bad one is rejected and the old config stays);
//! SIGTERM shuts down cleanly.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gravity-exporter");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_key() {
    for (args, key) in [
        (vec!["--web.listen-address", "nope"], "web.listen-address"),
        (vec!["--gravity.url", "gopher://x"], "gravity.url"),
        (vec!["--log.level", "chatty"], "log.level"),
        (vec!["--collector.interval", "soon"], "collector.interval"),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
    }
    let (code, err) = run(&["--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn bad_config_file_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[gravity]\nurl = \"http://127.0.0.1:8080\"\npid-fil = \"/x\"\n",
    )
    .unwrap();
    let (code, err) = run(&["--config.file", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("pid-fil") && err.contains("line 3"), "{err}");
}

fn landing(port: u16) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = gravity_exporter::gravity_api::GravityClient::new();
        let base = format!("http://127.0.0.1:{port}").parse().unwrap();
        c.get(&base, "/", Duration::from_secs(2), 1 << 20)
            .await
            .ok()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
    })
}

fn wait_landing(port: u16, needle: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if landing(port).is_some_and(|b| b.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn sighup_reloads_and_rejects_bad_file_and_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    let port = common::free_port();
    std::fs::write(
        &p,
        format!(
            "web.listen-address = \"127.0.0.1:{port}\"\ngravity.url = \"http://127.0.0.1:1111\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--config.file",
            p.to_str().unwrap(),
            "--gravity.pid-file",
            "/nonexistent/gravity.pid",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_landing(port, "127.0.0.1:1111"),
        "exporter did not come up"
    );

    std::fs::write(
        &p,
        format!(
            "web.listen-address = \"127.0.0.1:{port}\"\ngravity.url = \"http://127.0.0.1:2222\"\n"
        ),
    )
    .unwrap();
    signal(child.id(), "-HUP");
    assert!(wait_landing(port, "127.0.0.1:2222"), "reload not applied");

    std::fs::write(&p, "gravity.url = 42\n").unwrap();
    signal(child.id(), "-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        wait_landing(port, "127.0.0.1:2222"),
        "bad file must leave the old config in force"
    );

    signal(child.id(), "-TERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("config reload rejected") && err.contains("gravity.url"),
        "{err}"
    );
    assert!(err.contains("config reloaded"), "{err}");
}

/// The shipped binary holds no simulated gravity: alone, `gravity-exporter demo` says how to
/// get the demo (exit 2) and is not a gravity when started under that name.
#[test]
fn demo_without_the_double_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gravity-exporter");
    std::fs::copy(BIN, &exe).unwrap();
    let out = Command::new(&exe).arg("demo").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cargo run --release -p gravity-double -- demo"),
        "{err}"
    );
    // No busybox switch: under the name `gravity` it is still the exporter (gravity's flags
    // are unknown to it, a usage error).
    let as_gravity = dir.path().join("gravity");
    std::fs::copy(BIN, &as_gravity).unwrap();
    let out = Command::new(&as_gravity)
        .args(["--config=/nonexistent.toml", "--http-addr=127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'--config.file'"),
        "the exporter's own usage: {err}"
    );
}

/// With `gravity-double` installed next to it, `gravity-exporter demo` hands over to it with
/// the same flags.
#[test]
fn demo_hands_over_to_the_double_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gravity-exporter");
    std::fs::copy(BIN, &exe).unwrap();
    std::os::unix::fs::symlink(
        gravity_double::binary().unwrap(),
        dir.path().join("gravity-double"),
    )
    .unwrap();
    let demo_dir = dir.path().join("demo");
    let out = Command::new(&exe)
        .args(["--web.listen-address", "127.0.0.1:0", "demo"])
        .arg("--demo.duration=1")
        .arg(format!("--demo.dir={}", demo_dir.display()))
        // no Prometheus/Alertmanager from PATH: only the hand-over is under test
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("gravity-exporter demo is running"),
        "{stdout}\n{stderr}"
    );
    assert!(demo_dir.join("gravity").exists(), "the double's link");
}

/// `gravity-exporter demo --otlp.endpoint …` hands the endpoint over too: the demo says
/// where it exports, and the collector (the test receiver) gets the metrics (at the latest
/// from the flush at the demo's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_passes_the_otlp_endpoint_through() {
    use gravity_double::otlp::{Mode, Receiver};
    let rx = Receiver::grpc(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gravity-exporter");
    std::fs::copy(BIN, &exe).unwrap();
    std::os::unix::fs::symlink(
        gravity_double::binary().unwrap(),
        dir.path().join("gravity-double"),
    )
    .unwrap();
    let demo_dir = dir.path().join("demo");
    let endpoint = rx.endpoint();
    let path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&exe)
            .args(["--web.listen-address", "127.0.0.1:0", "demo"])
            .arg("--demo.duration=2")
            .arg(format!("--demo.dir={}", demo_dir.display()))
            .args(["--otlp.endpoint", &endpoint, "--otlp.interval", "500ms"])
            .env("PATH", &path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("OTLP export:        {}", rx.endpoint())),
        "{stdout}\n{stderr}"
    );
    assert!(!rx.received().metrics.is_empty(), "{stdout}\n{stderr}");
}

/// The exporter sets its glibc malloc tunables by re-executing itself once, as the same
/// process with the same arguments; a `GLIBC_TUNABLES` the user set is left as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_exporter_runs_with_its_malloc_tunables_unless_the_user_set_them() {
    let ours = "glibc.malloc.mmap_threshold=131072:glibc.malloc.arena_max=2";
    for (user, want) in [
        (None, ours),
        (Some("glibc.malloc.arena_max=1"), "glibc.malloc.arena_max=1"),
    ] {
        let port = common::free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--web.listen-address",
            &listen,
            "--gravity.url",
            "http://127.0.0.1:1111",
            "--gravity.pid-file",
            "/nonexistent/gravity.pid",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("GLIBC_TUNABLES");
        if let Some(u) = user {
            cmd.env("GLIBC_TUNABLES", u);
        }
        // killed if an assertion fails before the SIGTERM below
        struct Guard(std::process::Child);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut guard = Guard(cmd.spawn().unwrap());
        let child = &mut guard.0;
        assert!(
            wait_landing(port, "127.0.0.1:1111"),
            "exporter did not come up"
        );
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        let tunables = environ
            .split(|b| *b == 0)
            .find_map(|e| e.strip_prefix(b"GLIBC_TUNABLES="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        // glibc 2.36 cuts the string at the first `:` in place while it parses it (the
        // process's own copy, seen in /proc/<pid>/environ); later versions leave it whole
        let seen = tunables.unwrap_or_default();
        assert!(
            !seen.is_empty() && want.starts_with(&seen) && want.split(':').next() <= Some(&seen),
            "GLIBC_TUNABLES={seen:?}, want {want:?}"
        );
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        assert!(
            cmdline.split(|b| *b == 0).any(|a| a == listen.as_bytes()),
            "the arguments are kept"
        );
        signal(child.id(), "-TERM");
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}
