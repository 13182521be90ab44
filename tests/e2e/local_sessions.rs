//! Local sessions, end to end: a real `nu` 0.115 with the built plugin, real host processes.

use std::time::Duration;

use nu_session_tests::{Sandbox, alive, eventually};
use serde_json::{Value, json};

#[test]
fn new_session_returns_the_contract_record() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session | first
         {
           columns: ($s | columns)
           types: ($s | values | each { describe })
           record: ($s | reject created instance_id)
           instance_ok: ($s.instance_id =~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$')
           created_recent: (((date now) - $s.created) < 1min)
           idle_secs: ($s.idle_timeout / 1sec | into int)
           me: (whoami)
         }",
    );
    assert_eq!(
        out["columns"],
        json!([
            "id",
            "name",
            "computer_name",
            "transport",
            "state",
            "availability",
            "configuration_name",
            "instance_id",
            "user",
            "port",
            "idle_timeout",
            "output_buffering_mode",
            "created",
            "disconnected_on",
            "expires_on"
        ])
    );
    assert_eq!(
        out["types"],
        json!([
            "int", "string", "string", "string", "string", "string", "string", "string", "string",
            "nothing", "duration", "string", "datetime", "nothing", "nothing"
        ])
    );
    let record = &out["record"];
    assert_eq!(record["id"], 1);
    assert_eq!(record["name"], "Session1");
    assert_eq!(record["computer_name"], "localhost");
    assert_eq!(record["transport"], "Local");
    assert_eq!(record["state"], "Opened");
    assert_eq!(record["availability"], "Available");
    assert_eq!(record["configuration_name"], "default");
    assert_eq!(record["user"], out["me"]);
    assert_eq!(record["output_buffering_mode"], "Block");
    assert_eq!(out["idle_secs"], 7200);
    assert_eq!(out["instance_ok"], true);
    assert_eq!(out["created_recent"], true);
}

#[test]
fn ids_count_up_names_default_and_flags_apply() {
    let sb = Sandbox::new();
    let out = sb.json(
        "new-session; new-session --name web --idle-timeout 5min --output-buffering drop --config-name default
         get-session | select id name idle_timeout output_buffering_mode | update idle_timeout { $in / 1sec | into int }",
    );
    assert_eq!(
        out,
        json!([
            {"id": 1, "name": "Session1", "idle_timeout": 7200, "output_buffering_mode": "Block"},
            {"id": 2, "name": "web", "idle_timeout": 300, "output_buffering_mode": "Drop"},
        ])
    );
}

#[test]
fn state_persists_between_invocations() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         invoke-session $s { let x = 41; def greet [who] { $'hello ($who)' }; alias ll = ls -l }
         invoke-session $s { $env.FOO = 'bar'; mkdir sub; cd sub }
         invoke-session $s '{x: ($x + 1), greet: (greet nu), env: $env.FOO, pwd: ($env.PWD | path basename), alias: (scope aliases | where name == ll | length)}'",
    );
    assert_eq!(
        out,
        json!({"x": 42, "greet": "hello nu", "env": "bar", "pwd": "sub", "alias": 1})
    );
}

#[test]
fn typed_values_round_trip() {
    let sb = Sandbox::new();
    // Each value is produced remotely and compared with the same literal made locally.
    let out = sb.json(
        r#"let s = new-session
        let cases = {
            int: {|| 42 }
            negative: {|| -9223372036854775808 }
            float: {|| 3.25 }
            string: {|| "héllo\nworld" }
            bool: {|| true }
            datetime: {|| 2024-02-29T12:34:56.789+05:00 }
            duration: {|| 3day + 4hr + 5ns }
            filesize: {|| 1.5GiB }
            list: {|| [1 "two" 3.0 [4]] }
            record: {|| {a: {b: {c: [1 2 {d: null}]}}} }
            binary: {|| 0x[00 ff 10 80] }
            "null": {|| null }
            range: {|| 1..5 | each { $in } }
        }
        $cases | transpose name code | each {|case|
            let remote = invoke-session $s $case.code
            let local = do $case.code
            {name: $case.name, same: ($remote == $local), type: ($remote | describe), same_type: (($remote | describe) == ($local | describe))}
        }"#,
    );
    let rows = out.as_array().expect("table");
    assert_eq!(rows.len(), 13);
    for row in rows {
        assert_eq!(row["same"], true, "{row}");
        assert_eq!(row["same_type"], true, "{row}");
    }
    let types: Vec<&str> = rows.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "int",
            "int",
            "float",
            "string",
            "bool",
            "datetime",
            "duration",
            "filesize",
            "list<oneof<number, string, list<int>>>",
            "record<a: record<b: record<c: list<oneof<int, record<d: nothing>>>>>>",
            "binary",
            "nothing",
            "list<int>"
        ]
    );
}

#[test]
fn a_single_value_stays_a_value_and_a_stream_stays_a_stream() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         [
           (invoke-session $s { [1 2 3] } | describe)
           (invoke-session $s { 1..3 | each { sleep 50ms; $in } } | describe)
           (invoke-session $s { 1..3 | each { $in } } | describe)
           (invoke-session $s { let y = 1 } | describe)
           (invoke-session $s { ^echo hi } | describe)
         ]",
    );
    // A stream that comes whole at once is delivered as a list (one message to the engine).
    assert_eq!(
        out,
        json!([
            "list<int>",
            "list<int> (stream)",
            "list<int>",
            "nothing",
            "byte stream"
        ])
    );
}

#[test]
fn a_large_stream_arrives_whole_and_in_order() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         let got = invoke-session $s { 1..200000 | each { $in } }
         {len: ($got | length), sum: ($got | math sum), ordered: ($got | window 2 | all {|w| $w.1 == $w.0 + 1}), first: ($got | first), last: ($got | last)}",
    );
    assert_eq!(
        out,
        json!({"len": 200000, "sum": 20000100000i64, "ordered": true, "first": 1, "last": 200000})
    );
}

#[test]
fn closures_carry_captures_args_and_input() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         let n = 5
         let r = {k: [1 2]}
         def helper [] { let inner = 7; invoke-session $s { $inner * 6 } }
         let c = {|| $n + 100 }
         {
           capture: (invoke-session $s { $n * 2 })
           nested: (invoke-session $s { [1 2] | each {|x| $x * $n } })
           record: (invoke-session $s { $r.k | math sum })
           args: (invoke-session $s {|a, b| $a - $b } --args [10 3])
           rest: (invoke-session $s {|first, ...more| $more | length } --args [1 2 3 4])
           default: (invoke-session $s {|x = 8| $x + 1 })
           input: ([1 2 3] | invoke-session $s { $in | math sum })
           in_def: (helper)
           via_variable: (invoke-session $s $c)
           string: (invoke-session $s '6 * 7')
         }",
    );
    assert_eq!(
        out,
        json!({"capture": 10, "nested": [5, 10], "record": 3, "args": 7, "rest": 3,
               "default": 9, "input": 6, "in_def": 42, "via_variable": 105, "string": 42})
    );
}

#[test]
fn remote_errors_come_back_as_errors_with_the_remote_message() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         [
           (try { invoke-session $s { error make {msg: 'boom from the session'} } } catch {|e| $e.msg })
           (try { invoke-session $s { 1 / 0 } } catch {|e| $e.msg })
           (try { invoke-session $s 'let = ' } catch {|e| $e.msg | str length | $in > 0 })
           (try { invoke-session $s { ^false } } catch {|e| $e.msg | str contains 'exit' })
           (invoke-session $s { 'still usable' })
         ]",
    );
    assert_eq!(out[0], "boom from the session");
    assert_eq!(out[1], "Division by zero.");
    assert_eq!(out[2], true);
    assert_eq!(out[3], true);
    assert_eq!(out[4], "still usable");
    // Uncaught, the error is rendered by the local nu, pointing into the code the user wrote.
    let stderr = sb.fails("let s = new-session; invoke-session $s { error make {msg: 'kaput'} }");
    assert!(stderr.contains("kaput"), "{stderr}");
    assert!(stderr.contains("error make {msg: 'kaput'}"), "{stderr}");
}

#[test]
fn an_error_in_the_middle_of_a_stream_ends_it_with_that_error() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         let code = {|| 1..10 | each { if $in == 4 { error make {msg: 'at four'} } else { $in } } }
         {
           remote: (try { invoke-session $s $code | collect } catch {|e| $e.msg })
           local: (try { do $code | collect } catch {|e| $e.msg })
           before: (invoke-session $s $code | take 3)
         }",
    );
    // The same error as running the code locally, after the values before it.
    assert_eq!(out["remote"], out["local"]);
    assert_eq!(out["before"], json!([1, 2, 3]));
    let stderr = sb.fails("let s = new-session; invoke-session $s { 1..10 | each { if $in == 4 { error make {msg: 'at four'} } else { $in } } } | to json");
    assert!(stderr.contains("at four"), "{stderr}");
}

#[test]
fn printed_output_reaches_the_user() {
    let sb = Sandbox::new();
    let out = sb.run(
        "let s = new-session; invoke-session $s { print 'printed remotely'; ^sh -c 'echo from-external >&2'; 5 } | $in + 1",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // As locally: `print` goes to stdout, before the value; the external's stderr to stderr.
    assert_eq!(stdout.trim(), "printed remotely\n6");
    assert!(stderr.contains("from-external"), "{stderr}");
}

#[test]
fn selection_rules() {
    let sb = Sandbox::new();
    let out = sb.json(
        "new-session --name Web1; new-session --name web2; new-session --name db
         let s3 = get-session 3
         {
           ids: (get-session 3 1 | get id)
           glob: (get-session --name WEB* | get id)
           literal_case: (get-session --name DB | get id)
           glob_miss: (get-session --name zzz* | length)
           instance: (get-session --instance-id $s3.0.instance_id | get id)
           by_value_record: ($s3.0 | get-session | get id)
           by_value_table: (get-session 1 2 | get-session | get id)
           by_property_name: ([[name]; [web2]] | get-session | get id)
           by_property_id: ([[id]; [2]] | get-session | get id)
           computer_and_name: ([[computer_name name]; [localhost db]] | get-session | get id)
           plain_ints: (1..2 | get-session | get id)
           once: ([1 1 2] | get-session --name web* | get id)
           state: (get-session --state Opened | length)
           state_none: (get-session --state Closed | length)
           computer: (get-session --computer-name LOCALHOST | length)
         }",
    );
    assert_eq!(
        out,
        json!({
            "ids": [1, 3], "glob": [1, 2], "literal_case": [3], "glob_miss": 0, "instance": [3],
            "by_value_record": [3], "by_value_table": [1, 2], "by_property_name": [2],
            "by_property_id": [2], "computer_and_name": [3], "plain_ints": [1, 2],
            "once": [1, 2], "state": 3, "state_none": 0, "computer": 3
        })
    );
}

#[test]
fn literal_misses_are_errors_naming_what_was_not_found() {
    let sb = Sandbox::new();
    let out = sb.json(
        "new-session --name a
         [
           (try { get-session 7 } catch {|e| $e.msg })
           (try { get-session --name nope } catch {|e| $e.msg })
           (try { get-session --instance-id 00000000-0000-4000-8000-000000000000 } catch {|e| $e.msg })
           (try { remove-session 9 } catch {|e| $e.msg })
           (try { invoke-session 9 { 1 } } catch {|e| $e.msg })
           (try { [[computer_name name]; [localhost b]] | get-session } catch {|e| $e.msg })
         ]",
    );
    assert_eq!(
        out,
        json!([
            "no session with id 7",
            "no session named nope",
            "no session with instance id 00000000-0000-4000-8000-000000000000",
            "no session with id 9",
            "no session with id 9",
            "no session named b on computer localhost"
        ])
    );
}

#[test]
fn remove_session_kills_running_external_commands_and_deletes_the_session() {
    let sb = Sandbox::new();
    let pidfile = sb.path().join("sleep.pid");
    let script = format!(
        "let s = new-session
         job spawn {{ invoke-session $s {{ ^sh -c 'echo $$ > {pid}; exec sleep 1000' }} }}
         loop {{ if ('{pid}' | path exists) and (open {pid} | str trim | is-not-empty) {{ break }}; sleep 50ms }}
         let busy = get-session | get 0.availability
         remove-session $s
         {{busy: $busy, state: ($s | get-session | get 0.state), listed: (get-session | length)}}",
        pid = pidfile.display()
    );
    let out = sb.json(&script);
    assert_eq!(out, json!({"busy": "Busy", "state": "Closed", "listed": 0}));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "sleep {pid} survived remove-session"
    );
    assert!(
        eventually(Duration::from_secs(5), || sb.session_files().is_empty()),
        "files left: {:?}",
        sb.session_files()
    );
    assert!(sb.worker_pids().is_empty());
    assert_eq!(sb.end_records(), ["it was removed (remove-session)"]);
}

#[test]
fn what_if_changes_nothing() {
    let sb = Sandbox::new();
    let out = sb.run(
        "new-session --name keep; remove-session --name keep --what-if; get-session | get 0.state",
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Opened");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "What if: Performing the operation \"Remove\" on target \"localhost\" (session 1, keep)"
        ),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_interrupts_the_remote_code() {
    let sb = Sandbox::new();
    let pidfile = sb.path().join("sleep.pid");
    let mut child = sb.spawn(&format!(
        "let s = new-session; invoke-session $s {{ ^sh -c 'echo $$ > {}; exec sleep 1000' }}",
        pidfile.display()
    ));
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(
            &pidfile
        )
        .is_ok_and(|s| !s.trim().is_empty())),
        "the remote command did not start"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // What the terminal does on Ctrl-C: SIGINT to nu.
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)),
        "the remote sleep survived Ctrl-C"
    );
    assert!(
        eventually(Duration::from_secs(10), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "nu did not return after Ctrl-C"
    );
    // The session itself survives the interrupt.
    assert_eq!(sb.worker_pids().len(), 1);
}

#[test]
fn dropping_a_stream_early_stops_the_remote_producer() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         let first = invoke-session $s { 1.. | each { $in } } | first 3
         {first: $first, after: (invoke-session $s { 'next' })}",
    );
    assert_eq!(out, json!({"first": [1, 2, 3], "after": "next"}));
}

#[test]
fn bad_input_gives_clear_errors_and_never_kills_the_plugin() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         let pid = plugin list | where name == session | get 0.pid
         let errors = [
           (try { new-session --idle-timeout 10sec } catch {|e| $e.msg })
           (try { new-session --output-buffering Sometimes } catch {|e| $e.msg })
           (try { get-session --state Happy } catch {|e| $e.msg })
           (try { {a: 'web'} | get a | get-session } catch {|e| $e.msg })
           (try { {foo: 1} | remove-session } catch {|e| $e.msg })
           (try { remove-session } catch {|e| $e.msg })
           (try { invoke-session $s {|x| $x } } catch {|e| $e.msg })
           (try { invoke-session $s {|| 1 } --args [1] } catch {|e| $e.msg })
           (try { invoke-session $s 'x' --args [1] } catch {|e| $e.msg })
           (try { get-session --instance-id not-a-uuid } catch {|e| $e.msg })
           (try { let f = {|| 1 }; invoke-session $s { do $f } } catch {|e| $e.msg })
           (try { get-session 1.. } catch {|e| $e.msg })
         ]
         {errors: $errors, same_plugin: ((plugin list | where name == session | get 0.pid) == $pid), still: (invoke-session $s { 'ok' })}",
    );
    assert_eq!(
        out["errors"],
        json!([
            "the idle timeout 10sec is out of range: it must be at least 1min and at most the host's maximum (1wk unless the host sets another)",
            "`Sometimes` is not an output buffering mode",
            "`Happy` is not a session state",
            "expected a session, got string",
            "this record names no session",
            "no sessions to remove",
            "the closure's parameter `x` has no value",
            "1 more argument(s) than the closure has parameters",
            "--args needs a closure with parameters",
            "`not-a-uuid` is not an instance id",
            "`$f` holds a closure, which cannot be sent to a session",
            "too many sessions named"
        ])
    );
    assert_eq!(out["same_plugin"], true);
    assert_eq!(out["still"], "ok");
}

#[test]
fn the_plugin_stays_loaded_while_it_holds_sessions() {
    let sb = Sandbox::new();
    // With the plugin GC set to stop idle plugins at once, a plugin holding sessions stays.
    let out = sb.json(
        "$env.config.plugin_gc = {default: {enabled: true, stop_after: 0sec}}
         let s = new-session
         let pid = plugin list | where name == session | get 0.pid
         sleep 1500ms
         {running: (plugin list | where name == session | get 0.status), same: ((plugin list | where name == session | get 0.pid) == $pid), value: (invoke-session $s { 3 })}",
    );
    assert_eq!(out, json!({"running": "running", "same": true, "value": 3}));
}

#[test]
fn sessions_outlive_the_nu_process_that_made_them() {
    let sb = Sandbox::new();
    sb.ok("new-session --name survivor");
    // The nu process is gone; the session still lives on its host, disconnected.
    assert_eq!(sb.worker_pids().len(), 1);
}

#[test]
fn help_examples_are_shown() {
    let sb = Sandbox::new();
    let out = sb.ok("help invoke-session");
    assert!(
        out.contains("Captured local variables travel with the closure"),
        "{out}"
    );
    let value: Value = sb.json("help commands | where name =~ '-session$' | get name | sort");
    assert_eq!(
        value,
        json!([
            "connect-session",
            "disconnect-session",
            "enter-session",
            "exit-session",
            "get-session",
            "invoke-session",
            "new-session",
            "receive-session",
            "remove-session"
        ])
    );
}

#[test]
fn exit_in_a_session_ends_the_session() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         let r = try { invoke-session $s { exit 3 } } catch {|e| $e.msg }
         {r: $r, state: (get-session | get 0.state)}",
    );
    assert_eq!(
        out,
        json!({"r": "the session ended: its code called exit (code 3)", "state": "Closed"})
    );
    assert!(
        eventually(Duration::from_secs(5), || sb.session_files().is_empty()),
        "files left: {:?}",
        sb.session_files()
    );
    assert_eq!(sb.end_records(), ["its code called `exit 3`"]);
}

#[test]
fn values_arrive_while_the_code_is_still_running() {
    let sb = Sandbox::new();
    // Four values produced 300ms apart: the first reaches the local pipeline long before the
    // last is produced, not all at the end.
    let out = sb.json(
        "let s = new-session
         let t0 = date now
         let arrivals = invoke-session $s { 1..4 | each {|i| sleep 300ms; $i } } | each {|i| {i: $i, at: ((date now) - $t0)} }
         {order: ($arrivals | get i), spread_ms: (($arrivals | last | get at) - ($arrivals | first | get at) | $in / 1ms | into int)}",
    );
    assert_eq!(out["order"], json!([1, 2, 3, 4]));
    let spread = out["spread_ms"].as_i64().unwrap();
    assert!(spread >= 600, "values arrived together (spread {spread}ms)");
}

#[test]
fn a_stream_larger_than_the_host_buffer_arrives_whole() {
    let sb = Sandbox::new();
    // About 50 MiB of events through a 16 MiB outbox: the session pauses when the buffer is full
    // (Block) and nothing is lost.
    let out = sb.json(
        "let s = new-session
         let got = invoke-session $s { seq 1 1000000 }
         {len: ($got | length), sum: ($got | math sum), last: ($got | last)}",
    );
    assert_eq!(
        out,
        json!({"len": 1000000, "sum": 500000500000i64, "last": 1000000})
    );
}

/// How many of the `[start, end]` intervals (in ms) overlap at the busiest moment.
fn most_at_once(intervals: &serde_json::Value) -> usize {
    let spans: Vec<(i64, i64)> = intervals
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| (i[0].as_i64().expect("start"), i[1].as_i64().expect("end")))
        .collect();
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn invoke_session_runs_sessions_concurrently_within_the_throttle_limit() {
    let sb = Sandbox::new();
    let code = "{|| let a = (date now | into int) // 1_000_000; sleep 400ms; [$a ((date now | into int) // 1_000_000)] }";
    let out = sb.json(&format!(
        "let s = (1..4 | each {{ null | new-session }} | flatten)
         {{ all: (invoke-session $s {code}), two: (invoke-session $s {code} --throttle-limit 2), ids: (invoke-session $s {{ 1 }}) }}"
    ));
    // Without a limit under 4 all four run at once; with 2, never more than two, and every
    // session still answers, in order.
    assert_eq!(most_at_once(&out["all"]), 4, "{out}");
    assert_eq!(most_at_once(&out["two"]), 2, "{out}");
    assert_eq!(out["ids"], json!([1, 1, 1, 1]));
    let error = sb.fails("let s = new-session; invoke-session $s { 1 } --throttle-limit -1");
    assert!(
        error.contains("the throttle limit cannot be negative"),
        "{error}"
    );
}

#[test]
fn a_session_too_busy_to_answer_is_still_listed_not_taken_for_gone() {
    let sb = Sandbox::new();
    // The worker is frozen (as a machine under swap or a debugger leaves it): the manager's
    // question times out. The session is still there: listed from its file, never Closed.
    let out = sb.json(
        "let s = new-session --name slow
         let pid = glob $'($env.NU_SESSION_DIR)/p*/sessions/($s.0.instance_id).json' | first | open $in | get pid
         ^kill -STOP $pid
         let listed = get-session --computer-name localhost | where name == slow | get name
         let state = $s | get-session | get 0.state
         ^kill -CONT $pid
         { listed: $listed, state: $state, after: (invoke-session $s '1 + 1') }",
    );
    assert_eq!(
        out,
        json!({"listed": ["slow"], "state": "Opened", "after": 2})
    );
}

#[test]
fn escape_sequences_in_a_sessions_errors_are_shown_not_obeyed() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session
         try { invoke-session $s { error make {msg: $'bad(ansi red)(char bel)'} } } catch {|e| $e.msg }",
    );
    let msg = out.as_str().unwrap_or_default();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\u{7}'), "{msg:?}");
    assert!(msg.starts_with("bad\\u{1b}[31m\\u{7}"), "{msg:?}");
}

#[test]
fn a_worker_s_settings_are_not_in_its_command_line() {
    let sb = Sandbox::new();
    let out = sb.json(
        "let s = new-session --name payroll-2026 --idle-timeout 17min
         {name: ($s | get 0.name), cat: (invoke-session $s { ^cat | str length })}",
    );
    // Its stdin is /dev/null once the settings are read: `cat` ends at once.
    assert_eq!(out, serde_json::json!({"name": "payroll-2026", "cat": 0}));
    let pids = sb.worker_pids();
    assert_eq!(pids.len(), 1);
    let argv = std::fs::read(format!("/proc/{}/cmdline", pids[0])).expect("cmdline");
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(argv.contains("worker"), "{argv}");
    for private in ["payroll", "1020", "idle"] {
        assert!(!argv.contains(private), "{private} in {argv}");
    }
}

#[test]
fn what_a_background_job_prints_shows_with_the_next_invocation() {
    let sb = Sandbox::new();
    let out = sb.run(
        "let s = new-session
         invoke-session $s { job spawn { sleep 300ms; print 'from the job' } | ignore }
         sleep 1sec
         print (invoke-session $s { 6 * 7 })",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Printed while nothing ran, shown before the next invocation's result.
    assert_eq!(stdout.trim(), "from the job\n42", "{stdout}");
}
