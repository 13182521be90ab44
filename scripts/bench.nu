# The benchmark itself; run by scripts/bench.sh, which sets up the plugin and a private runtime dir.
let nu_bin = $env.BENCH_NU

def median_of [n: int, f: closure] {
    1..$n | each {|_| null | timeit $f } | math median
}

def rss_of [pid: int, field = 'VmRSS'] {
    open $"/proc/($pid)/status" | lines | where $it starts-with $field | first | split row -r '\s+' | get 1 | into int | $in * 1024 | into filesize
}

# The peak RSS of a session's worker (its code runs there: /proc/self is the worker).
def worker_peak [s] {
    invoke-session $s { open /proc/self/status | lines | where $it starts-with VmHWM | first | split row -r '\s+' | get 1 | into int | $in * 1024 | into filesize }
}

# 1 GB of an external command's output, read locally as a byte stream (written to /dev/null).
let gb = 'head -c 1000000000 /dev/zero'


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

# Receiving buffered output: the code ran while disconnected and finished; only delivery is timed.
def buffered [s, n: int, marker: string] {
    rm -f $marker
    invoke-session $s {|| seq 1 $n | each {|i| if $i == $n { 'x' | save -f $marker }; $i } } --disconnected | ignore
    loop { if ($marker | path exists) { break }; sleep 50ms }
}
let rx_marker = $"($env.NU_SESSION_DIR)/received.marker"
let rx_n = 1000000
let rx = new-session --name rx
buffered $rx $rx_n $rx_marker
let rx_ours = timeit { receive-session --name rx | length | if $in != $rx_n { error make {msg: $"received ($in)"} } }
let rx_json = median_of 3 { ^$nu_bin -n -c $"seq 1 ($rx_n) | to json -r" | from json | length }

let idle = new-session --name idle
sleep 500ms
let pid = glob $"($env.NU_SESSION_DIR)/p*/sessions/($idle.0.instance_id).json" | first | open $in | get pid
let rss = rss_of $pid

let bytes_s = new-session --name bytes
let bytes_ours = median_of 3 { invoke-session $bytes_s $"^($gb)" | save -f /dev/null }
let bytes_local = median_of 3 { ^sh -c $gb | save -f /dev/null }
let bytes_peak = worker_peak $bytes_s

def rate [n: int, d: duration] { $n / ($d / 1sec) | math round | into int }

# Over SSH, to the sshds scripts/bench.sh started on 127.0.0.2-6 (host aliases `bench`, `has`,
# `fan1`-`fan3`), each a non-root user with nothing of ours preset.
let ssh_rows = if ($env.NU_SESSION_SSH_CONFIG | is-empty) { [] } else {
    let cfg = $env.NU_SESSION_SSH_CONFIG
    # `bench` has never seen us: this copies our host program there, then starts its manager.
    let first = timeit { new-session bench --name ssh1 }
    # `has` has this build's host program, and nothing running: this starts its manager.
    let first_has = timeit { new-session has | remove-session }
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
    let ssh_bytes = median_of 3 { invoke-session $r $"^($gb)" | save -f /dev/null }
    let cm_bytes = median_of 3 { ^ssh -F $cfg bench $gb | save -f /dev/null }
    let ssh_bytes_peak = worker_peak $r
    # Three hosts with our host program and nothing running: 4 + 3 + 3 sessions, in parallel.
    let fan = [fan1 fan1 fan1 fan1 fan2 fan2 fan2 fan3 fan3 fan3]
    let fan_ours = timeit { new-session ...$fan | where state == Opened | length | if $in != 10 { error make {msg: $"only ($in) of 10 opened"} } }
    let fan_ssh = timeit { $fan | par-each {|h| ^ssh -F $cfg -o ControlMaster=no -o ControlPath=none $h true } }
    let rx_remote = new-session bench --name rx-remote
    buffered $rx_remote $rx_n $"($env.BENCH_MARKERS)/received.marker"
    let ssh_rx = timeit { receive-session --name rx-remote | length | if $in != $rx_n { error make {msg: $"received ($in)"} } }
    let cm_rx = median_of 3 { ^ssh -F $cfg bench nu -n -c $"'seq 1 ($rx_n) | to json -r'" | from json | length }
    # Network cut and restored (a network namespace's link down, then up), 5 times: from the
    # link coming back to the session Opened again, polled every 10 ms.
    let reattach_rows = if ($env.BENCH_VETH | is-empty) { [] } else { try {
        let n = new-session netbench --name net
        let times = 1..5 | each {|_|
            ^ip link set $env.BENCH_VETH down
            loop { if (get-session --name net | get 0.state) == Broken { break }; sleep 10ms }
            sleep 1sec
            ^ip link set $env.BENCH_VETH up
            timeit { loop { if (get-session --name net | get 0.state) == Opened { break }; sleep 10ms } }
        }
        let fresh = median_of 5 { ^ssh -F $cfg -o ControlMaster=no -o ControlPath=none netbench true }
        [
            [measure, ours, baseline, "baseline is"];
            ["SSH: network back → session reattached (median of 5 cuts)", ($times | math median), $fresh, "a fresh `ssh host true` (what a user would redo by hand)"]
            ["  slowest of the 5", ($times | math max), null, null]
        ]
    } catch {|e|
        print -e $"network-cut measure failed: ($e.msg)"
        print -e (^ip netns exec $env.BENCH_NETNS ss -ltn | complete | get stdout)
        print -e (open --raw $env.BENCH_NETLOG)
        []
    } }
    [
        [measure, ours, baseline, "baseline is"];
        ["SSH: first session to a new host (copies nu-session-host there)", $first, $fresh_ssh, "ssh host true, fresh connection (median of 10)"]
        ["SSH: first session to a host that has it (starts its manager)", $first_has, $fresh_ssh, "same"]
        ["SSH: another session on the same host (median of 10)", $second, null, null]
        ["SSH: invoke round trip '1 + 1' (median of 500)", $ssh_rtt, $cm_rtt, "ssh ControlMaster + nu -n -c '1 + 1' (median of 20)"]
        ["SSH: 1,000,000 ints streamed (median of 3)", $ssh_ints, $cm_ints, "ssh ControlMaster + nu -c '... | to json -r' | from json"]
        ["SSH: 200,000 records streamed (median of 3)", $ssh_recs, $cm_recs, "same"]
        ["SSH: 1 GB of external output (median of 3)", $ssh_bytes, $cm_bytes, "ssh ControlMaster host 'head -c ...' | save -f /dev/null"]
        ["  MB per second", (rate 1000 $ssh_bytes), (rate 1000 $cm_bytes), ""]
        ["  the worker's peak RSS (its whole life)", $ssh_bytes_peak, null, null]
        ["SSH: 10 sessions across 3 hosts (nothing running there)", $fan_ours, $fan_ssh, "10 fresh `ssh host true` in parallel"]
        ["SSH: receive 1,000,000 buffered ints", $ssh_rx, $cm_rx, "ssh ControlMaster + nu -c 'seq ... | to json -r' | from json (median of 3)"]
        ["  values per second", (rate $rx_n $ssh_rx), (rate $rx_n $cm_rx), ""]
    ] | append $reattach_rows
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
    ["receive 1,000,000 buffered ints", $rx_ours, $rx_json, "nu -c 'seq ... | to json -r' | from json (median of 3)"]
    ["  values per second", (rate $rx_n $rx_ours), (rate $rx_n $rx_json), ""]
    ["1 GB of external output (median of 3)", $bytes_ours, $bytes_local, "the same command run locally | save -f /dev/null"]
    ["  MB per second", (rate 1000 $bytes_ours), (rate 1000 $bytes_local), ""]
    ["  the worker's peak RSS (its whole life)", $bytes_peak, null, null]
    ["RSS of an idle worker", $rss, null, null]
] | append $ssh_rows | table --width 200 | print
print $"reference: the same 1,000,000 ints computed in this nu: ($ints_local)"
