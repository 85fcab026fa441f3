//! Shutdown while a build or a stream is in flight (the real binary: the
//! signal goes to its process).

mod built {
    use crate::harness::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Processes whose working directory is a build directory of `name`:
    /// (pid, directory).
    fn builders_of(name: &str) -> Vec<(i32, String)> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                if cwd.to_string_lossy().contains(&format!("nix-build-{name}")) {
                    found.push((pid, cwd.display().to_string()));
                }
            }
        }
        found
    }

    /// Stops, by PID, builders of `name` this test started and left behind
    /// (only when the behaviour under test is broken).
    struct StopBuilders(String);

    impl Drop for StopBuilders {
        fn drop(&mut self) {
            for (pid, _) in builders_of(&self.0) {
                // SAFETY: kill(2) on a builder of this test's own derivation.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn sigterm_during_a_build_stops_nix_and_its_builder() {
        let mut s = start(&state_dir(), &["--shutdown-grace", "2"]).await;
        let stuck = format!("stuck-{}", fixture().nonce);
        let _cleanup = StopBuilders(stuck.clone());
        let client = s.http.clone();
        let url = s.url("/v2/stuck/manifests/latest");
        let pull = tokio::spawn(async move { client.get(url).send().await });
        let start = Instant::now();
        while builders_of(&stuck).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the builder never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // SAFETY: kill(2) on the server this test started.
        unsafe { libc::kill(s.pid(), libc::SIGTERM) };
        // The grace (2 s), then nix is interrupted and stops its builder.
        assert!(
            s.exited_within(Duration::from_secs(15)),
            "the server did not exit"
        );
        let _ = pull.await;
        let end = Instant::now() + Duration::from_secs(5);
        while !builders_of(&stuck).is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            builders_of(&stuck),
            Vec::<(i32, String)>::new(),
            "builders left running"
        );
        assert!(s.log_text().contains("stopping processes still running"));
    }

    #[tokio::test]
    #[ignore = "needs Nix; scripts/test runs it"]
    async fn a_stream_that_outlasts_the_shutdown_grace_is_cut() {
        let mut s = start(&state_dir(), &["--shutdown-grace", "1"]).await;
        let m = s.manifest("large", "latest").await;
        let (digest, size) = layers(&m).into_iter().max_by_key(|l| l.1).unwrap();
        assert!(size > 12 << 20);
        let out = s.state.join("slow.blob");
        // 12 MiB at 1 MiB/s: it would take 12 s.
        let mut slow = Command::new(fixture().root.join("tests/slow_client.py"))
            .arg(s.url(&format!("/v2/large/blobs/{digest}")))
            .arg(&out)
            .arg("1024")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            slow.try_wait().unwrap().is_none(),
            "the download is running"
        );
        let signalled = Instant::now();
        // SAFETY: kill(2) on the server this test started.
        unsafe { libc::kill(s.pid(), libc::SIGTERM) };
        assert!(
            s.exited_within(Duration::from_secs(5)),
            "the server outlived its grace"
        );
        let took = signalled.elapsed();
        let result = slow.wait_with_output().unwrap();
        assert!(!result.status.success(), "the download must be cut short");
        assert!(
            String::from_utf8_lossy(&result.stderr).contains("short body"),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(
            took >= Duration::from_millis(900),
            "exited before the grace: {took:?}"
        );
        assert!(std::fs::metadata(&out).unwrap().len() < size);
        assert!(s.log_text().contains("grace period over"));
    }
}
