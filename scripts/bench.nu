# The benchmark itself; run by scripts/bench.sh, which sets up the plugin and a private runtime dir.
let nu_bin = $env.BENCH_NU

def median_of [n: int, f: closure] {
    1..$n | each {|_| null | timeit $f } | math median
}

def rss_of [pid: int] {
    open $"/proc/($pid)/status" | lines | where $it starts-with 'VmRSS' | first | split row -r '\s+' | get 1 | into int | $in * 1024 | into filesize
}

let first_open = timeit { new-session --name first }
let s = new-session --name bench
invoke-session $s '1 + 1'
let open_warm = median_of 10 { new-session | remove-session }

let rtt = median_of 500 { invoke-session $s '1 + 1' }
let rtt_closure = median_of 500 { invoke-session $s { 1 + 1 } }
let spawn = median_of 20 { ^$nu_bin -n -c '1 + 1' | ignore }

let ints_ours = median_of 3 { invoke-session $s { seq 1 1000000 } | length }
let ints_json = median_of 3 { ^$nu_bin -n -c 'seq 1 1000000 | to json -r' | from json | length }
let ints_local = median_of 3 { seq 1 1000000 | length }

let recs = "seq 1 200000 | wrap id | insert name 'row' | insert ok true"
let recs_ours = median_of 3 { invoke-session $s $recs | length }
let recs_json = median_of 3 { ^$nu_bin -n -c $"($recs) | to json -r" | from json | length }

let idle = new-session --name idle
sleep 500ms
let pid = open $"($env.NU_SESSION_DIR)/sessions/($idle.0.instance_id).json" | get pid
let rss = rss_of $pid

def rate [n: int, d: duration] { $n / ($d / 1sec) | math round | into int }

# Over SSH, to the sshds scripts/bench.sh started on 127.0.0.2-5 (host aliases `bench`, `fan1`-`fan3`).
let ssh_rows = if ($env.NU_SESSION_SSH_CONFIG | is-empty) { [] } else {
    let cfg = $env.NU_SESSION_SSH_CONFIG
    let first = timeit { new-session bench --name ssh1 }
    let fresh_ssh = median_of 10 { ^ssh -F $cfg -o ControlMaster=no -o ControlPath=none bench true }
    let second = median_of 10 { new-session bench | remove-session }
    let r = get-session --name ssh1
    invoke-session $r '1 + 1'
    ^ssh -F $cfg -o ControlMaster=yes -o ControlPersist=120 -fN bench
    let ssh_rtt = median_of 500 { invoke-session $r '1 + 1' }
    let cm_rtt = median_of 20 { ^ssh -F $cfg bench nu -n -c "'1 + 1'" | ignore }
    let ssh_ints = median_of 3 { invoke-session $r { seq 1 1000000 } | length }
    let cm_ints = median_of 3 { ^ssh -F $cfg bench nu -n -c "'seq 1 1000000 | to json -r'" | from json | length }
    let ssh_recs = median_of 3 { invoke-session $r $recs | length }
    let cm_recs = median_of 3 { ^ssh -F $cfg bench nu -n -c $"'($recs) | to json -r'" | from json | length }
    # Three hosts nobody has connected to yet: 4 + 3 + 3 sessions, opened in parallel.
    let fan = [fan1 fan1 fan1 fan1 fan2 fan2 fan2 fan3 fan3 fan3]
    let fan_ours = timeit { new-session ...$fan | where state == Opened | length | if $in != 10 { error make {msg: $"only ($in) of 10 opened"} } }
    let fan_ssh = timeit { $fan | par-each {|h| ^ssh -F $cfg -o ControlMaster=no -o ControlPath=none $h true } }
    [
        [measure, ours, baseline, "baseline is"];
        ["SSH: first session to a host", $first, $fresh_ssh, "ssh host true, fresh connection (median of 10)"]
        ["SSH: another session on the same host (median of 10)", $second, null, null]
        ["SSH: invoke round trip '1 + 1' (median of 500)", $ssh_rtt, $cm_rtt, "ssh ControlMaster + nu -n -c '1 + 1' (median of 20)"]
        ["SSH: 1,000,000 ints streamed (median of 3)", $ssh_ints, $cm_ints, "ssh ControlMaster + nu -c '... | to json -r' | from json"]
        ["SSH: 200,000 records streamed (median of 3)", $ssh_recs, $cm_recs, "same"]
        ["SSH: 10 sessions across 3 new hosts", $fan_ours, $fan_ssh, "10 fresh `ssh host true` in parallel"]
    ]
}

[
    [measure, ours, baseline, "baseline is"];
    ["open a local session (first, starts the manager)", $first_open, null, null]
    ["open a local session (median of 10)", $open_warm, null, null]
    ["invoke round trip '1 + 1' (median of 500)", $rtt, $spawn, "nu -n -c '1 + 1' spawned (median of 20)"]
    ["invoke round trip { 1 + 1 } closure (median of 500)", $rtt_closure, $spawn, "nu -n -c '1 + 1' spawned"]
    ["1,000,000 ints streamed (median of 3)", $ints_ours, $ints_json, "nu -c '... | to json -r' | from json"]
    ["  ints per second", (rate 1000000 $ints_ours), (rate 1000000 $ints_json), ""]
    ["200,000 records streamed (median of 3)", $recs_ours, $recs_json, "nu -c '... | to json -r' | from json"]
    ["  records per second", (rate 200000 $recs_ours), (rate 200000 $recs_json), ""]
    ["RSS of an idle worker", $rss, null, null]
] | append $ssh_rows | table --width 200 | print
print $"reference: the same 1,000,000 ints computed in this nu: ($ints_local)"
