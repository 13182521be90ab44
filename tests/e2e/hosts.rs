//! Hosts as they are in the wild ("Hosts" in COMMANDS.md): servers nobody set up get this
//! client's host program copied there (once, checked, atomically); sessions survive the user's
//! logout deleting `XDG_RUNTIME_DIR` and the host program being replaced on disk; hosts that
//! cannot take ours say what to install; what would end sessions at logout is said.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nu_session_tests::{RemoteUser, Sandbox, Sshd, eventually};
use serde_json::json;

/// `~/.ssh/config` lines naming `server` as `web`.
fn alias(server: &Sshd) -> String {
    format!(
        "Host web\n  HostName {}\n  Port {}\n  User {}\n",
        server.address, server.port, server.user.name
    )
}

/// The SHA-256 of a file, as `sha256sum` prints it.
fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The copies of the host program clients made for `user` (their paths).
fn copies(user: &RemoteUser) -> Vec<PathBuf> {
    std::fs::read_dir(user.deployed_dir())
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|dir| {
            std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|f| f.path())
        .collect()
}

/// The error a script raises: its message and its help.
fn caught(sb: &Sandbox, config: &Path, code: &str) -> String {
    sb.ssh_caught(
        config,
        code,
        "$e.msg + ' | help: ' + ($e.details.help? | default '')",
    )
}

/// A directory of stand-ins for system commands, for a server's PATH.
fn fake_bin(sb: &Sandbox, scripts: &[(&str, &str)]) -> PathBuf {
    let dir = sb.path().join("fake-bin");
    std::fs::create_dir_all(&dir).expect("fake bin");
    for (name, body) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("fake command");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    dir
}

#[test]
fn a_host_without_nu_session_host_gets_this_clients_copied_once() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.50");
    server.user.forget_host_program();
    // The client is a non-root user too, with nothing but its ~/.ssh.
    let client = sb.user_client();
    client.trust(&[&server], &alias(&server));

    // In a terminal, the copy shows its progress.
    let screen = client.pty_run(
        "let s = new-session web; print $'state: ($s.0.state)'; print $'exe: (invoke-session $s { $nu.current-exe })'",
    );
    assert!(screen.contains("state: Opened"), "{screen}");
    assert!(
        screen.contains("copying nu-session-host to web:"),
        "{screen}"
    );
    let copied = copies(&server.user);
    assert_eq!(copied.len(), 1, "{copied:?}");
    let copy = &copied[0];
    // The session runs the copy, which is exactly the client's host program.
    assert!(
        screen.contains(&format!("exe: {}", copy.display())),
        "{screen}"
    );
    assert_eq!(sha256(copy), sha256(&client.host_program()));
    let meta = std::fs::metadata(copy).expect("the copy");
    assert_eq!(meta.uid(), server.user.uid);
    assert!(
        copy.parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d.to_string_lossy().starts_with("0.1.0-")),
        "not in a version-specific place: {copy:?}"
    );

    // Another process, later: the copy is used as it is.
    let out = client.json(
        "let s = new-session web; {state: $s.0.state, user: (invoke-session $s { ^whoami })}",
    );
    assert_eq!(out, json!({"state": "Opened", "user": server.user.name}));
    let again = std::fs::metadata(copy).expect("the copy");
    assert_eq!(
        (again.ino(), again.mtime_nsec()),
        (meta.ino(), meta.mtime_nsec()),
        "copied again"
    );
    assert_eq!(copies(&server.user).len(), 1);
}

#[test]
fn two_clients_copying_at_once_end_with_one_good_copy() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.51");
    server.user.forget_host_program();
    let config = sb.ssh_config(&[&server], "");
    let script = format!(
        "new-session {} | get 0.state | to json -r",
        server.computer()
    );
    let children: Vec<_> = (0..2).map(|_| sb.ssh_spawn(&config, &script)).collect();
    for child in children {
        let out = child.wait_with_output().expect("nu");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"Opened\"");
    }
    let copied = copies(&server.user);
    assert_eq!(copied.len(), 1, "{copied:?}");
    assert_eq!(
        sha256(&copied[0]),
        sha256(&nu_session_tests::bin_dir().join("nu-session-host"))
    );
}

#[test]
fn a_cut_upload_is_never_run_and_the_next_session_copies_it_whole() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.52");
    server.user.forget_host_program();
    let config = sb.ssh_config(&[&server], "");
    let mut nu = sb.ssh_spawn(&config, &format!("new-session {}", server.computer()));
    // Cut the connection once part of the program has arrived.
    let partial = eventually(Duration::from_secs(60), || {
        copies(&server.user).iter().any(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".upload-"))
                && std::fs::metadata(f).is_ok_and(|m| m.len() > 1_000_000)
        })
    });
    assert!(partial, "no upload in progress: {:?}", copies(&server.user));
    assert!(server.kill_connections() > 0);
    // The copy breaks off and the command fails, without hanging.
    let ended = eventually(Duration::from_secs(30), || {
        nu.try_wait().is_ok_and(|s| s.is_some())
    });
    if !ended {
        let _ = nu.kill();
    }
    let out = nu.wait_with_output().expect("nu");
    assert!(
        ended,
        "new-session hangs after its connection was cut: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot copy nu-session-host to"),
        "{stderr}"
    );
    // Nothing half-copied is where the program would be run from.
    assert!(
        copies(&server.user).iter().all(|f| f
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".upload-"))),
        "{:?}",
        copies(&server.user)
    );
    let out = sb.ssh_json(
        &config,
        &format!("new-session {} | get 0.state", server.computer()),
    );
    assert_eq!(out, json!("Opened"));
    let program: Vec<_> = copies(&server.user)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "nu-session-host"))
        .collect();
    assert_eq!(program.len(), 1);
    assert_eq!(
        sha256(&program[0]),
        sha256(&nu_session_tests::bin_dir().join("nu-session-host"))
    );
}

#[test]
fn a_host_of_another_architecture_says_what_to_install() {
    let sb = Sandbox::new();
    let fake = fake_bin(
        &sb,
        &[(
            "uname",
            "case \"$1\" in -m) echo aarch64 ;; *) echo Linux ;; esac",
        )],
    );
    let server = sb.sshd_with(
        "127.0.0.53",
        &format!("SetEnv PATH={}:/usr/bin:/bin", fake.display()),
    );
    server.user.forget_host_program();
    let config = sb.ssh_config(&[&server], "");
    let error = caught(&sb, &config, &format!("new-session {}", server.computer()));
    assert!(error.contains("nu-session-host 0.1.0 is not on"), "{error}");
    assert!(
        error.contains(&format!(
            "is Linux aarch64, this nu-session-host is built for linux {}",
            std::env::consts::ARCH
        )),
        "{error}"
    );
    assert!(error.contains("build it for Linux aarch64"), "{error}");
    assert!(error.contains("docs/setup-remote.md"), "{error}");
    assert!(copies(&server.user).is_empty());
}

#[test]
fn a_host_where_the_copy_cannot_be_written_says_why_at_once() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.59");
    server.user.forget_host_program();
    // The user may not write their own data directory (as a ~/.local made by root leaves it).
    let data = server.user.home.join(".local/share/nu-session");
    std::fs::create_dir_all(&data).expect("data dir");
    let set_mode = |mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    set_mode(0o555);
    let config = sb.ssh_config(&[&server], "");
    let started = std::time::Instant::now();
    let error = caught(&sb, &config, &format!("new-session {}", server.computer()));
    let took = started.elapsed();
    set_mode(0o755);
    // What the host said, not a stall: the copy stops as soon as the command there gives up.
    assert!(error.contains("cannot copy nu-session-host to"), "{error}");
    assert!(error.contains("Permission denied"), "{error}");
    assert!(
        took < Duration::from_secs(30),
        "the failure took {took:?} to be reported"
    );
    assert!(copies(&server.user).is_empty());
}

#[test]
fn another_user_squatting_the_runtime_directory_is_refused_by_name() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.66");
    let squatter = RemoteUser::lease();
    // Before the user ever logs in, another user of the host makes /tmp/nu-session-<uid>
    // (anyone may create names in /tmp), hoping the user's sockets end up in it.
    let dir = server.user.runtime_dir();
    std::fs::create_dir_all(&dir).expect("squat");
    std::os::unix::fs::chown(&dir, Some(squatter.uid), Some(squatter.gid)).expect("chown");
    let config = sb.ssh_config(&[&server], "");
    let error = caught(&sb, &config, &format!("new-session {}", server.computer()));
    assert!(error.contains(&dir.display().to_string()), "{error}");
    assert!(
        error.contains(&format!("owned by uid {}", squatter.uid)),
        "{error}"
    );
    // Nothing of the user's went in there.
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
    assert!(server.worker_pids().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn processes_of_another_user_are_refused_by_the_manager_and_the_workers() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.67");
    let config = sb.ssh_config(&[&server], "");
    sb.ssh_json(
        &config,
        &format!("new-session {} | length", server.computer()),
    );
    let layout = nu_session_protocol::layout::Layout::under(server.user.runtime_dir());
    let worker_socket = std::fs::read_dir(layout.sessions_dir())
        .expect("sessions")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .expect("a worker socket");
    // This test runs as root, another uid than the host's user: it can reach the sockets (root
    // passes the 0700 directories), but every connection is checked for the user's own uid.
    for socket in [layout.manager_socket(), worker_socket] {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let hello =
            nu_session_protocol::ClientMessage::Hello(nu_session_protocol::Hello::current());
        // The host may close before the hello is even written.
        let _ = nu_session_protocol::write_frame(&mut stream, &hello);
        let answer =
            nu_session_protocol::read_frame::<nu_session_protocol::HostMessage>(&mut stream);
        assert!(
            matches!(answer, Ok(None) | Err(_)),
            "{} answered another user: {answer:?}",
            socket.display()
        );
    }
}

#[test]
fn copying_can_be_turned_off() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.54");
    server.user.forget_host_program();
    let config = sb.ssh_config(&[&server], "");
    let error = caught(
        &sb,
        &config,
        &format!(
            "$env.NU_SESSION_DEPLOY = 'never'; new-session {}",
            server.computer()
        ),
    );
    assert!(
        error.contains("copying it there is turned off (NU_SESSION_DEPLOY=never)"),
        "{error}"
    );
    assert!(
        error.contains("PATH of non-interactive ssh commands"),
        "{error}"
    );
    assert!(copies(&server.user).is_empty());
}

#[test]
fn a_session_is_found_after_logout_deletes_the_login_runtime_directory() {
    let sb = Sandbox::new();
    let user = RemoteUser::lease();
    // As pam_systemd does for every login on a stock server.
    let xdg = PathBuf::from(format!("/run/user/{}", user.uid));
    std::fs::create_dir_all(&xdg).expect("XDG_RUNTIME_DIR");
    std::os::unix::fs::chown(&xdg, Some(user.uid), Some(user.gid)).expect("chown");
    let server = sb.sshd_for(
        user,
        None,
        "127.0.0.55",
        &format!("SetEnv XDG_RUNTIME_DIR={}", xdg.display()),
    );
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let left = sb.ssh_json(
        &config,
        &format!(
            "let s = new-session {computer} --name job
             invoke-session $s {{ $env.KEPT = 'yes' }}
             invoke-session $s {{ sleep 1sec; 'done' }} --disconnected | get 0.state"
        ),
    );
    assert_eq!(left, json!("Disconnected"));
    // The user's last login ends: logind deletes the directory.
    std::fs::remove_dir_all(&xdg).expect("logout");
    let out = sb.ssh_json(
        &config,
        &format!(
            "let s = get-session --computer-name {computer} | where name == job | connect-session
             {{ state: $s.0.state, received: (receive-session $s), kept: (invoke-session $s {{ $env.KEPT }}) }}"
        ),
    );
    assert_eq!(
        out,
        json!({"state": "Opened", "received": ["done"], "kept": "yes"})
    );
}

#[test]
fn replacing_the_host_program_under_a_running_manager_leaves_new_and_old_sessions_working() {
    let sb = Sandbox::new();
    let user = RemoteUser::lease();
    user.forget_host_program();
    // Installed by the administrator, on the PATH of ssh commands.
    let installed = sb.path().join("opt-bin");
    std::fs::create_dir_all(&installed).expect("install dir");
    let program = installed.join("nu-session-host");
    std::fs::copy(
        nu_session_tests::bin_dir().join("nu-session-host"),
        &program,
    )
    .expect("install");
    let server = sb.sshd_for(
        user,
        None,
        "127.0.0.56",
        &format!("SetEnv PATH={}:/usr/bin:/bin", installed.display()),
    );
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let left = sb.ssh_json(
        &config,
        &format!(
            "let s = new-session {computer} --name old
             invoke-session $s {{ $env.OLD = 1 }}
             disconnect-session $s | get 0.state"
        ),
    );
    assert_eq!(left, json!("Disconnected"));
    let manager_pid: i32 = std::fs::read_to_string(server.user.host_dir().join("manager.pid"))
        .expect("manager.pid")
        .trim()
        .parse()
        .expect("pid");
    // An upgrade: the new file is moved over the old one (as cargo install and packages do).
    let upgraded = installed.join(".nu-session-host.new");
    std::fs::copy(&program, &upgraded).expect("new version");
    std::fs::rename(&upgraded, &program).expect("replace");
    let exe = std::fs::read_link(format!("/proc/{manager_pid}/exe")).expect("manager exe");
    assert!(
        exe.to_string_lossy().ends_with("(deleted)"),
        "the manager's program was not replaced: {exe:?}"
    );
    assert!(
        copies(&server.user).is_empty(),
        "the installed program was not used"
    );
    let out = sb.ssh_json(
        &config,
        &format!(
            "let new = new-session {computer} --name new
             let old = get-session --computer-name {computer} | where name == old | connect-session
             {{ new: (invoke-session $new {{ 1 + 1 }}), old: (invoke-session $old {{ $env.OLD }}) }}"
        ),
    );
    assert_eq!(out, json!({"new": 2, "old": 1}));
    // The manager that served it is the one whose program was replaced.
    let now: i32 = std::fs::read_to_string(server.user.host_dir().join("manager.pid"))
        .expect("manager.pid")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(now, manager_pid);
}

#[test]
fn a_host_that_ends_processes_at_logout_is_warned_about_once() {
    let sb = Sandbox::new();
    // logind as a server with KillUserProcesses=yes answers it.
    let fake = fake_bin(
        &sb,
        &[(
            "busctl",
            "case \"$*\" in *KillUserProcesses*) echo 'b true' ;; *KillExcludeUsers*) echo 'as 1 \"root\"' ;; *) exit 1 ;; esac",
        )],
    );
    let server = sb.sshd_with(
        "127.0.0.57",
        &format!(
            "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin",
            fake.display()
        ),
    );
    let linger = PathBuf::from("/var/lib/systemd/linger").join(&server.user.name);
    let _ = std::fs::remove_file(&linger);
    let config = sb.ssh_config(&[&server], "");
    let computer = server.computer();
    let out = sb.ssh_run(
        &config,
        &format!("new-session {computer} | ignore; new-session {computer} | ignore"),
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = format!(
        "warning: {computer}: this host ends your processes when you log out (logind KillUserProcesses=yes)"
    );
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("`loginctl enable-linger {}`", server.user.name)),
        "{stderr}"
    );

    // Lingering (and not in a login's scope): nothing to warn about.
    std::fs::create_dir_all(linger.parent().expect("dir")).expect("linger dir");
    std::fs::write(&linger, "").expect("linger");
    server.user.reset();
    let out = sb.ssh_run(&config, &format!("new-session {computer} | ignore"));
    let _ = std::fs::remove_file(&linger);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("log out"), "{stderr}");
}

#[test]
fn sessions_of_another_protocol_version_are_named() {
    let sb = Sandbox::new();
    let server = sb.sshd("127.0.0.58");
    let config = sb.ssh_config(&[&server], "");
    // A session of an earlier release (protocol 3) still runs for this user: its worker and
    // file, in that version's directory.
    let old = server.user.runtime_dir().join("p3/sessions");
    std::fs::create_dir_all(&old).expect("old dir");
    let mut worker = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::uid(&mut worker, server.user.uid);
    let mut worker = worker.arg("120").spawn().expect("a stand-in worker");
    let id = "6a1f0c1e-0000-4000-8000-000000000001";
    std::fs::write(
        old.join(format!("{id}.json")),
        json!({
            "info": {"instance_id": id, "name": "legacy", "configuration_name": "default", "user": server.user.name,
                     "created": "2026-11-01T00:00:00Z", "idle_timeout": {"secs": 7200, "nanos": 0},
                     "output_buffering": "Block", "attached": false, "attached_client": null, "running": false,
                     "disconnected_on": null},
            "pid": worker.id(),
            "software_version": "0.0.9"
        })
        .to_string(),
    )
    .expect("old session file");
    for path in [
        server.user.runtime_dir(),
        server.user.runtime_dir().join("p3"),
        old.clone(),
    ] {
        std::os::unix::fs::chown(&path, Some(server.user.uid), Some(server.user.gid))
            .expect("chown");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
    }
    let out = sb.ssh_run(
        &config,
        &format!("get-session --computer-name {} | length", server.computer()),
    );
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this host also has 1 session of nu-session 0.0.9 (protocol 3), which nu-session 0.1.0 cannot reach"),
        "{stderr}"
    );
}
