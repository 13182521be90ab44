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
] | table --width 200 | print
print $"reference: the same 1,000,000 ints computed in this nu: ($ints_local)"
